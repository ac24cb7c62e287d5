"""t5lite.runtime."""
