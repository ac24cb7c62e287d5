"""The datatrove steps of a corpus build; pipeline.py puts them in passes.

Pages travel as datatrove Documents: text, plus metadata url, nurl (normalised URL), ts
(timestamp), src (input file << 32 | page in file). Each step counts what it does under TFDS's
counter names, `namespace/counter` (report.py turns them into the report); the counts are kept
in a Counter and given to datatrove's stats once per task.

  ReadPages         a task's share of the input files: WET / JSON lines, length filter
  Checkpoint        writes the pages between passes (and a dedup pass's signatures)
  ReadCheckpoint    reads them back in the same order
  DropUrlDuplicates / CleanPages / DropDuplicateLines / FilterLanguage / FilterBadWords
  WriteShards       allenai/c4-style output: c4-train.NNNNN-of-NNNNN.json.gz (+ validation parts)
"""
from __future__ import annotations

import collections
import gzip
import json
import os
from typing import Optional, Sequence

from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.logging import logger

from t5lite import files
from t5lite.corpus import c4_rules
from t5lite.corpus import dedup
from t5lite.corpus import wet


def manifest_difference(path: str, manifest: dict) -> Optional[list[str]]:
  """None when no manifest is at `path`; else the keys in which the recorded one differs from
  `manifest` (a dict value's keys too, as 'recipe.min_words_per_line'): [] when it is the same."""
  if not files.exists(path):
    return None
  try:
    old = json.loads(files.read_text(path))
  except ValueError:
    old = {}
  manifest = json.loads(json.dumps(manifest))  # tuples as JSON gives them back
  differ = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
  for k in list(differ):
    if isinstance(old.get(k), dict) and isinstance(manifest.get(k), dict):
      differ += [f"{k}.{s}" for s in sorted(set(old[k]) | set(manifest[k]))
                 if old[k].get(s) != manifest[k].get(s)]
  return differ


def train_shard_name(task: int, tasks: int) -> str:
  return f"c4-train.{task:05d}-of-{tasks:05d}.json.gz"


def validation_shard_name(shard: int, shards: int) -> str:
  return f"c4-validation.{shard:05d}-of-{shards:05d}.json.gz"


def checkpoint_path(work: str, name: str, task: int) -> str:
  return files.join(work, "pages", name, f"{task:05d}.jsonl.gz")


def validation_part_path(work: str, task: int) -> str:
  return files.join(work, "validation", f"{task:05d}.json.gz")


def skipped_path(work: str, task: int) -> str:
  return files.join(work, "skipped", f"{task:05d}.json")


class AtomicGzipWriter:
  """JSON lines into a .gz that appears under its name only when closed whole."""

  def __init__(self, path: str, level: int = 6):
    self.path = path
    self.tmp = f"{path}.tmp-{os.getpid()}"
    parent = os.path.dirname(path)
    if parent:
      files.makedirs(parent)
    self._raw = files.open_file(self.tmp, "wb")
    self._gz = gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=level, mtime=0)

  def write(self, record: dict) -> None:
    self._gz.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))

  def close(self) -> None:
    self._gz.close()
    self._raw.close()
    files.rename(self.tmp, self.path, overwrite=True)


class CountingStep(PipelineStep):
  """A step whose counters (TFDS names under a namespace) go to datatrove's stats per task."""
  type = "🌐 - C4"

  def __init__(self):
    super().__init__()
    self._counts = collections.Counter()

  def counter(self, namespace: str):
    def count(name: str, amount: int = 1) -> None:
      self._counts[f"{namespace}/{name}"] += amount
    return count

  def flush_counts(self) -> None:
    for name, value in sorted(self._counts.items()):
      self.stat_update(name, value=value)
    self._counts.clear()


