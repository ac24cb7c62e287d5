"""t5lite.datamix."""
