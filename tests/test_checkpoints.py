"""Orbax checkpoints: bit-exact save -> restore, onto another mesh, and clear mismatch errors."""
import jax
import numpy as np
import pytest

from conftest import tiny_config

from t5lite.training import state as train_state
from t5lite.training import optim
from t5lite.runtime import partitioning
from t5lite.store.checkpoints import Checkpointer

TINY = tiny_config()


def make_state(mesh, config=TINY, seed=0, fsdp=False):
  tx = optim.make_optimizer("adafactor", schedule=optim.learning_rate_schedule("constant"))
  with jax.set_mesh(mesh):
    state, shardings, _ = train_state.create_train_state(config, tx, mesh, seed, fsdp)
  return state, shardings


def assert_trees_equal(a, b):
  a, b = jax.device_get(a), jax.device_get(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("restore_shape,fsdp", [
    pytest.param((4, 2), False, marks=pytest.mark.slow),
    pytest.param((2, 4), False, marks=pytest.mark.slow), ((8, 1), True),
    pytest.param((1, 1), False, marks=pytest.mark.slow)])
def test_save_restore_bit_exact_onto_any_mesh(tmp_path, restore_shape, fsdp):
  state, _ = make_state(partitioning.make_mesh((4, 2)), seed=1)
  ckpt = Checkpointer(tmp_path / "ckpt", async_save=True)
  ckpt.save(7, state, {"batches": 7})
  ckpt.wait()
  devices = jax.devices()[:int(np.prod(restore_shape))]
  mesh = partitioning.make_mesh(restore_shape, devices=devices)
  target, shardings = make_state(mesh, seed=2, fsdp=fsdp)  # different values, same shapes
  restored, data = Checkpointer(tmp_path / "ckpt").restore(7, train_state.abstract_state(target, shardings))
  assert data == {"batches": 7}
  assert_trees_equal(restored, state)
  q = restored.params["encoder"]["layers_0"]["attention"]["query"]
  assert q.sharding == shardings.params["encoder"]["layers_0"]["attention"]["query"]
  ckpt.close()


@pytest.mark.slow
def test_keep_and_latest(tmp_path):
  state, _ = make_state(partitioning.make_mesh((8, 1)))
  ckpt = Checkpointer(tmp_path / "ckpt", save_period=2, keep=2, async_save=False)
  assert ckpt.latest_step() is None
  for step in (2, 4, 6):
    assert ckpt.should_save(step) and not ckpt.should_save(step + 1)
    ckpt.save(step, state, {"batches": step})
  ckpt.wait()
  assert ckpt.all_steps() == [4, 6] and ckpt.latest_step() == 6
  ckpt.close()


def test_unfinished_checkpoint_is_ignored(tmp_path):
  """A crash mid-save leaves only orbax's temporary folder, which is never taken as a checkpoint."""
  state, _ = make_state(partitioning.make_mesh((8, 1)))
  ckpt = Checkpointer(tmp_path / "ckpt", async_save=False)
  ckpt.save(3, state, {"batches": 3})
  ckpt.wait()
  ckpt.close()
  (tmp_path / "ckpt" / "5.orbax-checkpoint-tmp-123").mkdir()
  assert Checkpointer(tmp_path / "ckpt").latest_step() == 3


@pytest.mark.slow
def test_mismatched_model_names_the_parameters(tmp_path):
  state, _ = make_state(partitioning.make_mesh((8, 1)))
  ckpt = Checkpointer(tmp_path / "ckpt", async_save=False)
  ckpt.save(1, state, {})
  ckpt.close()
  other, shardings = make_state(partitioning.make_mesh((8, 1)),
                                config=TINY.replace(mlp_dim=96, num_decoder_layers=3))
  with pytest.raises(ValueError) as e:
    Checkpointer(tmp_path / "ckpt").restore(1, train_state.abstract_state(other, shardings))
  msg = str(e.value)
  assert "does not fit the model" in msg
  assert "params/encoder/layers_0/mlp/wi_0: checkpoint has shape (32, 64), model expects (32, 96)" in msg
  assert "params/decoder/layers_2/mlp/wo: missing from the checkpoint" in msg