class ReadPages(CountingStep):
  """Input files inputs[rank::world_size]: pages (WET split / JSON lines) under max_page_chars.
  An unreadable file is skipped, counted and named in work/skipped/<task>.json."""
  name = "c4 read pages"

  def __init__(self, inputs: Sequence[str], work: str, keys: wet.JsonKeys,
               max_page_chars: int):
    super().__init__()
    self.inputs, self.work, self.keys, self.max_page_chars = list(inputs), work, keys, max_page_chars

  def run(self, data=None, rank: int = 0, world_size: int = 1):
    del data
    skipped = []
    length_count = self.counter("too-long-filter")
    for file_index in range(rank, len(self.inputs), world_size):
      path = self.inputs[file_index]
      namespace = "split-wet-file" if wet.file_format(path) == "wet" else "read-jsonl"
      try:
        for page_index, page in enumerate(wet.read_pages(path, self.keys,
                                                         self.counter(namespace))):
          self._counts["pages/in"] += 1
          if self.max_page_chars and not wet.is_valid_length(page, self.max_page_chars,
                                                             length_count):
            continue
          yield Document(text=page.text, id=f"{file_index}:{page_index}", metadata={
              "url": page.url, "nurl": page.normalized_url, "ts": page.timestamp,
              "src": dedup.source_order(file_index, page_index)})
      except wet.UnreadableFile as e:
        logger.warning(f"skipped: {e}")
        self._counts["files/skipped"] += 1
        skipped.append({"path": path, "reason": str(e)})
        continue
      self._counts["files/read"] += 1
    files.write_text(skipped_path(self.work, rank), json.dumps(skipped))
    self.flush_counts()


class Checkpoint(PipelineStep):
  """Writes the pages (work/pages/<name>/<task>.jsonl.gz, in order: a page's index there is its
  idx) and passes them on; with `signatures`, also that dedup kind's records, by bucket."""
  type = "💽 - WRITER"
  name = "c4 checkpoint"

  def __init__(self, work: str, checkpoint: str, signatures: Optional[str] = None,
               buckets: int = 1):
    super().__init__()
    self.work, self.checkpoint, self.signatures, self.buckets = work, checkpoint, signatures, buckets

  def run(self, data, rank: int = 0, world_size: int = 1):
    writer = AtomicGzipWriter(checkpoint_path(self.work, self.checkpoint, rank), level=1)
    sigs = (dedup.SignatureWriter(self.work, self.signatures, self.buckets, rank)
            if self.signatures else None)
    for idx, doc in enumerate(data):
      writer.write({"text": doc.text, **doc.metadata})
      if self.signatures == "urls":
        sigs.add(dedup.md5_words(doc.metadata["nurl"]), dedup.newest_first(doc.metadata["ts"]),
                 doc.metadata["src"], idx)
      elif self.signatures == "lines":
        order = dedup.md5_words(doc.metadata["url"])
        for key in dedup.distinct_line_keys(doc.text):
          sigs.add(key, order, doc.metadata["src"], idx)
      self.stat_update("pages")
      yield doc
    writer.close()
    if sigs:
      self.stat_update(f"{self.signatures}/records", value=sigs.close())


class ReadCheckpoint(PipelineStep):
  """The pages a Checkpoint of the same task wrote, in order, with metadata idx."""
  type = "📖 - READER"
  name = "c4 read checkpoint"

  def __init__(self, work: str, checkpoint: str):
    super().__init__()
    self.work, self.checkpoint = work, checkpoint

  def run(self, data=None, rank: int = 0, world_size: int = 1):
    del data
    path = checkpoint_path(self.work, self.checkpoint, rank)
    with files.open_file(path, "rb") as raw, gzip.GzipFile(fileobj=raw) as f:
      for idx, line in enumerate(f):
        record = json.loads(line)
        text = record.pop("text")
        record["idx"] = idx
        yield Document(text=text, id=str(record["src"]), metadata=record)


class DropUrlDuplicates(CountingStep):
  """Drops the pages that lost their normalised URL to a newer page (TFDS select_newest_page)."""
  name = "c4 url dedup"

  def __init__(self, work: str, buckets: int):
    super().__init__()
    self.work, self.buckets = work, buckets

  def run(self, data, rank: int = 0, world_size: int = 1):
    lost = dedup.load_lost(self.work, "urls", rank, self.buckets)
    count = self.counter("duplicate-url-filter")
    for doc in data:
      if doc.metadata["idx"] in lost:
        count("filtered")
        continue
      count("passed")
      yield doc
    self.flush_counts()


class _SentenceStep(CountingStep):
  """A step that counts sentences with NLTK Punkt (loaded once per task)."""

  def __init__(self, recipe: c4_rules.Recipe, nltk_data: Sequence[str]):
    super().__init__()
    self.recipe, self.nltk_data = recipe, list(nltk_data)
    self._count_sentences = None

  def count_sentences(self, text: str) -> int:
    if self._count_sentences is None:
      self._count_sentences = c4_rules.sentence_counter(
          c4_rules.load_sentence_tokenizer(self.recipe.sentence_model, self.nltk_data))
    return self._count_sentences(text)


