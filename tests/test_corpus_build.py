"""t5lite corpus builds (datatrove passes): the whole C4 en build equals TFDS's c4.py order over
the same WET files; cross-page line and URL dedup; resuming; near-duplicates by MinHash; the
SLURM executor (a stand-in sbatch that runs each job here); bad input as one clear line with
nothing written half."""
import gzip
import hashlib
import json
import os
import pathlib
import stat
import sys
import textwrap

import pytest

import tfds_c4
from t5lite.corpus import c4_rules
from t5lite.corpus import demo
from t5lite.corpus import pipeline
from t5lite.corpus import report
from t5lite.corpus import wet

# Only what a test is about: no langdetect, bad words or validation split unless asked for.
PLAIN = dict(language="", badwords_fraction=0.0, validation_modulus=0)


def sentences(prefix: str, n: int) -> list[str]:
  return [f"{prefix} sentence number {i} has enough words in it." for i in range(n)]


def write_jsonl(path: pathlib.Path, pages) -> pathlib.Path:
  path.write_text("".join(json.dumps(p) + "\n" for p in pages))
  return path


def build(inputs, output, recipe=None, nltk_data=None, **kwargs):
  plan = pipeline.plan([str(p) for p in inputs], str(output), recipe or c4_rules.Recipe(**PLAIN),
                       nltk_data=[str(nltk_data)] if nltk_data else [], **kwargs)
  return plan, pipeline.run(plan)


def shards(output) -> dict[str, dict[str, str]]:
  """{split: {url: text}} of a build's output shards."""
  out = {"train": {}, "validation": {}}
  for path in sorted(pathlib.Path(output).glob("c4-*.json.gz")):
    split = "train" if path.name.startswith("c4-train") else "validation"
    with gzip.open(path, "rt") as f:
      for line in f:
        record = json.loads(line)
        assert list(record) == ["text", "timestamp", "url"]
        out[split][record["url"]] = record["text"]
  return out


def balanced(result: dict) -> bool:
  return result["pages_in"] == sum(result["pages_dropped"].values()) + sum(result["kept"].values())


@pytest.fixture(scope="module")
def sample_docs(c4_sample):
  with gzip.open(c4_sample, "rt") as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def wet_files(tmp_path_factory, sample_docs):
  """Three WET files: the C4 sample and the demo corpus dressed as web pages (older copies, spam
  pages: the same spam URLs in every file), the rule pages; and two small ones of the first 40
  documents."""
  root = tmp_path_factory.mktemp("wet")
  demo.write_wet(root / "CC-MAIN-0.warc.wet.gz", sample_docs[:500], seed=0)
  demo.write_wet(root / "CC-MAIN-1.warc.wet.gz", sample_docs[500:], seed=1)
  # Raw-er text: the embedded demo corpus (hard-wrapped docstrings, code) and the rule pages.
  from t5lite.data.sources import demo_corpus  # pylint: disable=g-import-not-at-top
  from test_corpus import RULE_PAGES  # pylint: disable=g-import-not-at-top
  rules = [{"url": f"https://rules.example.com/{name}", "text": text}
           for name, text in RULE_PAGES.items()]
  demo.write_wet(root / "CC-MAIN-2.warc.wet.gz", list(demo_corpus.documents()) + rules, seed=2)
  small = root / "small"
  small.mkdir()
  demo.write_wet(small / "a.warc.wet.gz", sample_docs[:20], seed=2)
  demo.write_wet(small / "b.warc.wet.gz", sample_docs[20:40], seed=3)
  return root


