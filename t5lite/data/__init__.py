"""t5lite data: text sources, vocabularies, objectives, seqio tasks and input pipelines.

  sources.py          where text and vocabularies come from (one gin-configurable `Sources`)
  tasks.py            every task and mixture, registered in one place; what each task needs
  span_corruption.py  T5's span corruption (TF preprocessors)
  objectives.py       T5 / UL2 objectives beyond span corruption, and every objective's lengths
  bart_noise.py       BART's denoising noise (numpy) and its preprocessors
  finetune.py         tasks from the user's own files (JSONL / TSV) and their metrics
  statistics.py       examples as text and an objective's statistics (`t5lite inspect`)
  pipeline.py         batched, packed tf.data pipelines over the registered tasks
  vocab.py, gpt2_vocab.py, demo_corpus.py, peers.py
"""
import importlib

# Imported on first use (PEP 562), so a worker process that needs only numpy parts of this
# package (the cache reader, selection) does not load TensorFlow and seqio.
_LAZY = {"get_dataset": "pipeline", "get_task_or_mixture": "tasks", "register_all": "tasks",
         "get_vocabulary": "vocab"}


def __getattr__(name):
  if name in _LAZY:
    return getattr(importlib.import_module(f"t5lite.data.{_LAZY[name]}"), name)
  raise AttributeError(f"module 't5lite.data' has no attribute {name!r}")
