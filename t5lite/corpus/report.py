"""A build's counters: datatrove's per-task stats of every pass, summed into OUTPUT/report.json and
printed as a table (pages in; pages and lines dropped per reason; pages kept per split).

Pages are counted once read whole from their file (a WET record without URL, text or date is not
a page, nor a JSON line with empty text: `records_skipped`), so
pages_in == sum(pages_dropped) + kept.train + kept.validation.
"""
from __future__ import annotations

import json
from typing import Iterable

from t5lite import files


REPORT = "report.json"

# report reason <- counter (TFDS's names, under their namespace), in the order rules apply.
PAGE_REASONS = (
    ("too_long", "too-long-filter/filtered"),
    ("url_duplicate", "duplicate-url-filter/filtered"),
    ("lorem_ipsum", "clean-page/filtered:loremipsum"),
    ("curly_bracket", "clean-page/filtered:squigglybracket"),
    ("too_few_sentences", "clean-page/filtered:too_few_sentences"),
    ("line_dedup_empty", "dedupe-lines/filtered:empty"),
    ("line_dedup_too_few_sentences", "dedupe-lines/filtered:too_few_sentences"),
    ("langdetect_exception", "language-filter/filtered:langdetect_exception"),
    ("language_no_predictions", "language-filter/filtered:no_predictions"),
    ("language_low_confidence", "language-filter/filtered:low_confidence"),
    ("language_other", "language-filter/filtered:ignored_language"),
    ("badwords", "badwords-filter/filtered"),
    ("minhash_duplicate", "minhash/dropped"),
)
LINE_REASONS = (
    ("too_long_word", "clean-page/line-filtered:too_long_word"),
    ("no_endmark", "clean-page/line-filtered:no_endmark"),
    ("too_short", "clean-page/line-filtered:too_short"),
    ("javascript", "clean-page/line-filtered:javascript"),
    ("policy", "clean-page/line-filtered:policy"),
    ("global_duplicate", "dedupe-lines/line-filtered:global_duplicate"),
    ("local_duplicate", "dedupe-lines/line-filtered:local_duplicate"),
)
RECORDS_SKIPPED = (
    ("wet_no_url", "split-wet-file/filtered:no_url"),
    ("wet_no_content", "split-wet-file/filtered:no_content"),
    ("wet_no_timestamp", "split-wet-file/filtered:no_timestamp"),
    ("json_no_content", "read-jsonl/filtered:no_content"),
)
MINHASH_FILTER = "🎯 MinHash stage 4"


def _total(value, kind=int):
  """A datatrove stat's total (a number, or a dict with "total")."""
  return kind(value["total"] if isinstance(value, dict) else value)


def read_stats(logging_dirs: Iterable[str]) -> tuple[dict[str, int], dict[str, float]]:
  """(counter -> sum over every task of every pass, step name -> seconds) from datatrove's
  logging_dir/stats/<task>.json files."""
  counters: dict[str, int] = {}
  seconds: dict[str, float] = {}
  for logging_dir in logging_dirs:
    stats_dir = files.join(logging_dir, "stats")
    for name in files.listdir(stats_dir, missing_ok=True):
      for step in json.loads(files.read_text(files.join(stats_dir, name))):
        seconds[step["name"]] = seconds.get(step["name"], 0.0) + _total(step["time_stats"], float)
        for key, value in step["stats"].items():
          if step["name"].endswith(MINHASH_FILTER) and key == "dropped":
            key = "minhash/dropped"
          if "/" in key:
            counters[key] = counters.get(key, 0) + _total(value)
  return dict(sorted(counters.items())), seconds


def make_report(counters: dict[str, int], seconds: dict[str, float], skipped: list[dict],
                shards: dict[str, list[str]], recipe: dict) -> dict:
  def pick(table):
    return {reason: counters.get(key, 0) for reason, key in table if counters.get(key, 0)}
  return {
      "files": {"read": counters.get("files/read", 0), "skipped": skipped},
      "records_skipped": pick(RECORDS_SKIPPED),
      "pages_in": counters.get("pages/in", 0),
      "pages_dropped": pick(PAGE_REASONS),
      "lines_dropped": pick(LINE_REASONS),
      "kept": {"train": counters.get("kept/train", 0),
               "validation": counters.get("kept/validation", 0)},
      "shards": shards,
      "recipe": recipe,
      "seconds": {name: round(s, 3) for name, s in seconds.items() if s},
      "counters": counters,
  }


def format_table(report: dict) -> str:
  """The report as a few aligned lines."""
  rows = [("files read", report["files"]["read"]),
          ("files skipped", len(report["files"]["skipped"])),
          ("pages in", report["pages_in"])]
  rows += [(f"  dropped: {reason}", n) for reason, n in report["pages_dropped"].items()]
  rows += [(f"  lines dropped: {reason}", n) for reason, n in report["lines_dropped"].items()]
  rows += [("kept: train", report["kept"]["train"]),
           ("kept: validation", report["kept"]["validation"])]
  width = max(len(name) for name, _ in rows)
  lines = [f"{name:<{width}}  {n:>12,}" for name, n in rows]
  lines += [f"skipped {s['path']}: {s['reason']}" for s in report["files"]["skipped"]]
  return "\n".join(lines)


def load(output: str) -> dict:
  path = files.join(output, REPORT)
  if not files.exists(path):
    raise FileNotFoundError(f"{path} not found: the build in {output} has not finished")
  return json.loads(files.read_text(path))
