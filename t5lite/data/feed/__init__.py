"""t5lite.data.feed."""
