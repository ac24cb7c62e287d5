"""DoReMi (t5lite/doremi.py, doremi_run.py): the update rule on hand-computed numbers, per-domain
losses of packed rows against example-by-example ones, and `t5lite doremi` end to end on the CPU
mesh (4, 2) over three domains — the embedded corpus's language reference, its library docs, and
random tokens — whose weights, gin file, resume and reuse are checked."""
import collections
import contextlib
import gzip
import io
import json
import os

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from t5lite.store import checkpoints
from t5lite.datamix import doremi, doremi_run
from t5lite.model import losses
from t5lite.runtime import partitioning
from t5lite.model.params import abstract_params
from t5lite.training import train
from t5lite.training import state as train_state
from t5lite.store.checkpoints import Checkpointer
from t5lite.cli import common
from t5lite.model.config import Config
from t5lite.data.sources import demo_corpus
from t5lite.data.feed import indexed, streams
from t5lite.data.tasks import registry as tasks
from t5lite.data.sources.sources import Sources
from t5lite.model.network import EncoderDecoder

DOMAINS = ("ref_span_corruption", "lib_span_corruption", "noise_span_corruption")
REFERENCE_STEPS, PROXY_STEPS = 40, 16
TINY = ["--gin_file=models/t5_1_1/tiny.gin", "--gin.Config.emb_dim=64", "--gin.Config.mlp_dim=128",
        "--gin.Config.num_heads=4", "--gin.Config.head_dim=16", "--gin.Config.vocab_size=3200",
        "--gin.Config.dtype='float32'", "--gin.Config.num_encoder_layers=1",
        "--gin.Config.num_decoder_layers=1"]


# ----------------------------------------------------------------------------- the update rule


def test_update_weights_equals_the_formula_on_a_hand_computed_step():
  # α_{t-1} = (0.5, 0.3, 0.2), λ_t = (0.2, 0, 1), η = 1, c = 0.1:
  # α' = (0.5 e^0.2, 0.3, 0.2 e) = (0.6107013791, 0.3, 0.5436563657), Σ = 1.4543577448
  # α_t = 0.9 α' / Σ + 0.1 / 3 = (0.4112535824, 0.2189822914, 0.3697641262)
  alpha = doremi.update_weights(jnp.array([0.5, 0.3, 0.2]), jnp.array([0.2, 0.0, 1.0]),
                                eta=1.0, smoothing=0.1)
  np.testing.assert_allclose(alpha, [0.4112535824, 0.2189822914, 0.3697641262], rtol=1e-6)
  # c = 0 and λ equal everywhere: the weights stay.
  same = doremi.update_weights(jnp.array([0.5, 0.3, 0.2]), jnp.full(3, 0.7), 1.0, 0.0)
  np.testing.assert_allclose(same, [0.5, 0.3, 0.2], rtol=1e-6)


def test_excess_loss_clips_per_token_averages_per_domain_and_keeps_absent_domains():
  proxy = jnp.array([[2.0, 1.0, 3.0, 9.0], [0.5, 4.0, 2.0, 0.0]])
  ref = jnp.array([[1.0, 1.5, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0]])
  task_ids = jnp.array([[1, 1, 2, 0], [2, 2, 2, 0]])  # 0: padding (its excess 9 never counts)
  weights = (task_ids > 0).astype(jnp.int32)
  mask = doremi.domain_mask(task_ids, weights, 3)
  lam = doremi.excess_loss(proxy, ref, mask, previous_K=jnp.array([7.0, 8.0, 0.25]))
  # domain 0: max(1, 0) + max(-0.5, 0) over 2 tokens = 0.5
  # domain 1: 2 + max(-0.5, 0) + 3 + 1 over 4 tokens = 1.5;  domain 2: absent, keeps 0.25
  np.testing.assert_allclose(lam, [0.5, 1.5, 0.25], rtol=1e-6)


def _tiny_config():
  return Config(vocab_size=256, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
                num_encoder_layers=1, num_decoder_layers=1, mlp_activations=("gelu", "linear"),
                logits_via_embedding=False, dtype="float32")


