"""t5lite.model."""
