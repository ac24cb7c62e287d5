"""The seqio Tasks and Mixtures t5lite trains on, each registered with its objective
(registry.py), and fine-tuning tasks from the user's JSON-lines / TSV files (finetune.py)."""