def _hand_batch():
  """Two packed rows, three domains: row 0 holds domains 1 and 2, row 1 domains 2 and 3."""
  rng = np.random.default_rng(0)
  enc_seg = np.array([[1, 1, 1, 2, 2, 0], [1, 1, 2, 2, 2, 2]], np.int32)
  dec_seg = np.array([[1, 1, 2, 2, 2, 0], [1, 1, 1, 2, 2, 0]], np.int32)
  task_ids = np.array([[1, 1, 2, 2, 2, 0], [2, 2, 2, 3, 3, 0]], np.int32)
  targets = np.where(dec_seg > 0, rng.integers(3, 256, dec_seg.shape), 0).astype(np.int32)
  inputs = np.where(enc_seg > 0, rng.integers(3, 256, enc_seg.shape), 0).astype(np.int32)
  enc_pos = np.array([[0, 1, 2, 0, 1, 0], [0, 1, 0, 1, 2, 3]], np.int32)
  dec_pos = np.array([[0, 1, 0, 1, 2, 0], [0, 1, 2, 0, 1, 0]], np.int32)
  dec_in = np.where(dec_pos > 0, np.roll(targets, 1, axis=1), 0)  # shifted right per segment
  return {"encoder_input_tokens": inputs, "encoder_segment_ids": enc_seg,
          "encoder_positions": enc_pos, "decoder_target_tokens": targets,
          "decoder_input_tokens": dec_in, "decoder_segment_ids": dec_seg,
          "decoder_positions": dec_pos,
          "decoder_loss_weights": (targets > 0).astype(np.int32), doremi.TASK_IDS: task_ids}