class CleanPages(_SentenceStep):
  """C4's clean_page on each page (c4_rules.clean_page)."""
  name = "c4 clean_page"

  def run(self, data, rank: int = 0, world_size: int = 1):
    count = self.counter("clean-page")
    for doc in data:
      with self.track_time():
        text = c4_rules.clean_page(doc.text, self.recipe, self.count_sentences, count)
      if text is not None:
        doc.text = text
        yield doc
    self.flush_counts()


class DropDuplicateLines(_SentenceStep):
  """Removes the lines a page lost to another page (and its own repeats); drops pages left empty
  or under recipe.dedup_min_sentences sentences (TFDS _remove_lines_from_text)."""
  name = "c4 line dedup"

  def __init__(self, recipe: c4_rules.Recipe, nltk_data: Sequence[str], work: str, buckets: int):
    super().__init__(recipe, nltk_data)
    self.work, self.buckets = work, buckets

  def run(self, data, rank: int = 0, world_size: int = 1):
    lost = dedup.load_lost(self.work, "lines", rank, self.buckets)
    count = self.counter("dedupe-lines")
    for doc in data:
      with self.track_time():
        text = dedup.remove_duplicate_lines(doc.text, lost.get(doc.metadata["idx"]),
                                            self.count_sentences,
                                            self.recipe.dedup_min_sentences, count)
      if text is not None:
        doc.text = text
        yield doc
    self.flush_counts()


class FilterLanguage(CountingStep):
  """Keeps pages langdetect calls recipe.language with enough probability."""
  name = "c4 langdetect"

  def __init__(self, recipe: c4_rules.Recipe):
    super().__init__()
    self.recipe = recipe

  def run(self, data, rank: int = 0, world_size: int = 1):
    detector = c4_rules.LanguageFilter(self.recipe.language, self.recipe.min_language_probability)
    count = self.counter("language-filter")
    for doc in data:
      with self.track_time():
        keep = detector.keep(doc.text, count)
      if keep:
        yield doc
    self.flush_counts()


class FilterBadWords(CountingStep):
  """Drops (a fraction of) the pages holding a word of the bad-words list."""
  name = "c4 bad words"

  def __init__(self, recipe: c4_rules.Recipe, badwords_path: str):
    super().__init__()
    self.recipe, self.badwords_path = recipe, badwords_path

  def run(self, data, rank: int = 0, world_size: int = 1):
    badwords = c4_rules.BadWords(c4_rules.read_badwords(self.badwords_path),
                                 self.recipe.language or "en", self.recipe.badwords_fraction)
    count = self.counter("badwords-filter")
    for doc in data:
      with self.track_time():
        keep = badwords.keep(doc.text, doc.metadata["nurl"], count)
      if keep:
        yield doc
    self.flush_counts()


class WriteShards(CountingStep):
  """Task t writes OUTPUT/c4-train.<t>-of-<tasks>.json.gz ({"text", "timestamp", "url"}, as
  allenai/c4) and its validation pages to work/validation/<t>.json.gz (Finish gathers them);
  both appear whole when the task ends."""
  type = "💽 - WRITER"
  name = "c4 write shards"

  def __init__(self, output: str, work: str, tasks: int, validation_modulus: int):
    super().__init__()
    self.output, self.work, self.tasks = output, work, tasks
    self.validation_modulus = validation_modulus

  def run(self, data, rank: int = 0, world_size: int = 1):
    train = AtomicGzipWriter(files.join(self.output, train_shard_name(rank, self.tasks)))
    validation = AtomicGzipWriter(validation_part_path(self.work, rank))
    for doc in data:
      record = {"text": doc.text, "timestamp": doc.metadata["ts"], "url": doc.metadata["url"]}
      if c4_rules.is_validation(doc.metadata["nurl"], self.validation_modulus):
        validation.write(record)
        self._counts["kept/validation"] += 1
      else:
        train.write(record)
        self._counts["kept/train"] += 1
    validation.close()
    train.close()
    self.flush_counts()
    return
    yield  # pylint: disable=unreachable  (the last step: yields nothing)
