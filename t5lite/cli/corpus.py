"""`t5lite corpus`: build an allenai/c4-style corpus from raw pages with C4's rules (datatrove),
and prune one by perplexity.

  t5lite corpus build --input 'crawl/*.warc.wet.gz' --output /data/mycorpus      # C4 en's rules
  t5lite corpus build --input 'pages/*.jsonl.gz' --output /data/noclean \\
      --gin_file=corpus/c4_en_noclean.gin --workers 16
  t5lite corpus build ... --executor slurm --slurm_partition cpu --tasks 1000     # a whole crawl
  t5lite corpus report /data/mycorpus           # the counters (or the progress of a running build)
  t5lite corpus demo-wet demo.warc.wet.gz       # a WET file of real documents + web boilerplate
  t5lite corpus prune --input '/data/mycorpus/c4-train.*.json.gz' --output /data/pruned \
      --model_dir runs/scorer --keep 0.5 --select middle    # perplexity pruning (prefix-LM loss)

Then train on it: --gin.register_all.json_sources="{'mine': '/data/mycorpus/c4-train.*.json.gz'}"
and --gin.MIXTURE_OR_TASK_NAME="'mine_span_corruption'" (see gin_configs/runs/corpus_demo.gin).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys

from t5lite.cli import common


def _build_parser(sub) -> None:
  p = sub.add_parser("build", help="run (or resume) a build",
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--input", action="append", required=True,
                 help="WET files (*.warc.wet.gz) or JSON lines (*.jsonl[.gz], *.json[.gz]): a "
                      "pattern, local or gs:// (repeatable)")
  p.add_argument("--output", required=True,
                 help="output folder (local or gs://): shards, corpus.json, report.json, work/")
  p.add_argument("--tasks", type=int, default=0, help="tasks per pass; 0: one per input file")
  p.add_argument("--dedup_buckets", type=int, default=0,
                 help="buckets of the URL / line dedup passes (each sorted in memory, ~64 bytes a "
                      "line); 0: --tasks")
  p.add_argument("--validation_shards", type=int, default=-1,
                 help="validation shards; -1: tasks / 128 (allenai/c4: 1024 train, 8 validation)")
  p.add_argument("--nltk_data", action="append", default=[],
                 help="folder holding tokenizers/punkt_tab/ (repeatable); default: NLTK's search "
                      "path ($NLTK_DATA, ~/nltk_data, ...)")
  p.add_argument("--badwords", default=None,
                 help="bad-words list, one a line; default: $T5LITE_CACHE/badwords/<language>")
  p.add_argument("--text_key", default="text", help="JSON lines: the page text's key")
  p.add_argument("--url_key", default="url", help="JSON lines: the page URL's key")
  p.add_argument("--timestamp_key", default="timestamp",
                 help="JSON lines: the crawl date's key (optional in a line)")
  p.add_argument("--executor", choices=("local", "slurm", "ray"), default="local")
  p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                 help="local: tasks at once (1: in this process); ray: tasks at once (-1: all)")
  p.add_argument("--slurm_partition", default=None)
  p.add_argument("--slurm_time", default="24:00:00", help="time limit of a SLURM task")
  p.add_argument("--slurm_mem_per_cpu_gb", type=float, default=4)
  p.add_argument("--slurm_env_command", default=None,
                 help="run before each SLURM task, e.g. 'source /path/to/.venv/bin/activate'")
  p.add_argument("--ray_cpus_per_task", type=int, default=1)
  p.add_argument("--work", default=None,
                 help="logs and intermediates (a shared folder for SLURM / Ray); default: "
                      "OUTPUT/work")
  p.add_argument("--keep_work", action="store_true", help="keep the intermediates at the end")
  p.add_argument("--verbose", action="store_true", help="show datatrove's logs")
  common.add_gin_flags(p)


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="t5lite corpus", description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog="\n\n".join(__doc__.split("\n\n")[1:]))
  sub = p.add_subparsers(dest="action", required=True)
  _build_parser(sub)
  r = sub.add_parser("report", help="print a build's counters, or its progress")
  r.add_argument("output", help="a build's output folder")
  r.add_argument("--work", default=None, help="the build's --work folder, if not OUTPUT/work")
  d = sub.add_parser("demo-wet", help="write a WET file of the embedded demo corpus's documents "
                                      "dressed as web pages (and the demo vocabulary beside it)")
  d.add_argument("path", help="the .warc.wet.gz file to write (local)")
  d.add_argument("--seed", type=int, default=0)
  _prune_parser(sub)
  return p


def _prune_parser(sub) -> None:
  p = sub.add_parser("prune", help="score every document with a trained run (prefix-LM loss per "
                                   "token) and keep a fraction of the distribution")
  p.add_argument("--input", action="append", required=True,
                 help="JSON-lines shards ({\"text\": ...}, .json[l][.gz]): a pattern, local or "
                      "gs:// (repeatable)")
  p.add_argument("--output", required=True,
                 help="output folder: shards, scores.jsonl.gz, summary.json, prune.json")
  p.add_argument("--keep", type=float, required=True, help="fraction of documents kept, (0, 1]")
  p.add_argument("--select", choices=("low", "middle", "high", "random"), default="middle",
                 help="which part of the loss distribution stays (random: the baseline); "
                      "default middle")
  p.add_argument("--seed", type=int, default=0, help="--select random's sample (default 0)")
  p.add_argument("--inputs_length", type=int, default=256,
                 help="tokens of a document's prefix given to the encoder, EOS included "
                      "(default 256)")
  p.add_argument("--targets_length", type=int, default=256,
                 help="tokens of its continuation scored, EOS included (default 256)")
  p.add_argument("--shards", type=int, default=0, help="output shards; 0: one per input file")
  p.add_argument("--split", choices=("train", "validation"), default="train",
                 help="the output shards' names: c4-<split>.NNNNN-of-NNNNN.json.gz (default train)")
  p.add_argument("--text_key", default="text", help="the document text's key (default text)")
  common.add_run_flags(p)


def main(argv: list[str]) -> int:
  rest, bindings = common.split_gin_overrides(argv)
  args = parser().parse_args(rest)
  if args.action in ("build", "prune"):
    args.gin_bindings = list(args.gin_bindings) + bindings
    return _build(args) if args.action == "build" else _prune(args)
  if bindings:
    raise ValueError(f"--gin.{bindings[0].split(' ')[0]}: gin applies to `t5lite corpus build` "
                     "and `t5lite corpus prune` only")
  if args.action == "report":
    return _report(args)
  return _demo_wet(args)


def _build(args: argparse.Namespace) -> int:
  from t5lite.corpus import c4_rules, pipeline, report, wet  # pylint: disable=g-import-not-at-top
  common.parse_gin(args)
  if args.workers == 0 or args.workers < -1:
    raise ValueError(f"--workers {args.workers}: expected at least 1 (or -1 with --executor ray)")
  build = pipeline.plan(
      args.input, args.output, c4_rules.Recipe(), tasks=args.tasks,
      dedup_buckets=args.dedup_buckets, validation_shards=args.validation_shards,
      keys=wet.JsonKeys(args.text_key, args.url_key, args.timestamp_key),
      nltk_data=args.nltk_data, badwords=args.badwords, work=args.work, keep_work=args.keep_work)
  slurm = {k: v for k, v in dict(partition=args.slurm_partition, time=args.slurm_time,
                                 mem_per_cpu_gb=args.slurm_mem_per_cpu_gb,
                                 env_command=args.slurm_env_command).items() if v is not None}
  options = pipeline.ExecutorOptions(kind=args.executor, workers=args.workers, slurm=slurm,
                                     ray={"workers": args.workers,
                                          "cpus_per_task": args.ray_cpus_per_task})
  print(f"t5lite corpus: {len(build.inputs)} input file(s) -> {build.output} ({build.tasks} tasks, "
        f"{len(pipeline.passes(build))} passes, executor {args.executor})", flush=True)
  with _quiet(args.verbose) as stream:
    bar = _ProgressBar(stream)
    try:
      result = pipeline.run(build, options, progress=bar.update)
    finally:
      bar.close()
  if result is None:
    print(f"submitted; follow it with `t5lite corpus report {build.output}`")
    return 0
  print(report.format_table(result))
  print(f"shards: {build.output}/c4-train.*-of-{build.tasks:05d}.json.gz"
        + (f", c4-validation.*-of-{build.validation_shards:05d}.json.gz"
           if build.validation_shards else "") + f"; counters: {build.output}/report.json")
  return 0


def _prune(args: argparse.Namespace) -> int:
  from t5lite.corpus import prune  # pylint: disable=g-import-not-at-top
  plan = prune.plan(args.input, args.output, args.keep, args.select, seed=args.seed,
                    inputs_length=args.inputs_length, targets_length=args.targets_length,
                    shards=args.shards, split=args.split, text_key=args.text_key)
  prune.check_model_dir(args.model_dir)
  run = common.load_run(args)
  print(f"t5lite corpus prune: {len(plan.inputs)} input file(s) -> {plan.output}, scored by "
        f"{run.model_dir} (step {run.step}) as a prefix LM ({plan.inputs_length} / "
        f"{plan.targets_length} tokens)", flush=True)
  summary = prune.prune(plan, run, vocabulary=args.vocabulary, batch_size=args.batch_size,
                        log=lambda line: print(line, flush=True))
  print(prune.format_summary(summary))
  print(f"shards: {plan.output}/c4-{plan.split}.*-of-{plan.shards:05d}.json.gz; scores: "
        f"{plan.output}/{prune.SCORES}; summary: {plan.output}/{prune.SUMMARY}")
  return 0


def _report(args: argparse.Namespace) -> int:
  from t5lite.corpus import pipeline, report  # pylint: disable=g-import-not-at-top
  build = pipeline.load_build(args.output, args.work)
  try:
    print(report.format_table(report.load(build.output)))
    return 0
  except FileNotFoundError:
    pass
  print(f"{build.output}: not finished; tasks done per pass:")
  for name, todo, total in pipeline.tasks_left(build):
    print(f"  {name:<16} {total - todo:>6} / {total}")
  return 0


def _demo_wet(args: argparse.Namespace) -> int:
  from t5lite.corpus import demo  # pylint: disable=g-import-not-at-top
  from t5lite.data.sources import demo_corpus  # pylint: disable=g-import-not-at-top
  parent = os.path.dirname(os.path.abspath(args.path))
  os.makedirs(parent, exist_ok=True)
  pages = demo.write_wet(args.path, demo_corpus.documents(), seed=args.seed)
  vocab = os.path.join(parent, demo_corpus.VOCAB_FILE)
  shutil.copy(demo_corpus.demo_assets().vocab_path, vocab)
  print(f"wrote {pages} pages to {args.path}, and the demo vocabulary to {vocab}")
  return 0


class _ProgressBar:
  """A tqdm bar of the build's tasks (all passes), on the terminal's stderr."""

  def __init__(self, stream):
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    self._bar = tqdm(total=0, file=stream, unit="task", dynamic_ncols=True, leave=False)

  def update(self, done: int, total: int, current: str) -> None:
    self._bar.total = total
    self._bar.n = done
    self._bar.set_description(current, refresh=False)
    self._bar.refresh()

  def close(self) -> None:
    self._bar.close()


@contextlib.contextmanager
def _quiet(verbose: bool):
  """datatrove logs every task to stderr (and to work/logs/<pass>/logs/): unless verbose, file
  descriptor 2 goes to /dev/null meanwhile (worker processes inherit it); yields a stream on the
  real stderr for the progress bar."""
  sys.stderr.flush()
  if verbose:
    yield sys.stderr
    return
  saved = os.dup(2)
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  stream = os.fdopen(os.dup(saved), "w")
  try:
    yield stream
  finally:
    stream.close()
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)
