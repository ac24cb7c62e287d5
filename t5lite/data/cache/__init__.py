"""t5lite.data.cache."""