@pytest.mark.slow
def test_doremi_step_on_the_mesh_follows_algorithm_1():
  """One jitted, sharded step: α_1 from the models' log-likelihoods computed here in numpy."""
  mesh = partitioning.make_mesh((2, 2), jax.devices()[:4])
  config = _tiny_config()
  tx = optax.sgd(0.1)
  with partitioning.activate(mesh):
    base, shardings, model = train_state.create_train_state(config, tx, mesh, seed=1)
    ref_state, _, _ = train_state.create_train_state(config, tx, mesh, seed=2)
    state = jax.device_put(doremi.new_state(base, 3),
                           doremi.state_shardings(shardings, mesh))
    previous = jnp.array([0.0, 0.0, 0.4])
    state = state.replace(alpha=jnp.array([0.2, 0.5, 0.3]), excess=previous)
    batch = _hand_batch()
    step = doremi.jit_doremi_step(model, model, tx, lambda s: 0.1,
                                  doremi.state_shardings(shardings, mesh), shardings.params,
                                  mesh, z_loss=0.0, eta=2.0, smoothing=0.05)
    proxy_params = jax.device_get(state.params)
    new, metrics = step(state, ref_state.params, partitioning.host_to_global(batch, mesh))

  @jax.jit
  def log_likelihoods(params):  # [B, T] via log_softmax + take_along_axis (not doremi's code)
    logits = model.apply({"params": params}, **losses.model_inputs(batch))
    return losses.token_log_likelihoods(logits, batch["decoder_target_tokens"])

  excess = np.maximum(np.asarray(log_likelihoods(jax.device_get(ref_state.params)))
                      - np.asarray(log_likelihoods(proxy_params)), 0.0)
  lam = []
  for d in (1, 2, 3):
    where = batch[doremi.TASK_IDS] == d
    lam.append(excess[where].sum() / where.sum())
  tilted = np.array([0.2, 0.5, 0.3]) * np.exp(2.0 * np.array(lam))
  expected = 0.95 * tilted / tilted.sum() + 0.05 / 3
  np.testing.assert_allclose(metrics["excess_loss"], lam, rtol=1e-5)
  np.testing.assert_allclose(new.alpha, expected, rtol=1e-5)
  np.testing.assert_allclose(new.alpha_sum, expected, rtol=1e-5)
  np.testing.assert_allclose(metrics["average_weight"], expected, rtol=1e-5)
  assert int(new.step) == 1 and int(new.guard["skipped"]) == 0
  assert new.alpha.sharding.is_fully_replicated
  # The proxy took an SGD step on Σ_i α_1[i] · (mean loss of domain i), α_1 from above.
  def objective(params):
    logits = model.apply({"params": params}, **losses.model_inputs(batch))
    nll = -losses.token_log_likelihoods(logits, batch["decoder_target_tokens"])
    means = [jnp.sum(jnp.where(batch[doremi.TASK_IDS] == d, nll, 0.0))
             / np.sum(batch[doremi.TASK_IDS] == d) for d in (1, 2, 3)]
    return sum(float(a) * m for a, m in zip(expected, means))

  grads = jax.jit(jax.grad(objective))(proxy_params)
  want = jax.tree.map(lambda p, g: p - 0.1 * g, proxy_params, grads)
  for a, b in zip(jax.tree.leaves(jax.device_get(new.params)), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert float(metrics["loss"]) == pytest.approx(float(jax.jit(objective)(proxy_params)),
                                                 rel=1e-5)


# ----------------------------------------------------------------------------- three domains


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
  """JSON shards of three domains and the gin bindings that declare them as mixture 'three'."""
  folder = tmp_path_factory.mktemp("domains")
  docs = list(demo_corpus.documents())
  vocab_path = demo_corpus.demo_assets().vocab_path
  from t5lite.data.vocab.seqio_vocab import SentencePieceVocabulary
  vocab = SentencePieceVocabulary(vocab_path, extra_ids=100)
  rng = np.random.default_rng(0)
  random_docs = [{"text": vocab.decode(rng.integers(3, 3000, 250).tolist())} for _ in range(400)]
  shards = {"ref": [d for d in docs if "/reference/" in d["url"]],
            "lib": [d for d in docs if "/library/" in d["url"]], "noise": random_docs}
  paths = {}
  for name, records in shards.items():
    paths[name] = str(folder / f"{name}.json.gz")
    with gzip.open(paths[name], "wt") as f:
      f.writelines(json.dumps({"text": r["text"]}) + "\n" for r in records)
  mixture = [(name, 1.0) for name in DOMAINS]
  return [f"--gin.VOCABULARY_PATH='{vocab_path}'",
          f"--gin.register_all.json_sources={paths!r}",
          f"--gin.register_all.mixtures={{'three': {mixture!r}}}",
          f"--gin.DATA_CACHE_DIR='{folder / 'cache'}'", "--gin.Sources.build_missing_cache=True"]


def parse(args):
  gin.clear_config()
  common.parse_gin_flags(args)


def doremi_args(domains, model_dir, *extra):
  return [*TINY, "--gin_file=runs/doremi.gin", *domains, "--gin.DOREMI_MIXTURE='three'",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}", "--gin.BATCH_SIZE=12",
          "--gin.make_optimizer.name='adamw'", "--gin.learning_rate_schedule.name='constant'",
          "--gin.learning_rate_schedule.peak=1e-2", "--gin.Checkpointer.async_save=False",
          "--gin.LoopConfig.log_period=10", "--gin.doremi.log_period=1", f"--gin.MODEL_DIR='{model_dir}'",
          f"--gin.TRAIN_STEPS={REFERENCE_STEPS}", f"--gin.DOREMI_PROXY_STEPS={PROXY_STEPS}", *extra]


def run_doremi(args):
  parse(args)
  return doremi_run.doremi(mesh=partitioning.make_mesh((4, 2)))


def proxy_rows(model_dir):
  rows = [json.loads(line) for line in open(os.path.join(model_dir, "proxy", "metrics.jsonl"))]
  return {r["step"]: r for r in rows if r["split"] == "train"}


@pytest.fixture(scope="module")
def resumed(domains, tmp_path_factory):
  """`t5lite doremi` on 'three' stopped after 8 proxy steps, then run again to 16: the reference
  (40 steps) is trained by the first run and reused by the second, the proxy resumed."""
  d = str(tmp_path_factory.mktemp("doremi"))
  first = run_doremi(doremi_args(domains, d, f"--gin.DOREMI_PROXY_STEPS={PROXY_STEPS // 2}"))
  assert first.steps == PROXY_STEPS // 2
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    result = run_doremi(doremi_args(domains, d))
  assert "reusing the reference model" in out.getvalue()
  assert "resumed the DoReMi proxy from" in out.getvalue()
  return d, result


