"""t5lite.data.vocab."""
