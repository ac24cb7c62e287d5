"""t5lite.data.sources."""
