"""Test and benchmark support, never imported by the library (tests/test_structure.py checks):
references to compare t5lite against.

  t5_preprocessors()        the original `t5` package's preprocessors (`t5/__init__.py` imports
                            sklearn, sacrebleu, rouge and pandas; this loads
                            `t5.data.preprocessors` alone: `pip install --no-deps t5 babel`)
  uncached_greedy_decode    greedy decoding without the KV cache, the cached decoders' reference
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
import types
from typing import Any, Optional

import jax
import jax.numpy as jnp

# The decoders' own steps, so that the reference differs from them only in the cache.
from t5lite.model.network import EncoderDecoder
from t5lite.serving.decoding import _encode, _token_loop, _variables  # pylint: disable=protected-access

MISSING = "the `t5` package is missing: pip install --no-deps t5 babel"


def t5_preprocessors():
  """`t5.data.preprocessors`; ModuleNotFoundError naming the install command if `t5` is absent."""
  if "t5.data.preprocessors" in sys.modules:
    return sys.modules["t5.data.preprocessors"]
  spec = importlib.util.find_spec("t5")
  if spec is None:
    raise ModuleNotFoundError(MISSING)
  root = os.path.dirname(spec.origin)
  for name, path in (("t5", root), ("t5.data", os.path.join(root, "data"))):
    if name not in sys.modules:
      module = types.ModuleType(name)
      module.__path__ = [path]
      sys.modules[name] = module
  return importlib.import_module("t5.data.preprocessors")


@functools.partial(jax.jit, static_argnames=("model", "max_decode_length"))
def uncached_greedy_decode(model: EncoderDecoder, params: Any, encoder_input_tokens: jax.Array,
                           max_decode_length: int,
                           encoder_valid: Optional[jax.Array] = None) -> jax.Array:
  """The reference: each step re-runs the whole decoder on [start, tokens so far, pad...].

  The causal mask makes the padding after step i invisible to position i. The encoder runs once.
  """
  cfg = model.config
  variables = _variables(params)
  encoded_BID, valid_BI = _encode(model, variables, encoder_input_tokens, encoder_valid)
  B, L = encoder_input_tokens.shape[0], max_decode_length

  def step_fn(inputs_BL, i, prev_B):
    inputs_BL = jax.lax.dynamic_update_slice(inputs_BL, prev_B[:, None], (0, i))
    logits_BLV = model.apply(variables, encoded_BID, valid_BI, inputs_BL, method="decode")
    return jax.lax.dynamic_index_in_dim(logits_BLV, i, axis=1, keepdims=False), inputs_BL

  return _token_loop(model, B, L, step_fn, jnp.full((B, L), cfg.pad_token_id, jnp.int32),
                     lambda logits_BV, i: jnp.argmax(logits_BV, axis=-1))
