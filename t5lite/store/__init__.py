"""t5lite.store."""
