"""A corpus build: its plan (inputs, recipe, output), its passes of datatrove steps, their
executors (local by default, SLURM or Ray for a crawl) and the manifest that makes an output
folder hold one build only.

Passes (each a datatrove pipeline over `tasks` tasks; the find passes over `dedup_buckets`):
  read         input files -> pages, length filter, URL signatures       (when dedup_urls)
  url-dedup    newest page per normalised URL                            (when dedup_urls)
  clean        drop URL losers, clean_page, line signatures              (when dedup_lines)
  line-dedup   which page keeps each line                                (when dedup_lines)
  filter/write drop lost lines, langdetect, bad words -> shards           (MinHash: 3 passes more)
  finish       validation shards, OUTPUT/report.json, intermediates removed
A pass whose global step is off merges into the next. Task t of every per-task pass handles the
same pages, read back from the previous pass's checkpoint; datatrove's executors skip tasks
already completed (work/logs/<pass>/completions), so a rerun resumes and a finished build is a
no-op.

OUTPUT/ holds c4-train.NNNNN-of-NNNNN.json.gz, c4-validation.NNNNN-of-NNNNN.json.gz,
corpus.json (the manifest), report.json, and work/ (logs; intermediates while building).
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import threading
from typing import Any, Callable, Optional, Sequence

import numpy as np
from datatrove.pipeline.base import PipelineStep

from t5lite import files
from t5lite.corpus import c4_rules
from t5lite.corpus import dedup
from t5lite.corpus import report
from t5lite.corpus import steps
from t5lite.corpus import wet

MANIFEST = "corpus.json"
MANIFEST_FORMAT = "t5lite corpus 1"
EXECUTORS = ("local", "slurm", "ray")
INTERMEDIATES = ("pages", "signatures", "lost", "minhash", "validation", "skipped")


def default_badwords_path(language: str = "en") -> str:
  root = os.environ.get("T5LITE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                        "t5lite")
  return os.path.join(root, "badwords", language or "en")


@dataclasses.dataclass(frozen=True)
class Build:
  """What a build reads, how, and where it writes (see plan())."""
  inputs: tuple[str, ...]
  output: str
  recipe: c4_rules.Recipe
  tasks: int
  dedup_buckets: int
  validation_shards: int
  keys: wet.JsonKeys = wet.JsonKeys()
  nltk_data: tuple[str, ...] = ()
  badwords: Optional[str] = None
  work: str = ""
  keep_work: bool = False

  def manifest(self) -> dict:
    """What makes two builds the same build (resuming one must not mix another in)."""
    badwords_sha = None
    if self.recipe.needs_badwords():
      with files.open_file(self.badwords, "rb") as f:
        badwords_sha = hashlib.sha256(f.read()).hexdigest()
    return {"format": MANIFEST_FORMAT, "inputs": list(self.inputs),
            "recipe": self.recipe.to_dict(), "tasks": self.tasks,
            "dedup_buckets": self.dedup_buckets, "validation_shards": self.validation_shards,
            "json_keys": dataclasses.asdict(self.keys), "badwords_sha256": badwords_sha}


def plan(inputs: Sequence[str], output: str, recipe: c4_rules.Recipe, tasks: int = 0,
         dedup_buckets: int = 0, validation_shards: int = -1, keys: wet.JsonKeys = wet.JsonKeys(),
         nltk_data: Sequence[str] = (), badwords: Optional[str] = None,
         work: Optional[str] = None, keep_work: bool = False) -> Build:
  """A Build over the files matching `inputs` (patterns, local or gs://); checks, before anything
  runs, that the files have known formats and that the Punkt model and bad-words list the recipe
  needs are there. tasks: 0 = one per input file; dedup_buckets: 0 = tasks; validation_shards:
  -1 = tasks / 128 (allenai/c4: 1024 train, 8 validation shards), at least 1."""
  paths = []
  for pattern in inputs:
    matched = files.glob(pattern)
    if not matched:
      raise FileNotFoundError(f"no input file matches {pattern!r} (expected WET files "
                              "*.warc.wet.gz or JSON lines *.jsonl[.gz], local or gs://)")
    paths.extend(files.absolute(path) for path in matched)
  paths = sorted(dict.fromkeys(paths))
  for path in paths:
    wet.file_format(path)
  tasks = min(tasks or len(paths), len(paths))
  if validation_shards < 0:
    validation_shards = max(1, round(tasks / 128))
  if not recipe.validation_modulus:
    validation_shards = 0
  elif validation_shards == 0:
    raise ValueError("validation_shards = 0 with a validation split: expected at least 1 (or "
                     "Recipe.validation_modulus = 0 for no validation split)")
  if recipe.needs_sentences():
    c4_rules.load_sentence_tokenizer(recipe.sentence_model, nltk_data)
  if recipe.needs_badwords():
    badwords = files.absolute(badwords or default_badwords_path(recipe.language))
    c4_rules.read_badwords(badwords)
  output = files.absolute(output)
  return Build(inputs=tuple(paths), output=output, recipe=recipe, tasks=tasks,
               dedup_buckets=dedup_buckets or tasks, validation_shards=validation_shards,
               keys=keys, nltk_data=tuple(files.absolute(p) for p in nltk_data),
               badwords=badwords if recipe.needs_badwords() else None,
               work=files.absolute(work) if work else files.join(output, "work"),
               keep_work=keep_work)


def claim_output(build: Build) -> bool:
  """Writes the manifest into a new or empty output folder (False), or accepts a folder holding
  this same build (True: resume); ValueError for a folder holding anything else."""
  path = files.join(build.output, MANIFEST)
  manifest = json.loads(json.dumps(build.manifest()))  # tuples as JSON gives them back
  differ = steps.manifest_difference(path, manifest)
  if differ is not None:
    if differ:
      raise ValueError(f"output folder {build.output} holds another build (its {MANIFEST} differs "
                       f"in: {', '.join(differ)}): choose a new --output, or delete that folder")
    return True
  if files.listdir(build.output, missing_ok=True):
    raise ValueError(f"output folder {build.output} is not empty and holds no {MANIFEST} (not a "
                     "t5lite corpus build): choose a new or empty --output")
  files.write_text(path, json.dumps(manifest, indent=1) + "\n")
  return False


def load_build(output: str, work: Optional[str] = None) -> Build:
  """The Build whose manifest the output folder holds (for its report and progress)."""
  output = files.absolute(output)
  path = files.join(output, MANIFEST)
  if not files.exists(path):
    raise FileNotFoundError(f"{output} holds no corpus build ({MANIFEST} not found)")
  m = json.loads(files.read_text(path))
  return Build(inputs=tuple(m["inputs"]), output=output, recipe=c4_rules.Recipe(**m["recipe"]),
               tasks=m["tasks"], dedup_buckets=m["dedup_buckets"],
               validation_shards=m["validation_shards"], keys=wet.JsonKeys(**m["json_keys"]),
               work=files.absolute(work) if work else files.join(output, "work"))


@dataclasses.dataclass
class Pass:
  name: str
  tasks: int
  pipeline: list


def logging_dir(build: Build, index: int, name: str) -> str:
  return files.join(build.work, "logs", f"{index:02d}-{name}")


def passes(build: Build) -> list[Pass]:
  """The build's passes, in order (see the module docstring)."""
  recipe, work, n, buckets = build.recipe, build.work, build.tasks, build.dedup_buckets
  out: list[Pass] = []
  current: list = [steps.ReadPages(build.inputs, work, build.keys, recipe.max_page_chars)]

  def cut(name: str, checkpoint: str, signatures: Optional[str]):
    nonlocal current
    current.append(steps.Checkpoint(work, checkpoint, signatures, buckets))
    out.append(Pass(name, n, current))
    current = [steps.ReadCheckpoint(work, checkpoint)]

  if recipe.dedup_urls:
    cut("read", "read", "urls")
    out.append(Pass("url-dedup", buckets, [dedup.FindDuplicates(work, "urls", n)]))
    current.append(steps.DropUrlDuplicates(work, buckets))
  if recipe.clean:
    current.append(steps.CleanPages(recipe, build.nltk_data))
  if recipe.dedup_lines:
    cut("clean", "clean", "lines")
    out.append(Pass("line-dedup", buckets, [dedup.FindDuplicates(work, "lines", n)]))
    current.append(steps.DropDuplicateLines(recipe, build.nltk_data, work, buckets))
  if recipe.language:
    current.append(steps.FilterLanguage(recipe))
  if recipe.needs_badwords():
    current.append(steps.FilterBadWords(recipe, build.badwords))
  if recipe.minhash:
    out.extend(_minhash_passes(build, current))
    current = [steps.ReadCheckpoint(work, "filtered"), _minhash_filter(work)]
  current.append(steps.WriteShards(build.output, work, n, recipe.validation_modulus))
  out.append(Pass("write", n, current))
  logging_dirs = [logging_dir(build, i, p.name) for i, p in enumerate(out)]
  out.append(Pass("finish", 1, [Finish(build, logging_dirs)]))
  return out


def _minhash_passes(build: Build, current: list) -> list[Pass]:
  from datatrove.pipeline.dedup import minhash  # pylint: disable=g-import-not-at-top
  folder = files.join(build.work, "minhash")
  current = current + [steps.Checkpoint(build.work, "filtered"),
              minhash.MinhashDedupSignature(output_folder=files.join(folder, "signatures"),
                                            config=dedup.MINHASH,
                                            language=dedup.WhitespaceWords())]
  return [Pass("filter", build.tasks, current),
          Pass("minhash-buckets", dedup.MINHASH.num_buckets, [minhash.MinhashDedupBuckets(
              input_folder=files.join(folder, "signatures"),
              output_folder=files.join(folder, "buckets"), config=dedup.MINHASH)]),
          Pass("minhash-cluster", 1, [minhash.MinhashDedupCluster(
              input_folder=files.join(folder, "buckets"), output_folder=files.join(folder, "remove"),
              config=dedup.MINHASH)])]


def _minhash_filter(work: str):
  from datatrove.pipeline.dedup import minhash  # pylint: disable=g-import-not-at-top
  return minhash.MinhashDedupFilter(input_folder=files.join(work, "minhash", "remove"))


class Finish(PipelineStep):
  """Gathers the validation parts into validation_shards shards, writes OUTPUT/report.json, then
  removes the intermediates (not the logs). Once report.json exists it does nothing."""
  type = "💽 - WRITER"
  name = "c4 finish"

  def __init__(self, build: Build, logging_dirs: Sequence[str]):
    super().__init__()
    self.build, self.logging_dirs = build, list(logging_dirs)

  def run(self, data=None, rank: int = 0, world_size: int = 1):
    del data
    build = self.build
    if files.exists(files.join(build.output, report.REPORT)):
      return
    validation = []
    if build.validation_shards:
      for shard, parts in enumerate(np.array_split(np.arange(build.tasks),
                                                   build.validation_shards)):
        name = steps.validation_shard_name(shard, build.validation_shards)
        writer = steps.AtomicGzipWriter(files.join(build.output, name))
        for task in parts.tolist():
          with files.open_file(steps.validation_part_path(build.work, task), "rb") as raw:
            with gzip.GzipFile(fileobj=raw) as f:
              for line in f:
                writer.write(json.loads(line))
        writer.close()
        validation.append(name)
    skipped = []
    for task in range(build.tasks):
      path = steps.skipped_path(build.work, task)
      if files.exists(path):
        skipped += json.loads(files.read_text(path))
    counters, seconds = report.read_stats(self.logging_dirs)
    shards = {"train": [steps.train_shard_name(t, build.tasks) for t in range(build.tasks)],
              "validation": validation}
    result = report.make_report(counters, seconds, skipped, shards, build.recipe.to_dict())
    files.write_text(files.join(build.output, report.REPORT), json.dumps(result, indent=1) + "\n")
    if not build.keep_work:
      for name in INTERMEDIATES:
        files.remove_tree(files.join(build.work, name))
    return
    yield  # pylint: disable=unreachable


# ------------------------------------------------------------------------------ executors


@dataclasses.dataclass(frozen=True)
class ExecutorOptions:
  """How the passes run. local: `workers` processes (1: in this process). slurm: one sbatch job
  array per pass, chained by dependencies (datatrove SlurmPipelineExecutor; `slurm` holds its
  arguments: partition, time, mem_per_cpu_gb, env_command / venv_path, sbatch_args ...). ray:
  the Ray cluster `ray.init()` finds (datatrove RayPipelineExecutor; `ray` holds its arguments)."""
  kind: str = "local"
  workers: int = 1
  slurm: dict = dataclasses.field(default_factory=dict)
  ray: dict = dataclasses.field(default_factory=dict)


def executors(build: Build, options: ExecutorOptions = ExecutorOptions()) -> list:
  """One datatrove executor per pass, each depending on the one before."""
  if options.kind not in EXECUTORS:
    raise ValueError(f"executor {options.kind!r}: expected one of {', '.join(EXECUTORS)}")
  result, previous = [], None
  for index, p in enumerate(passes(build)):
    kwargs = dict(pipeline=p.pipeline, tasks=p.tasks, depends=previous,
                  logging_dir=logging_dir(build, index, p.name))
    if options.kind == "local":
      from datatrove.executor import LocalPipelineExecutor  # pylint: disable=g-import-not-at-top
      executor = LocalPipelineExecutor(workers=max(1, min(options.workers, p.tasks)), **kwargs)
    elif options.kind == "slurm":
      from datatrove.executor import SlurmPipelineExecutor  # pylint: disable=g-import-not-at-top
      slurm = {"time": "24:00:00", "mem_per_cpu_gb": 4, **options.slurm}
      if "partition" not in slurm:
        raise ValueError("the slurm executor needs a partition (--slurm_partition NAME)")
      executor = SlurmPipelineExecutor(job_name=f"t5lite-corpus-{p.name}", **slurm, **kwargs)
    else:
      from datatrove.executor.ray import RayPipelineExecutor  # pylint: disable=g-import-not-at-top
      executor = RayPipelineExecutor(**options.ray, **kwargs)
    result.append(executor)
    previous = executor
  return result


def tasks_left(build: Build) -> list[tuple[str, int, int]]:
  """(pass, tasks not completed, tasks) of each pass, from the completion marks."""
  left = []
  for index, p in enumerate(passes(build)):
    done = set(files.listdir(files.join(logging_dir(build, index, p.name), "completions"),
                             missing_ok=True))
    left.append((p.name, sum(f"{r:05d}" not in done for r in range(p.tasks)), p.tasks))
  return left


def run(build: Build, options: ExecutorOptions = ExecutorOptions(),
        progress: Optional[Callable[[int, int, str], Any]] = None) -> Optional[dict]:
  """Claims the output folder and runs (local, Ray) or submits (SLURM) every pass; returns the
  report when the build has finished here (local, Ray), else None. progress(done, total, pass)
  is called every half second (5 s for a remote work folder) while a local or Ray build runs."""
  claim_output(build)
  chain = executors(build, options)
  if options.kind == "local" and options.workers > 1:
    import multiprocess  # pylint: disable=g-import-not-at-top
    # Workers fork from datatrove's forkserver: with the steps' modules loaded there once, each
    # pass's pool starts in about half the time.
    multiprocess.set_forkserver_preload(["t5lite.corpus.pipeline", "datatrove.executor.local"])
  if options.kind == "ray":
    import ray  # pylint: disable=g-import-not-at-top
    if not ray.is_initialized():
      ray.init()  # the cluster `ray start` made on this machine, or RAY_ADDRESS's
  stop = threading.Event()
  watcher = None
  if progress is not None and options.kind != "slurm":
    watcher = threading.Thread(target=_watch, args=(build, progress, stop), daemon=True)
    watcher.start()
  try:
    chain[-1].run()
  finally:
    stop.set()
    if watcher is not None:
      watcher.join()
  if options.kind == "slurm":
    return None
  return report.load(build.output)


def _watch(build: Build, progress: Callable[[int, int, str], Any], stop: threading.Event) -> None:
  def report_once():
    left = tasks_left(build)
    total = sum(n for _, _, n in left)
    current = next((name for name, todo, _ in left if todo), "done")
    progress(total - sum(todo for _, todo, _ in left), total, current)
  interval = 5.0 if files.is_remote(build.work) else 0.5  # listing a bucket costs more
  report_once()
  while not stop.wait(interval):
    report_once()
  report_once()