@pytest.mark.slow
def test_random_domain_falls_below_its_baseline(resumed):
  d, result = resumed
  assert result.steps == PROXY_STEPS and sorted(result.weights) == sorted(DOMAINS)
  assert result.baseline == pytest.approx({n: 1 / 3 for n in DOMAINS})
  assert sum(result.weights.values()) == pytest.approx(1.0, abs=1e-5)
  noise_weight = result.weights["noise_span_corruption"]
  assert noise_weight < 1 / 3
  assert noise_weight < min(result.weights["ref_span_corruption"],
                            result.weights["lib_span_corruption"])
  rows = proxy_rows(d)
  assert sorted(rows) == list(range(1, PROXY_STEPS + 1))
  last = rows[PROXY_STEPS]
  for name in DOMAINS:  # the average logged each step is the result
    assert last[f"average_weight/{name}"] == pytest.approx(result.weights[name], rel=1e-5)
    assert last[f"domain_tokens/{name}"] > 0
  # The proxy starts where the reference started; the reference is better on the real text.
  assert rows[1]["reference_loss/ref_span_corruption"] < rows[1]["proxy_loss/ref_span_corruption"]
  assert Checkpointer(os.path.join(d, "reference", "checkpoints")).latest_step() == REFERENCE_STEPS
  assert Checkpointer(os.path.join(d, "proxy", "checkpoints")).latest_step() == PROXY_STEPS
  assert os.path.getsize(os.path.join(d, "domain_weights.png")) > 5000
  assert any(f.startswith("events.out.tfevents")
             for f in os.listdir(os.path.join(d, "proxy", "tb", "train")))
  summary = json.load(open(os.path.join(d, "domain_weights.json")))
  assert summary["weights"] == pytest.approx(result.weights)


@pytest.mark.slow
def test_domain_weights_gin_reregisters_the_mixture_and_train_reads_it(resumed, domains,
                                                                       tmp_path):
  d, result = resumed
  weights_gin = os.path.join(d, "domain_weights.gin")
  main_dir = str(tmp_path / "main")
  parse([*TINY, "--gin_file=runs/pretrain.gin", *domains, "--gin.MIXTURE_OR_TASK_NAME='three'",
         "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}", "--gin.BATCH_SIZE=8",
         "--gin.EvalConfig.period=0", "--gin.Checkpointer.async_save=False",
         f"--gin.MODEL_DIR='{main_dir}'", "--gin.TRAIN_STEPS=2", f"--gin_file={weights_gin}"])
  tasks.register_all()
  stream = indexed.IndexedStream("three", {"inputs": 64, "targets": 16}, 8, Sources().cache_dir)
  n = 6000
  counts = collections.Counter(stream.tasks[stream.locate(e)[0]].name for e in range(n))
  for name, weight in result.weights.items():  # exact rates: within one example
    assert abs(counts[name] - weight * n) <= 1.5, (name, counts[name], weight * n)
  train.train(mesh=partitioning.make_mesh((4, 2)))
  assert _data_state(main_dir, 2)["fingerprint"] == stream.fingerprint  # trained on these rates
  tasks.register_mixture("three", [(name, 1.0) for name in DOMAINS])
  uniform = indexed.IndexedStream("three", {"inputs": 64, "targets": 16}, 8, Sources().cache_dir)
  assert uniform.fingerprint != stream.fingerprint


def _data_state(model_dir, step):
  with open(os.path.join(model_dir, "checkpoints", str(step), "data", "metadata")) as f:
    return json.load(f)


