"""t5lite data: span corruption, vocabularies, seqio tasks and input pipelines.

Importing this package registers the default tasks (tasks.register_tasks, and every objective's
tasks in objective_tasks); register_all() re-registers them with the gin-bound sources. The
span_corruption preprocessor lives in the module of that name (t5lite.data.span_corruption).
"""
from typing import Mapping, Sequence

import gin

from t5lite.data.demo_corpus import DemoAssets
from t5lite.data.demo_corpus import demo_assets
from t5lite.data.pipeline import get_dataset
from t5lite.data.sources import JsonLinesDataSource
from t5lite.data.span_corruption import denoise
from t5lite.data.span_corruption import noise_span_to_unique_sentinel
from t5lite.data.span_corruption import nonnoise_span_to_unique_sentinel
from t5lite.data.span_corruption import random_spans_helper
from t5lite.data.span_corruption import random_spans_noise_mask
from t5lite.data.span_corruption import reduce_concat_tokens
from t5lite.data.span_corruption import select_random_chunk
from t5lite.data.span_corruption import split_tokens
from t5lite.data.span_corruption import split_tokens_to_inputs_length
from t5lite.data.tasks import TASK_NAMES
from t5lite.data.tasks import get_task_or_mixture
from t5lite.data.tasks import register_tasks
from t5lite.data.vocab import T5_VOCAB_PATH
from t5lite.data.vocab import get_vocabulary
from t5lite.data.vocab import train_vocabulary

from t5lite.data.objective_tasks import register_mixture
from t5lite.data.objective_tasks import register_objective_tasks

register_tasks()


@gin.configurable
def register_all(mixtures: Mapping[str, Sequence[tuple[str, float]]] = ()) -> None:
  """(Re-)registers every task with the gin-bound sources and vocabularies, then the user's
  mixtures, e.g. in gin: register_all.mixtures = {'mix': [('c4_prefix_lm', 1.0), ('c4_ul2', 2.0)]}.
  """
  register_tasks()
  register_objective_tasks()
  for name, tasks_and_rates in dict(mixtures).items():
    register_mixture(name, tasks_and_rates)
