"""t5lite data: span corruption, vocabularies, seqio tasks and input pipelines.

Importing this package registers the default tasks (see tasks.register_tasks). The
span_corruption preprocessor lives in the module of that name (t5lite.data.span_corruption).
"""
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

register_tasks()
