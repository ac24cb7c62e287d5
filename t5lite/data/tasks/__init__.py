"""t5lite.data.tasks."""
