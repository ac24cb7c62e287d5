"""`t5lite corpus` throughput: pages/s per core of C4's cleaning (with and without langdetect) and
of MinHash signatures, beside datatrove's own C4QualityFilter + C4BadWordsFilter on the same
pages, same box; then whole builds (WET file -> shards, every pass) beside datatrove's own
pipeline of those two filters; peak memory of each.

  .venv/bin/python benchmarks/bench_corpus.py --nltk_data ../shared/data/nltk_data \\
      --badwords ../shared/data/badwords/en [--copies 4] [--repeats 3]

Pages: the real C4 sample (1000 documents) and the embedded demo corpus (181), dressed as web
pages by t5lite/corpus/demo.py (boilerplate, older copies, spam pages): 1,306 pages a copy;
--copies N gives N copies under other URLs, each line of copy k led by the word `Copyk` (so
that the line dedup of a build does not drop the copies). Each row runs in its own process (its peak RSS is
the row's memory). Per core: pages per CPU second of that one process (the rate another job on
the shared cores does not lower; a one-worker build runs in it); the two-worker build: pages per
wall second / 2.
datatrove's C4QualityFilter splits sentences with spaCy (its English word tokenizer): spaCy must
be importable (pip install spacy, or --spacy_path DIR of a `pip install --target` of it).
"""
from __future__ import annotations

import argparse
import datetime
import glob
import gzip
import json
import os
import pathlib
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
SAMPLE = DATA / "c4" / "olmo_c4-sample.00000-of-00001.json.gz"
ROWS = ("t5lite clean_page", "t5lite clean_page + bad words",
        "t5lite clean_page + langdetect + bad words", "t5lite MinHash signatures",
        "datatrove C4QualityFilter + C4BadWordsFilter",
        "t5lite corpus build, C4 en (workers 1)", "t5lite corpus build, C4 en (workers 2)",
        "t5lite corpus build, C4 en without langdetect (workers 1)",
        "datatrove pipeline: C4QualityFilter + C4BadWordsFilter + JsonlWriter (workers 1)")


def write_documents(copies: int, path: str) -> None:
  """The documents, N copies under other URLs, as JSON lines (run in a child: the demo corpus
  imports TensorFlow, and a process's peak RSS passes on to the processes it starts)."""
  from t5lite.data.sources import demo_corpus  # pylint: disable=g-import-not-at-top
  with gzip.open(SAMPLE, "rt") as f:
    docs = [json.loads(line) for line in f] + list(demo_corpus.documents())
  with open(path, "w", encoding="utf-8") as f:
    for k in range(copies):
      for d in docs:  # copy k: another URL, each line led by a word of its own (not duplicates)
        text = d["text"] if not k else "\n".join(
            f"Copy{k} {line}" if line.strip() else line for line in d["text"].split("\n"))
        f.write(json.dumps({**d, "text": text,
                            "url": d["url"] + (f"?copy={k}" if k else "")}) + "\n")


def read_documents(path: str) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def pages(docs: list[dict]) -> list[tuple[str, str, str]]:
  from t5lite.corpus import demo  # pylint: disable=g-import-not-at-top
  return list(demo.pages(docs))


def rate(texts, fn, repeats: int) -> float:
  """Best pages per CPU second of fn over the texts."""
  best = 0.0
  for _ in range(repeats):
    c0 = time.process_time()
    for text in texts:
      fn(text)
    best = max(best, len(texts) / (time.process_time() - c0))
  return best


def run_row(row: str, args) -> dict:
  """One row, in this process: {"pages", "pages_per_s_core", ...}."""
  from t5lite.corpus import c4_rules, dedup  # pylint: disable=g-import-not-at-top
  texts = [text for _, _, text in pages(read_documents(args.docs))]
  recipe = c4_rules.Recipe()
  count = c4_rules.sentence_counter(c4_rules.load_sentence_tokenizer("english", [args.nltk_data]))
  words = c4_rules.read_badwords(args.badwords)
  badwords = c4_rules.BadWords(words)
  language = c4_rules.LanguageFilter()

  def clean(text):
    return c4_rules.clean_page(text, recipe, count)

  def clean_badwords(text):
    text = clean(text)
    return text is not None and badwords.keep(text, "x")

  def clean_all(text):
    text = clean(text)
    return text is not None and language.keep(text) and badwords.keep(text, "x")

  if row == ROWS[0]:
    return {"pages": len(texts), "pages_per_s_core": rate(texts, clean, args.repeats)}
  if row == ROWS[1]:
    return {"pages": len(texts), "pages_per_s_core": rate(texts, clean_badwords, args.repeats)}
  if row == ROWS[2]:
    return {"pages": len(texts), "pages_per_s_core": rate(texts, clean_all, args.repeats)}
  if row == ROWS[3]:
    from datatrove.pipeline.dedup import minhash  # pylint: disable=g-import-not-at-top
    step = minhash.MinhashDedupSignature(output_folder=tempfile.mkdtemp(), config=dedup.MINHASH,
                                         language=dedup.WhitespaceWords())
    cleaned = [t for t in map(clean, texts) if t]  # as the pipeline meets them

    def signature(text):
      shingles = step.get_shingles(text)
      return step.get_signature(shingles) if shingles.size else None
    return {"pages": len(cleaned), "pages_per_s_core": rate(cleaned, signature, args.repeats)}
  if row == ROWS[4]:
    from datatrove.data import Document  # pylint: disable=g-import-not-at-top
    quality, bad = datatrove_filters(args)

    def both(text):
      doc = Document(text=text, id="0")
      return quality.filter(doc) is True and bad.filter(doc) is True
    return {"pages": len(texts), "pages_per_s_core": rate(texts, both, args.repeats)}
  return run_build(row, args)