@pytest.mark.slow
def test_c4_en_build_equals_tfds(wet_files, tmp_path, nltk_data, badwords_en):
  """Every rule of c4/en in TFDS's order: the same pages with the same text in the same split,
  and the same counters, rule by rule."""
  inputs = sorted(wet_files.glob("*.warc.wet.gz"))
  plan = pipeline.plan([str(p) for p in inputs], str(tmp_path / "out"), c4_rules.Recipe(),
                       nltk_data=[str(nltk_data)], badwords=str(badwords_en))
  ours = pipeline.run(plan, pipeline.ExecutorOptions(workers=2))
  with tfds_c4.reference(nltk_data) as tfds:
    words = {line.strip() for line in open(badwords_en, encoding="utf-8")}
    theirs = tfds.build_en(inputs, words)
    their_counters = {k: v for k, v in tfds.counters.items() if v}
  assert shards(tmp_path / "out") == theirs
  renamed = {"english-filter": "language-filter", "train": "kept", "validation": "kept"}
  expected = {}
  for key, value in their_counters.items():
    namespace, name = key.split("/", 1)
    if namespace in ("train", "validation"):
      name = namespace
    if namespace.startswith("badwords-filter-"):
      continue  # TFDS counts bad words per language too
    expected[f"{renamed.get(namespace, namespace)}/{name}"] = value
  counters = {k: v for k, v in ours["counters"].items()
              if not k.startswith(("pages/", "files/", "urls/", "lines/"))}
  assert counters == expected
  assert balanced(ours) and ours["kept"]["validation"] > 900  # the sample is C4's validation
  for reason in ("too_long", "url_duplicate", "lorem_ipsum", "curly_bracket", "too_few_sentences",
                 "line_dedup_empty", "language_other", "badwords"):
    assert ours["pages_dropped"][reason] > 0, reason


def test_line_dedup_keeps_each_line_in_one_page(tmp_path, nltk_data):
  """A line repeated across pages stays in the page of smallest md5(URL) only (TFDS's choice); a
  page left with fewer than 3 sentences goes."""
  def md5(url):
    return hashlib.md5(url.encode()).hexdigest()
  shared = "This line is shared by several pages of the crawl."
  pages = [{"url": f"https://site{i}.example.com/", "text": "\n".join(
      sentences(f"Page {i}", 3) + [shared, shared])} for i in range(4)]
  # A copy of lines of the other pages under a URL that loses every line to them.
  copycat = next(u for u in (f"https://copycat{k}.example.com/" for k in range(100))
                 if md5(u) > max(md5(p["url"]) for p in pages))
  pages.append({"url": copycat, "text": "\n".join(
      [shared] + sentences("Page 0", 1) + sentences("Page 1", 1) + sentences("Page 2", 1))})
  _, result = build([write_jsonl(tmp_path / "p.jsonl", pages)], tmp_path / "out",
                    nltk_data=nltk_data)
  out = shards(tmp_path / "out")["train"]
  owner = min((p["url"] for p in pages), key=md5)
  assert [u for u, text in out.items() if shared in text.split("\n")] == [owner]
  assert out[owner].split("\n").count(shared) == 1  # its own repeat goes too
  assert set(out) == {p["url"] for p in pages} - {copycat}
  assert result["lines_dropped"] == {"local_duplicate": 1, "global_duplicate": 3 * 2 + 4}
  assert result["pages_dropped"] == {"line_dedup_empty": 1}
  assert balanced(result)

  # Where the copy wins its lines, the pages it copied from keep two sentences and go.
  pages[-1]["url"] = copycat = next(u for u in (f"https://copycat{k}.example.com/" for k in
                                                range(100))
                                    if md5(u) < min(md5(p["url"]) for p in pages[:-1]))
  _, result = build([write_jsonl(tmp_path / "q.jsonl", pages)], tmp_path / "out2",
                    nltk_data=nltk_data)
  out = shards(tmp_path / "out2")["train"]
  assert set(out) == {copycat, "https://site3.example.com/"}
  assert result["pages_dropped"] == {"line_dedup_too_few_sentences": 3}


