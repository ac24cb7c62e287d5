"""t5lite: pretraining T5 and BART encoder-decoders in JAX/Flax.

Importing t5lite changes nothing in the process, unless T5LITE_MALLOC asks for the host-memory
tuning (runtime/backend.py), which must happen before jax starts; the `t5lite` command
(main.py) prepares the process itself.
"""
import os as _os

if _os.environ.get("T5LITE_MALLOC"):
  from t5lite.runtime import backend as _backend
  _backend.tune_host_memory()
