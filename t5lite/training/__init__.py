"""t5lite.training."""