def test_url_dedup_keeps_the_newest_page(tmp_path, nltk_data):
  def page(url, ts, tag):
    return {"url": url, "timestamp": ts, "text": "\n".join(sentences(tag, 3))}
  a = write_jsonl(tmp_path / "a.jsonl", [
      page("http://www.example.com/news/?utm_source=x", "2019-04-20T00:00:00Z", "Old"),
      page("https://example.com/tie", "2019-04-20T00:00:00Z", "First")])
  b = write_jsonl(tmp_path / "b.jsonl", [
      page("https://example.com/news", "2019-04-25T00:00:00Z", "New"),
      page("http://example.com/tie/", "2019-04-20T00:00:00Z", "Second")])
  _, result = build([a, b], tmp_path / "out", nltk_data=nltk_data)
  out = shards(tmp_path / "out")["train"]
  assert set(out) == {"https://example.com/news", "https://example.com/tie"}
  assert out["https://example.com/news"].startswith("New")
  assert out["https://example.com/tie"].startswith("First")  # a tie: the page read first
  assert result["pages_dropped"] == {"url_duplicate": 2}


def test_rerun_redoes_nothing_and_resume_redoes_only_the_rest(wet_files, tmp_path, nltk_data):
  inputs = sorted((wet_files / "small").glob("*.wet.gz"))
  plan, first = build(inputs, tmp_path / "out", nltk_data=nltk_data)
  files = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "out").rglob("*")
           if p.is_file()}
  assert all(todo == 0 for _, todo, _ in pipeline.tasks_left(plan))
  assert pipeline.run(plan) == first  # the same report: nothing ran
  assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "out").rglob("*")
          if p.is_file()} == files

  # Interrupted after the clean pass: the rerun does the line dedup, write and finish passes only.
  plan2 = pipeline.plan([str(p) for p in inputs], str(tmp_path / "out2"), plan.recipe,
                        nltk_data=[str(nltk_data)])
  pipeline.claim_output(plan2)
  pipeline.executors(plan2)[2].run()
  assert [todo for _, todo, _ in pipeline.tasks_left(plan2)] == [0, 0, 0, 2, 2, 1]
  # `t5lite corpus report` rebuilds the plan from corpus.json to show this progress.
  assert pipeline.tasks_left(pipeline.load_build(str(tmp_path / "out2"))) == (
      pipeline.tasks_left(plan2))
  done = {p: p.stat().st_mtime_ns for p in (tmp_path / "out2" / "work" / "logs").rglob("*")
          if p.is_file() and p.parts[-3][:2] in ("00", "01", "02")}
  second = pipeline.run(plan2)
  assert {k: v for k, v in second.items() if k != "seconds"} == {
      k: v for k, v in first.items() if k != "seconds"}
  assert {p: p.stat().st_mtime_ns for p in done} == done
  assert ([p.read_bytes() for p in sorted((tmp_path / "out2").glob("c4-*.gz"))] ==
          [p.read_bytes() for p in sorted((tmp_path / "out").glob("c4-*.gz"))])
  assert not (tmp_path / "out2" / "work" / "pages").exists()  # intermediates gone at the end


@pytest.mark.slow
def test_tasks_and_workers_change_the_shards_not_the_corpus(wet_files, tmp_path, nltk_data):
  inputs = sorted((wet_files / "small").glob("*.wet.gz"))
  _, one = build(inputs, tmp_path / "one", nltk_data=nltk_data, tasks=1)
  plan = pipeline.plan([str(p) for p in inputs], str(tmp_path / "two"),
                       c4_rules.Recipe(**PLAIN), nltk_data=[str(nltk_data)], dedup_buckets=3)
  two = pipeline.run(plan, pipeline.ExecutorOptions(workers=2))
  assert sorted(p.name for p in (tmp_path / "two").glob("c4-*")) == [
      "c4-train.00000-of-00002.json.gz", "c4-train.00001-of-00002.json.gz"]
  assert shards(tmp_path / "one") == shards(tmp_path / "two")
  assert one["pages_dropped"] == two["pages_dropped"] and one["kept"] == two["kept"]


