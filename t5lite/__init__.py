"""t5lite: pretraining T5 and BART encoder-decoders in JAX/Flax."""
from t5lite import hostmem as _hostmem

_hostmem.reuse_freed_memory()
