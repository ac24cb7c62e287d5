"""What the trainer reads: the batch layout (features.py), seqio's packed tf.data pipeline
(tfdata.py), the index-addressed stream over the token cache (indexed.py), and the choice
between them (streams.py)."""
