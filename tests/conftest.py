"""Test set-up: 8 fake CPU devices, set before jax is imported anywhere."""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import importlib.util
import pathlib

# A CUDA build of torch (the only torch 2.13 for Python 3.12) segfaults loading triton in
# torch._dynamo when TensorFlow was imported first; torch first, then TF, works.
if importlib.util.find_spec("torch") and importlib.util.find_spec("triton"):
  import torch._dynamo  # pylint: disable=unused-import

import jax
import pytest

from t5lite.model.config import Config

jax.config.update("jax_numpy_rank_promotion", "raise")


def tiny_config(**changes) -> Config:
  """The tests' tiny T5 1.1 (d 32, 4 heads x 8, gated GELU 64, 2 + 2 layers, vocabulary 256,
  float32), with `changes`: `from conftest import tiny_config` where a module needs it at import
  time, the `tiny` fixture elsewhere."""
  return Config(vocab_size=256, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=64,
                num_encoder_layers=2, num_decoder_layers=2, dtype="float32").replace(**changes)


@pytest.fixture
def tiny() -> Config:
  return tiny_config()

REPO = pathlib.Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


def _shared(relpath: str) -> pathlib.Path:
    path = SHARED_DATA / relpath
    if not path.exists():
        msg = f"real test data missing: {path} (expected ../shared/data beside the checkout)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def c4_sample() -> pathlib.Path:
    """The real C4 sample (1000 documents, JSON lines, gzip)."""
    return _shared("c4/olmo_c4-sample.00000-of-00001.json.gz")


@pytest.fixture(scope="session")
def c4_allenai_shard() -> pathlib.Path:
    """The first 3 documents of allenai/c4 en/c4-train.00000-of-01024.json.gz."""
    return _shared("c4/hfdatasets_dummy_c4-train.00000-of-01024.json.gz")


@pytest.fixture(scope="session")
def t5_vocab_path() -> pathlib.Path:
    """The real T5 SentencePiece model (cc_all.32000)."""
    return _shared("t5_vocab/spiece.model")


@pytest.fixture(scope="session")
def gpt2_bpe_dir() -> pathlib.Path:
    """GPT-2 byte-level BPE: encoder.json + vocab.bpe."""
    _shared("gpt2_bpe/vocab.bpe")
    return _shared("gpt2_bpe/encoder.json").parent


@pytest.fixture(scope="session")
def nltk_data() -> pathlib.Path:
    """NLTK's Punkt English sentence model (punkt_tab form): the folder holding tokenizers/."""
    _shared("nltk_data/tokenizers/punkt_tab/english/sent_starters.txt")
    return _shared("nltk_data")


@pytest.fixture(scope="session")
def badwords_en() -> pathlib.Path:
    """The LDNOOBW English list C4 en used (commit 25e679f, 377 entries)."""
    return _shared("badwords/en")


@pytest.fixture(scope="module", autouse=True)
def _no_gin_bindings_across_modules():
  """In-process commands leave gin bindings (e.g. demo.gin's grad_clip) behind: no test module
  sees another's."""
  import gin  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  yield
  gin.clear_config()