def test_validation_shards_are_named_as_allenai(tmp_path, nltk_data):
  pages = [{"url": f"https://example.com/{i}", "text": "\n".join(sentences(str(i), 3))}
           for i in range(60)]
  _, result = build([write_jsonl(tmp_path / f"{k}.jsonl", pages[k::3]) for k in range(3)],
                    tmp_path / "out", c4_rules.Recipe(**{**PLAIN, "validation_modulus": 10}),
                    nltk_data, validation_shards=2)
  names = sorted(p.name for p in (tmp_path / "out").glob("c4-*"))
  assert names == ["c4-train.00000-of-00003.json.gz", "c4-train.00001-of-00003.json.gz",
                   "c4-train.00002-of-00003.json.gz", "c4-validation.00000-of-00002.json.gz",
                   "c4-validation.00001-of-00002.json.gz"]
  out = shards(tmp_path / "out")
  assert {u for u in out["validation"]} == {
      p["url"] for p in pages if c4_rules.is_validation(wet.normalize_url(p["url"]), 10)}
  assert len(out["train"]) + len(out["validation"]) == 60 and result["kept"]["validation"] > 0


def test_minhash_drops_near_duplicates(tmp_path, nltk_data, sample_docs):
  docs = [d for d in sample_docs[:30] if len(d["text"].split()) > 200][:6]
  pages = [{"url": d["url"], "text": d["text"]} for d in docs]
  near = docs[0]["text"].replace(" the ", " a ", 3)  # a copy with 3 words changed
  pages.append({"url": "https://mirror.example.com/copy", "text": near})
  recipe = c4_rules.Recipe(**{**PLAIN, "clean": False, "dedup_lines": False, "minhash": True})
  plan, result = build([write_jsonl(tmp_path / "p.jsonl", pages)], tmp_path / "out", recipe)
  assert [p.name for p in pipeline.passes(plan)] == [
      "read", "url-dedup", "filter", "minhash-buckets", "minhash-cluster", "write", "finish"]
  out = shards(tmp_path / "out")["train"]
  assert len(out) == len(pages) - 1
  assert (docs[0]["url"] in out) != ("https://mirror.example.com/copy" in out)
  assert result["pages_dropped"] == {"minhash_duplicate": 1}


def test_noclean_and_noblocklist_recipes(tmp_path, nltk_data, badwords_en, wet_files):
  import gin  # pylint: disable=g-import-not-at-top
  from t5lite import gin_files  # pylint: disable=g-import-not-at-top
  from t5lite.cli import common  # pylint: disable=g-import-not-at-top
  common.register_configurables()
  recipes = {}
  for name in ("c4_en", "c4_en_noclean", "c4_en_noblocklist"):
    gin.clear_config()
    gin_files.parse([f"corpus/{name}.gin"])
    recipes[name] = c4_rules.Recipe()
  gin.clear_config()
  assert recipes["c4_en"] == c4_rules.Recipe()
  assert recipes["c4_en_noblocklist"] == c4_rules.Recipe(badwords_fraction=0.0)
  noclean = recipes["c4_en_noclean"]
  assert (noclean.clean, noclean.dedup_lines, noclean.badwords_fraction) == (False, False, 0.0)
  plan = pipeline.plan([str(wet_files / "small" / "a.warc.wet.gz")], str(tmp_path / "noclean"),
                       noclean, nltk_data=[str(nltk_data)], badwords=str(badwords_en))
  assert [p.name for p in pipeline.passes(plan)] == ["read", "url-dedup", "write", "finish"]
  result = pipeline.run(plan)
  assert set(result["pages_dropped"]) <= {"too_long", "url_duplicate", "language_other",
                                          "language_low_confidence"}
  texts = shards(tmp_path / "noclean")["validation"].values()
  assert any(demo.SITE_FOOTER in text for text in texts)  # boilerplate stays without cleaning


# ------------------------------------------------------------------------------ bad input