def datatrove_filters(args):
  """datatrove's C4QualityFilter and C4BadWordsFilter (defaults), its bad-words list read from
  the same LDNOOBW file: its own download path needs fsspec's HTTP filesystem (aiohttp) even
  for a cached file, and this box is offline."""
  from datatrove.pipeline.filters import c4_filters  # pylint: disable=g-import-not-at-top
  from datatrove.utils.text import split_into_sentences  # pylint: disable=g-import-not-at-top
  c4_filters.cached_asset_path_or_download = lambda *_, **__: args.badwords
  split_into_sentences("Load spaCy. Now.", "eng")
  return c4_filters.C4QualityFilter(), c4_filters.C4BadWordsFilter()


def run_build(row: str, args) -> dict:
  from t5lite.corpus import c4_rules, demo, pipeline, wet  # pylint: disable=g-import-not-at-top
  root = pathlib.Path(tempfile.mkdtemp(prefix="bench_corpus_"))
  docs = read_documents(args.docs)
  files = 4
  for k in range(files):
    demo.write_wet(root / f"CC-MAIN-{k}.warc.wet.gz", docs[k::files], seed=k)
  inputs = [str(root / "*.warc.wet.gz")]
  n = sum(1 for path in root.glob("*.wet.gz") for _ in wet.read_wet(str(path)))
  workers = 2 if "workers 2" in row else 1
  t0, c0 = time.perf_counter(), time.process_time()
  if row.startswith("datatrove pipeline"):
    datatrove_pipeline(inputs, root / "dt", args)
  else:
    recipe = c4_rules.Recipe(language="" if "without langdetect" in row else "en")
    plan = pipeline.plan(inputs, str(root / "out"), recipe, nltk_data=[args.nltk_data],
                         badwords=args.badwords)
    pipeline.run(plan, pipeline.ExecutorOptions(workers=workers))
  seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
  shutil.rmtree(root)
  # One worker runs in this process: its CPU time is the build's. Two run in worker processes.
  per_core = n / cpu if workers == 1 else n / seconds / workers
  return {"pages": n, "pages_per_s_core": per_core, "seconds": seconds, "workers": workers}


def datatrove_pipeline(inputs, out, args):
  """Read the same WET files (t5lite's reader), then datatrove's two filters and its writer."""
  from datatrove.executor import LocalPipelineExecutor  # pylint: disable=g-import-not-at-top
  from datatrove.pipeline.writers import JsonlWriter  # pylint: disable=g-import-not-at-top
  from t5lite.corpus import pipeline, steps, wet  # pylint: disable=g-import-not-at-top
  quality, bad = datatrove_filters(args)
  files = sorted(path for pattern in inputs for path in glob.glob(pattern))
  reader = steps.ReadPages(files, str(out / "work"), wet.JsonKeys(), wet.MAX_PAGE_CHARS)
  LocalPipelineExecutor([reader, quality, bad, JsonlWriter(str(out / "shards"))], tasks=len(files),
                        workers=1, logging_dir=str(out / "logs")).run()
  del pipeline


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--nltk_data", default=str(DATA / "nltk_data"))
  parser.add_argument("--badwords", default=str(DATA / "badwords" / "en"))
  parser.add_argument("--copies", type=int, default=4)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--spacy_path", default=None, help="a folder with spaCy installed in it")
  parser.add_argument("--row", default=None, help=argparse.SUPPRESS)  # one row, in a child
  parser.add_argument("--docs", default=None, help=argparse.SUPPRESS)  # its documents
  parser.add_argument("--write_docs", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.write_docs:
    write_documents(args.copies, args.write_docs)
    return
  if args.row is not None:
    if args.spacy_path:
      sys.path.insert(0, args.spacy_path)
    result = run_row(ROWS[int(args.row)], args)
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result["peak_mib"] = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, children) / 1024
    print(json.dumps(result))
    return
  args.docs = os.path.join(tempfile.mkdtemp(prefix="bench_corpus_docs_"), "docs.jsonl")
  subprocess.run([sys.executable, __file__, "--write_docs", args.docs, "--copies",
                  str(args.copies)], check=True, capture_output=True)
  print(f"{datetime.date.today()}, {platform.node()}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f}; copies {args.copies}, repeats {args.repeats}\n")
  print("| what | pages | pages/s per core | peak memory |\n|---|---|---|---|")
  for i, row in enumerate(ROWS):
    command = [sys.executable, __file__, "--row", str(i), "--nltk_data", args.nltk_data,
               "--badwords", args.badwords, "--copies", str(args.copies), "--repeats",
               str(args.repeats), "--docs", args.docs] + (["--spacy_path", args.spacy_path] if args.spacy_path else [])
    proc = subprocess.run(command, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if proc.returncode:
      print(f"| {row} | failed: {proc.stderr.strip().splitlines()[-1]} | | |", flush=True)
      continue
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    extra = f" ({r['seconds']:.1f} s wall)" if "seconds" in r else ""
    print(f"| {row} | {r['pages']:,} | {r['pages_per_s_core']:,.0f}{extra} | "
          f"{r['peak_mib']:,.0f} MiB |", flush=True)


if __name__ == "__main__":
  main()
