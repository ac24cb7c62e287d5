"""Every pretraining objective declared once (registry.py): its parameters and length
rule (lengths.py), its seqio/TF preprocessor (tf_objectives.py on tf_spans.py's span machinery)
and its NumPy implementation for the token cache (numpy_objectives.py, bart_noise.py)."""
