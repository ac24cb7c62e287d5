"""T5's recipe pieces (T5 paper, t5x): FLOPs, schedules, Adafactor settings, z-loss."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from t5lite.model import losses
from t5lite.runtime import devices
from t5lite.training import loop, optim
from t5lite.model.config import Config, flops_per_example

BASE = Config(emb_dim=768, num_heads=12, head_dim=64, mlp_dim=2048, num_encoder_layers=12,
              num_decoder_layers=12)


def test_flops_match_reference():
  """T5 1.1 base at 512/114: forward 142 GFLOP, training ~426 GFLOP per example."""
  assert flops_per_example(BASE, 512, 114) / 3 == pytest.approx(142e9, rel=0.005)
  t5_1_0 = BASE.replace(mlp_activations=("relu",))
  assert flops_per_example(t5_1_0, 512, 114) < flops_per_example(BASE, 512, 114)


def test_mfu_uses_the_device_peak(monkeypatch):
  monkeypatch.setattr(devices, "peak_flops_per_device", lambda: 1e12)
  out = loop.throughput(2.0, 8, 900.0, 1e10)  # 2 steps/s x 8 examples x 1e10 FLOPs
  assert out["examples_per_s"] == 16.0 and out["target_tokens_per_s"] == 1800.0
  assert out["mfu"] == pytest.approx(16 * 1e10 / (1e12 * jax.device_count()))
  monkeypatch.setattr(devices, "peak_flops_per_device", lambda: None)
  assert "mfu" not in loop.throughput(2.0, 8, 900.0, 1e10)  # CPU: no published peak


def test_peak_flops_by_device_kind():
  assert devices.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
  assert devices.peak_flops("TPU v5 lite") == 197e12
  assert devices.peak_flops("cpu") is None


def test_rsqrt_schedule_is_t5s():
  lr = optim.learning_rate_schedule("rsqrt", peak=0.01, warmup_steps=10_000)
  for step in (0, 1, 5000, 10_000, 40_000, 1_000_000):
    assert float(lr(step)) == pytest.approx(1 / np.sqrt(max(step, 10_000)), rel=1e-6)


def test_cosine_schedule_warms_up_then_decays():
  lr = optim.learning_rate_schedule("cosine", peak=2e-2, warmup_steps=100, total_steps=1000,
                                    end=1e-5)
  assert float(lr(0)) == 0.0 and float(lr(100)) == pytest.approx(2e-2)
  assert float(lr(1000)) == pytest.approx(1e-5) and float(lr(550)) < 2e-2


def test_unknown_optimizer_and_schedule_are_named():
  with pytest.raises(ValueError, match="name='sgdd'.*adafactor"):
    optim.make_optimizer("sgdd", schedule=optim.learning_rate_schedule("constant"))
  with pytest.raises(ValueError, match="name='linear'.*rsqrt"):
    optim.learning_rate_schedule("linear")


def test_adafactor_factors_large_dims_and_clips_updates():
  tx = optim.make_optimizer("adafactor", schedule=optim.learning_rate_schedule("constant", 1.0))
  params = {"big": jnp.ones((256, 128)), "small": jnp.ones((64, 8))}
  state = tx.init(params)
  shapes = sorted(x.shape for x in jax.tree.leaves(state) if x.ndim >= 1)
  assert (256,) in shapes and (128,) in shapes and (64, 8) in shapes  # factored vs full
  grads = {"big": jnp.full((256, 128), 1e3), "small": jnp.full((64, 8), 1e-3)}
  updates, _ = tx.update(grads, state, params)
  for u in jax.tree.leaves(updates):  # update clipping (RMS <= 1) x parameter scale (RMS 1)
    assert float(jnp.sqrt(jnp.mean(u ** 2))) <= 1.0 + 1e-5


def test_adamw_scaled_is_nanot5s():
  """nanoT5: Adam's update times max(1e-3, RMS(param))."""
  sched = optim.learning_rate_schedule("constant", 1.0)
  params = {"w": jnp.full((4, 4), 3.0)}
  grads = {"w": jnp.full((4, 4), 0.5)}
  scaled, _ = optim.make_optimizer("adamw_scaled", schedule=sched).update(
      grads, optim.make_optimizer("adamw_scaled", schedule=sched).init(params), params)
  plain, _ = optax.adam(1.0).update(grads, optax.adam(1.0).init(params), params)
  np.testing.assert_allclose(scaled["w"], plain["w"] * 3.0, rtol=1e-5)


def test_cross_entropy_with_z_loss_against_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 7)).astype(np.float32) * 3
  targets = rng.integers(0, 7, (2, 3))
  weights = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
  total, z, wsum = losses.cross_entropy_with_z_loss(jnp.asarray(logits), jnp.asarray(targets),
                                                    jnp.asarray(weights), z_loss=1e-2)
  log_z = np.log(np.exp(logits).sum(-1))
  nll = log_z - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(float(total), ((nll + 1e-2 * log_z ** 2) * weights).sum(), rtol=1e-5)
  np.testing.assert_allclose(float(z), (1e-2 * log_z ** 2 * weights).sum(), rtol=1e-5)
  assert float(wsum) == 3.0
  acc = losses.accuracy_sum(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights))
  assert float(acc) == ((logits.argmax(-1) == targets) * weights).sum()
