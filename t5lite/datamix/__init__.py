"""Choosing the data, beside the core (as t5x keeps contrib/): DSIR data selection (dsir*.py)
and DoReMi domain weights (doremi.py's jitted step, doremi_run.py's reference-and-proxy run)."""
