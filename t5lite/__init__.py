"""t5lite: pretraining T5 and BART encoder-decoders in JAX/Flax.

Importing t5lite has no side effects; the `t5lite` command (main.py) sets up the process.
"""
