"""t5lite.data.objectives."""
