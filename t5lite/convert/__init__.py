"""t5lite.convert."""