@pytest.mark.slow
def test_resumed_proxy_continues_alpha_exactly_and_the_reference_is_reused(resumed, domains,
                                                                           tmp_path):
  d, result = resumed
  assert Checkpointer(os.path.join(d, "reference", "checkpoints")).all_steps() == [REFERENCE_STEPS]
  straight = str(tmp_path / "straight")
  reference = os.path.join(d, "reference")
  again = run_doremi(doremi_args(domains, straight, f"--gin.DOREMI_REFERENCE='{reference}'"))
  assert not os.path.exists(os.path.join(straight, "reference"))
  assert again.weights == result.weights  # bit for bit: α, Σα and λ came back exactly
  got, want = proxy_rows(d), proxy_rows(straight)
  assert sorted(got) == sorted(want) == list(range(1, PROXY_STEPS + 1))
  for step in got:
    for key in ("loss", *[f"domain_weight/{n}" for n in DOMAINS],
                *[f"average_weight/{n}" for n in DOMAINS], *[f"excess_loss/{n}" for n in DOMAINS]):
      assert got[step][key] == want[step][key], (step, key)
  abstract = abstract_params(Config(), partitioning.make_mesh((4, 2)))
  for a, b in zip(jax.tree.leaves(checkpoints.restore_params(os.path.join(d, "proxy"), abstract)),
                  jax.tree.leaves(checkpoints.restore_params(os.path.join(straight, "proxy"),
                                                             abstract))):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_packed_domain_losses_equal_example_by_example(domains, tmp_path):
  """Rows packing three span-corruption examples of mixed domains: per-domain mean losses from
  the packed batch's task ids equal those of each example run alone."""
  parse(doremi_args(domains, tmp_path))
  tasks.register_all()
  streams.ensure_cache("three")
  small = {"inputs": 20, "targets": 8}
  stream = indexed.IndexedStream(
      "three", {"inputs": 64, "targets": 24}, 16, Sources().cache_dir,
      examples_per_row=3, task_ids=True,
      objective_factory=lambda task, lengths: task.numpy(small))
  batch, stats = stream.batch_and_stats(2)
  assert stats["dropped"] == 0 and stats["examples"] == 48
  ids = batch[doremi.TASK_IDS]
  np.testing.assert_array_equal(ids > 0, batch["decoder_loss_weights"] > 0)
  for i in range(16):  # each segment carries its example's task (located independently)
    for c in range(3):
      e = (2 * 16 + i) * 3 + c
      assert set(ids[i][batch["decoder_segment_ids"][i] == c + 1]) == {stream.locate(e)[0] + 1}
  assert sum(len(set(row[row > 0])) > 1 for row in ids) > 4  # rows mixing domains
  model = EncoderDecoder(Config())
  params = nn.unbox(model.init(jax.random.key(0), jnp.ones((1, 1), jnp.int32),
                               jnp.ones((1, 1), jnp.int32))["params"])
  apply = jax.jit(lambda p, b: model.apply({"params": p}, **b))

  @jax.jit
  def packed_means(params, batch):
    logits = model.apply({"params": params}, **losses.model_inputs(batch))
    nll, _ = doremi.token_losses(logits, batch["decoder_target_tokens"], 0.0)
    mask = doremi.domain_mask(batch[doremi.TASK_IDS], batch["decoder_loss_weights"], 3)
    return doremi.domain_sums(nll, mask) / mask.sum(axis=(0, 1))

  packed = packed_means(params, batch)
  # Example by example: each segment alone in its own row, from position 0.
  alone = collections.defaultdict(list)
  rows = {k: [] for k in ("enc", "dec", "domain")}
  for i in range(16):
    for s in range(1, 4):
      rows["enc"].append(batch["encoder_input_tokens"][i][batch["encoder_segment_ids"][i] == s])
      rows["dec"].append(batch["decoder_target_tokens"][i][batch["decoder_segment_ids"][i] == s])
      rows["domain"].append(ids[i][batch["decoder_segment_ids"][i] == s][0])
  enc = np.zeros((48, 20), np.int32)
  dec = np.zeros((48, 8), np.int32)
  for j, (e, t) in enumerate(zip(rows["enc"], rows["dec"])):
    enc[j, :len(e)], dec[j, :len(t)] = e, t
  dec_in = np.concatenate([np.zeros((48, 1), np.int32), dec[:, :-1]], axis=1)
  logits = apply(params, {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in,
                          "decoder_target_tokens": dec})
  single = -np.asarray(losses.token_log_likelihoods(logits, dec))
  for j, domain in enumerate(rows["domain"]):
    alone[domain].extend(single[j][dec[j] > 0].tolist())
  np.testing.assert_allclose(packed, [np.mean(alone[d]) for d in (1, 2, 3)], rtol=2e-5)