def test_unreadable_wet_file_is_skipped_counted_and_named(wet_files, tmp_path, nltk_data):
  data = (wet_files / "small" / "a.warc.wet.gz").read_bytes()
  (tmp_path / "in").mkdir()
  (tmp_path / "in" / "cut.warc.wet.gz").write_bytes(data[:len(data) // 3])
  (tmp_path / "in" / "good.warc.wet.gz").write_bytes(data)
  _, result = build([tmp_path / "in" / "*.wet.gz"], tmp_path / "out", nltk_data=nltk_data)
  assert result["files"]["read"] == 1
  [skipped] = result["files"]["skipped"]
  assert skipped["path"].endswith("cut.warc.wet.gz") and "not a complete gzip" in skipped["reason"]
  # The good file's pages only, none of the cut one's.
  assert result["pages_in"] == len(list(wet.read_wet(str(tmp_path / "in" / "good.warc.wet.gz"))))
  assert "files skipped" in report.format_table(result)


def test_json_line_without_text_stops_with_nothing_written(tmp_path, nltk_data):
  path = write_jsonl(tmp_path / "p.jsonl", [{"url": "http://a.com", "text": "\n".join(
      sentences("A", 3))}, {"url": "http://b.com", "body": "no text"}])
  with pytest.raises(ValueError, match=r"p.jsonl:2: expected a JSON object with a string 'text'"):
    build([path], tmp_path / "out", nltk_data=nltk_data)
  assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["corpus.json", "work"]


def test_output_folder_holding_another_build_is_refused(tmp_path, nltk_data):
  path = write_jsonl(tmp_path / "p.jsonl", [{"url": "http://a.com", "text": "\n".join(
      sentences("A", 3))}])
  build([path], tmp_path / "out", nltk_data=nltk_data)
  before = sorted(p for p in (tmp_path / "out").rglob("*"))
  other = pipeline.plan([str(path)], str(tmp_path / "out"),
                        c4_rules.Recipe(**PLAIN, min_words_per_line=3),
                        nltk_data=[str(nltk_data)])
  with pytest.raises(ValueError, match=r"holds another build .*recipe\.min_words_per_line"):
    pipeline.run(other)
  assert sorted(p for p in (tmp_path / "out").rglob("*")) == before
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "c4-train.00000-of-01024.json.gz").write_bytes(b"")
  with pytest.raises(ValueError, match="not empty and holds no corpus.json"):
    build([path], tmp_path / "full", nltk_data=nltk_data)


def test_missing_inputs_model_and_badwords_fail_before_anything_runs(tmp_path, nltk_data):
  path = write_jsonl(tmp_path / "p.jsonl", [{"url": "http://a.com", "text": "a"}])
  with pytest.raises(FileNotFoundError, match=r"no input file matches .*nope"):
    pipeline.plan([str(tmp_path / "nope*.wet.gz")], str(tmp_path / "o"), c4_rules.Recipe())
  with pytest.raises(FileNotFoundError, match="punkt_tab"):
    pipeline.plan([str(path)], str(tmp_path / "o"), c4_rules.Recipe(sentence_model="klingon"),
                  nltk_data=[str(nltk_data)])
  with pytest.raises(FileNotFoundError, match=r"bad-words list .*nowords not found"):
    pipeline.plan([str(path)], str(tmp_path / "o"), c4_rules.Recipe(),
                  nltk_data=[str(nltk_data)], badwords=str(tmp_path / "nowords"))
  (tmp_path / "pages.csv").write_text("x")
  with pytest.raises(ValueError, match="pages.csv: expected a Common Crawl WET file"):
    pipeline.plan([str(tmp_path / "pages.csv")], str(tmp_path / "o"), c4_rules.Recipe(**PLAIN))
  assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------ SLURM


FAKE_SBATCH = """\
#!{python}
# A stand-in for SLURM's sbatch: runs the job array here, one task after another, then prints
# what sbatch prints. Jobs run in submission order, so dependencies hold.
import os, re, subprocess, sys
script = sys.argv[-1]
text = open(script).read()
first, last = map(int, re.search(r"--array=(\\d+)-(\\d+)", text).group(1, 2))
offset = next((a.split("RUN_OFFSET=")[1] for a in sys.argv if "RUN_OFFSET=" in a), "0")
with open(os.path.join(os.path.dirname(sys.argv[0]), "jobs.log"), "a") as log:
  log.write(" ".join(a for a in sys.argv[1:-1] if a.startswith("--dependency")) + "\\n")
for task in range(first, last + 1):
  env = dict(os.environ, SLURM_ARRAY_TASK_ID=str(task), RUN_OFFSET=offset,
             SLURM_NODELIST="localhost", SLURM_JOB_ID="1")
  subprocess.run(["bash", script], env=env, check=True, stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)
counter = os.path.join(os.path.dirname(sys.argv[0]), "count")
count = (int(open(counter).read()) if os.path.exists(counter) else 0) + 1
open(counter, "w").write(str(count))
print(f"Submitted batch job {{count}}")
"""
FAKE_SCONTROL = """\
#!/bin/bash
# scontrol show hostnames NODELIST: this machine.
echo localhost
"""
FAKE_SRUN = """\
#!/bin/bash
# srun -l -n 1 CMD ARGS...: run CMD ARGS here.
while [[ "$1" == -* ]]; do if [[ "$1" == "-n" ]]; then shift; fi; shift; done
exec "$@"
"""


@pytest.mark.slow
def test_slurm_executor_runs_the_same_build(wet_files, tmp_path, nltk_data, monkeypatch):
  """The same passes as SLURM job arrays chained by dependencies (a stand-in sbatch runs them)."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name, text in (("sbatch", FAKE_SBATCH.format(python=sys.executable)), ("srun", FAKE_SRUN),
                     ("scontrol", FAKE_SCONTROL)):
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod((bin_dir / name).stat().st_mode | stat.S_IEXEC)
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{pathlib.Path(sys.executable).parent}"
                             f"{os.pathsep}{os.environ['PATH']}")
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      [str(pathlib.Path(__file__).resolve().parent.parent)] + sys.path))
  inputs = [str(p) for p in sorted((wet_files / "small").glob("*.wet.gz"))]
  plan = pipeline.plan(inputs, str(tmp_path / "slurm"), c4_rules.Recipe(**PLAIN),
                       nltk_data=[str(nltk_data)])
  assert pipeline.run(plan, pipeline.ExecutorOptions(
      kind="slurm", slurm={"partition": "cpu", "time": "1:00:00"})) is None
  _, local = build(inputs, tmp_path / "local", nltk_data=nltk_data)
  assert report.load(str(tmp_path / "slurm"))["kept"] == local["kept"]
  assert shards(tmp_path / "slurm") == shards(tmp_path / "local")
  jobs = (bin_dir / "jobs.log").read_text().splitlines()
  assert jobs[0] == "" and all(line.startswith("--dependency=afterok:") for line in jobs[1:]
                               if line)
  script = (tmp_path / "slurm" / "work" / "logs" / "00-read" / "launch_script.slurm").read_text()
  assert "#SBATCH --partition=cpu" in script and "launch_pickled_pipeline" in script


def test_ray_executors_chain_the_passes(tmp_path, nltk_data):
  path = write_jsonl(tmp_path / "p.jsonl", [{"url": "http://a.com", "text": "a"}])
  plan = pipeline.plan([str(path)], str(tmp_path / "o"), c4_rules.Recipe(**PLAIN),
                       nltk_data=[str(nltk_data)])
  chain = pipeline.executors(plan, pipeline.ExecutorOptions(kind="ray", ray={"workers": 4}))
  assert [type(e).__name__ for e in chain] == ["RayPipelineExecutor"] * len(chain)
  assert all(b.depends is a for a, b in zip(chain, chain[1:]))
  with pytest.raises(ValueError, match="needs a partition"):
    pipeline.executors(plan, pipeline.ExecutorOptions(kind="slurm"))


def test_a_local_build_never_imports_tensorflow(tmp_path, nltk_data):
  """The library reads and writes local files without TensorFlow (only gs:// paths use it)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  path = write_jsonl(tmp_path / "p.jsonl", [{"url": "http://a.com", "text": "\n".join(
      sentences("A", 3))}])
  code = textwrap.dedent(f"""
      import sys
      from t5lite.corpus import c4_rules, pipeline
      plan = pipeline.plan([{str(path)!r}], {str(tmp_path / "out")!r},
                           c4_rules.Recipe(badwords_fraction=0.0),
                           nltk_data=[{str(nltk_data)!r}])
      assert pipeline.run(plan)["kept"]["train"] == 1
      assert "tensorflow" not in sys.modules and "jax" not in sys.modules, "imported"
      """)
  env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).resolve().parent.parent)}
  result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-2000:]
