"""t5lite: pretraining T5 and BART encoder-decoders in JAX/Flax."""
from t5lite import backend as _backend

_backend.tune_host_memory()  # CPU only; must precede jax's CPU client (see backend.py)
