"""t5lite.serving."""