# ----------------------------------------------------------------------------- bad input


def _cli_error(capsys, args):
  from t5lite import main as cli
  gin.clear_config()
  with pytest.raises(SystemExit) as e:
    cli.run_with_args(["doremi", *args])
  assert e.value.code == 2
  return capsys.readouterr().err


def test_doremi_needs_the_token_cache_and_a_mixture(capsys, tmp_path):
  err = _cli_error(capsys, ["--gin_file=runs/doremi_demo.gin", f"--gin.MODEL_DIR='{tmp_path}'",
                            "--gin.DATA_CACHE_DIR=None"])
  assert "reads the token cache: set DATA_CACHE_DIR" in err
  err = _cli_error(capsys, ["--gin_file=runs/doremi_demo.gin", f"--gin.MODEL_DIR='{tmp_path}'",
                            "--gin.DOREMI_MIXTURE='demo_span_corruption'"])
  assert "'demo_span_corruption' is a task" in err
  err = _cli_error(capsys, ["--gin_file=runs/doremi.gin", f"--gin.MODEL_DIR='{tmp_path}'",
                            "--gin.DATA_CACHE_DIR='/tmp/x'"])
  assert "DOREMI_MIXTURE" in err
  assert not os.listdir(tmp_path)  # nothing trained


def test_rates_and_json_sources_refuse_what_they_cannot_use(tmp_path):
  gin.clear_config()
  mixture = {"mix": [("demo_span_corruption", 1.0), ("demo_prefix_lm", 3.0)]}
  with pytest.raises(ValueError, match=r"a positive rate for each of its tasks "
                                       r"\['demo_prefix_lm', 'demo_span_corruption'\]"):
    tasks.register_all(mixtures=mixture, rates={"mix": {"demo_span_corruption": 1.0}})
  with pytest.raises(ValueError, match="'nope' is not a registered mixture"):
    tasks.register_all(rates={"nope": {"demo_span_corruption": 1.0}})
  with pytest.raises(ValueError, match=r"json_sources\['demo'\].*a new prefix"):
    tasks.register_all(json_sources={"demo": str(tmp_path / "*.json")})
  tasks.register_all(mixtures=mixture,
                     rates={"mix": {"demo_span_corruption": 1.2, "demo_prefix_lm": 0.8}})
  rates = {t.name: r for t, r in tasks.leaf_tasks("mix")}  # was 0.25 / 0.75
  assert rates == pytest.approx({"demo_span_corruption": 0.6, "demo_prefix_lm": 0.4})
  tasks.register_all()


def test_unset_required_macros_are_named():
  gin.clear_config()
  gin.parse_config("""
      doremi.model_dir = %gin.REQUIRED
      doremi.mixture = %gin.REQUIRED
      doremi.reference_steps = 1
      doremi.proxy_steps = 1
      doremi.batch_size = 8
      doremi.task_feature_lengths = {}
      train.model_dir = '/tmp/unused'
      train.train_steps = %gin.REQUIRED
      DataConfig.mixture_or_task_name = 'demo_span_corruption'
      DataConfig.task_feature_lengths = {}
      DataConfig.batch_size = 8
  """)
  try:
    with pytest.raises(ValueError, match=r"MODEL_DIR \(doremi.model_dir\), DOREMI_MIXTURE "
                                         r"\(doremi.mixture\); use --gin_file=runs/doremi.gin"):
      doremi_run.doremi()
    with pytest.raises(ValueError, match=r"TRAIN_STEPS \(train.train_steps\);.*--gin.TRAIN_STEPS"):
      train.train()
  finally:
    gin.clear_config()
