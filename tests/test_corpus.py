"""t5lite corpus's rules against TFDS's own C4 code (tensorflow_datasets/text/c4_utils.py), page by
page: the same text and the same counters (drop reasons) on the real C4 sample, the embedded demo
corpus and pages built to hit every rule; WET splitting, URL normalisation, the length filter,
langdetect, bad words and the validation split likewise."""
import collections
import gzip
import io
import json
import random

import pytest

import tfds_c4
from t5lite.corpus import c4_rules
from t5lite.corpus import demo
from t5lite.corpus import wet

OK = "This line has more than five words in it."
OK2 = "Another good sentence stands here. It has a friend beside it!"
CLEAN_COUNTERS = {"line-filtered:too_long_word", "line-filtered:no_endmark",
                  "line-filtered:too_short", "filtered:loremipsum", "line-filtered:javascript",
                  "filtered:squigglybracket", "line-filtered:policy",
                  "filtered:too_few_sentences", "line-passed", "passed"}

# Pages built to hit every rule of clean_page, and the edges of each (name -> text).
RULE_PAGES = {
    "passes": "\n".join([OK, OK2, 'He said "this is the end of it."']),
    "too_long_word": "\n".join([OK, "a " + "x" * 1001 + " b c d.", "a " + "y" * 1000 + " b c d.",
                                OK2]),
    "citations": "\n".join(["This line ends with a citation mark.[1]",
                            "This line ends with a citation mark. [2]",
                            "[edit] A heading with more words here.[citation needed]",
                            "Empty brackets [] and [12] sit in the middle of it.", OK2]),
    "end_marks": "\n".join([OK, "Does this line end with a question mark?",
                            "This line ends with a bang here!", "This line ends with an apostrophe'",
                            "This line ends with a colon here:", "This line ends with an ellipsis...",
                            "This line ends with four dots here....", "This line ends with two dots..",
                            "This line ends with a unicode ellipsis…", OK2]),
    "words": "\n".join(["One two three four.", "One two three four five.", "One\ttwo\xa0three four.",
                        OK2]),
    "lorem_page": "\n".join([OK, "Lorem ipsum dolor sit amet, consectetur elit.", OK2]),
    "lorem_line_without_end_mark": "\n".join([OK, "Lorem ipsum dolor sit amet consectetur", OK2,
                                              "Lorem ipsum."]),
    "javascript": "\n".join([OK, "Please enable JavaScript to see this page.", OK2]),
    "javascript_before_bracket": "\n".join(["JavaScript code like { this } is shown here.", OK,
                                            OK2]),
    "curly_bracket": "\n".join([OK, "Some code { is here in this line.", OK2]),
    "curly_bracket_no_end_mark": "\n".join([OK, "var x = { a: 1 }", OK2]),
    "policy": "\n".join([OK, "Read our terms of use before posting here.",
                         "PRIVACY POLICY applies to everything on this site.",
                         "This site uses cookies to improve your visit.", "Our cookie policy is long.",
                         "We use cookies on these pages for you.", "The use of cookies is explained.",
                         OK2]),
    "two_sentences": "\n".join([OK, "Only one more sentence is here."]),
    "abbreviations": "\n".join(["Dr. Smith went to Washington with Mr. Jones today.",
                                "They met at 5 p.m. in the U.S. Capitol building.", OK]),
    "line_breaks": f"{OK}\r\n{OK2}\r{OK}\x0b{OK2}\x0c{OK}\x1c{OK2}\x85{OK}\u2028{OK2}\u2029{OK}",
    "whitespace": f"   {OK}   \n\t{OK2}\t\n\n\n  \n{OK}",
    "empty": "",
    "blank": "\n \n\t\n",
}


@pytest.fixture(scope="module")
def tfds(nltk_data):
  with tfds_c4.reference(nltk_data) as ref:
    yield ref


@pytest.fixture(scope="module")
def count_sentences(nltk_data):
  return c4_rules.sentence_counter(c4_rules.load_sentence_tokenizer("english", [str(nltk_data)]))


@pytest.fixture(scope="module")
def pages(c4_sample):
  """(name, url, text): the real C4 sample, the embedded demo corpus, the rule pages."""
  from t5lite.data.sources import demo_corpus  # pylint: disable=g-import-not-at-top
  with gzip.open(c4_sample, "rt") as f:
    sample = [json.loads(line) for line in f]
  out = [(f"c4:{i}", d["url"], d["text"]) for i, d in enumerate(sample)]
  out += [(f"demo:{i}", d["url"], d["text"]) for i, d in enumerate(demo_corpus.documents())]
  out += [(f"demo-page:{i}", d["url"], demo.web_page(d, random.Random(i)))
          for i, d in enumerate(demo_corpus.documents())]
  out += [(f"rule:{name}", f"https://rules.example.com/{name}", text)
          for name, text in RULE_PAGES.items()]
  return out


def ours_clean(text, recipe, count_sentences):
  counters = collections.Counter()
  out = c4_rules.clean_page(text, recipe, count_sentences,
                            lambda name, amount=1: counters.update({name: amount}))
  return out, counters


def test_clean_page_equals_tfds_page_by_page(tfds, count_sentences, pages):
  recipe = c4_rules.Recipe()
  differ, seen, kept = [], collections.Counter(), 0
  for name, url, text in pages:
    theirs = tfds.clean_page(text, url)
    ours = ours_clean(text, recipe, count_sentences)
    if ours != theirs:
      differ.append((name, ours, theirs))
    seen.update(ours[1])
    kept += ours[0] is not None
  assert not differ, differ[:3]
  assert len(pages) > 1300 and 1000 < kept < len(pages)
  assert set(seen) == CLEAN_COUNTERS  # every rule was hit


def test_rule_pages_hit_their_rule(count_sentences):
  recipe = c4_rules.Recipe()
  result = {name: ours_clean(text, recipe, count_sentences) for name, text in RULE_PAGES.items()}
  assert result["lorem_page"][0] is None and result["lorem_page"][1]["filtered:loremipsum"] == 1
  assert result["lorem_line_without_end_mark"][0] is not None
  assert result["curly_bracket"][0] is None
  assert result["curly_bracket_no_end_mark"][0] is not None
  assert result["javascript_before_bracket"][0] is not None  # javascript goes before `{` is seen
  assert result["policy"][1]["line-filtered:policy"] == 6
  assert result["two_sentences"][1]["filtered:too_few_sentences"] == 1
  assert result["too_long_word"][1]["line-filtered:too_long_word"] == 1  # 1000 is allowed
  text = result["citations"][0].split("\n")
  assert text[0] == "This line ends with a citation mark."
  assert "A heading with more words here." in text[1]
  assert result["end_marks"][1]["line-filtered:no_endmark"] == 5  # ', :, ..., ...., …
  assert result["words"][1]["line-filtered:too_short"] == 2  # tab and nbsp separate words too


@pytest.mark.parametrize("kwargs,theirs", [
    (dict(min_words_per_line=3), dict(min_words_per_line=3)),
    (dict(min_sentences=5), dict(min_num_sentences=5)),
    (dict(max_word_length=8), dict(max_word_length=8)),
])
def test_reparameterised_clean_page_equals_tfds(tfds, count_sentences, pages, kwargs, theirs):
  """TFDS's clean_page takes these three constants as arguments: the same values, same pages."""
  recipe = c4_rules.Recipe(**kwargs)
  clean = tfds.c4_utils.get_clean_page_fn()
  for name, url, text in pages[::7]:
    counters = collections.Counter()
    out = list(clean(tfds.c4_utils.PageFeatures(url=url, text=text),
                     counter_inc_fn=lambda c, amt=1: counters.update({c: amt}), **theirs))
    assert ours_clean(text, recipe, count_sentences) == (
        out[0].text if out else None, counters), name


def test_each_clean_rule_switches_off(count_sentences):
  def kept(text, **kwargs):
    return ours_clean(text, c4_rules.Recipe(**kwargs), count_sentences)[0]
  assert kept(RULE_PAGES["lorem_page"], drop_lorem_ipsum=False).count("\n") == 2
  assert "{" in kept(RULE_PAGES["curly_bracket"], drop_curly_bracket_pages=False)
  assert "JavaScript" in kept(RULE_PAGES["javascript"], drop_javascript_lines=False)
  assert "terms of use" in kept(RULE_PAGES["policy"], policy_substrings=())
  assert "apostrophe'" in kept(RULE_PAGES["end_marks"], end_marks=(".", "'"))
  assert "ellipsis..." in kept(RULE_PAGES["end_marks"], drop_ellipsis=False)
  assert "colon here:" in kept(RULE_PAGES["end_marks"], end_marks=(), drop_ellipsis=False)
  assert "mark.[1]" in kept(RULE_PAGES["citations"], remove_citations=False, end_marks=())
  assert "x" * 1001 in kept(RULE_PAGES["too_long_word"], max_word_length=0)
  assert kept(RULE_PAGES["two_sentences"], min_sentences=0) is not None
  assert kept("One two.\nThree four.\nFive six.", min_words_per_line=0) is not None


def test_split_wet_file_equals_tfds(tfds, tmp_path, c4_sample):
  with gzip.open(c4_sample, "rt") as f:
    docs = [json.loads(line) for _, line in zip(range(60), f)]
  path = tmp_path / "a.warc.wet.gz"
  with open(path, "wb") as f:
    demo.write_wet(f, docs)
    # Edge records: no URL, no date, no content, WARC/Content- lines inside a body, blank lines.
    f.write(gzip.compress(b"WARC/1.0\r\nWARC-Type: conversion\r\nWARC-Date: 2019-04-25T00:00:00Z"
                          b"\r\nContent-Length: 5\r\n\r\nno url here at all\r\n\r\n"))
    f.write(gzip.compress(b"WARC/1.0\r\nWARC-Target-URI: http://nodate.example.com/\r\n\r\n"
                          b"no date for this page\r\n\r\n"))
    f.write(gzip.compress(b"WARC/1.0\r\nWARC-Target-URI: http://empty.example.com/\r\n"
                          b"WARC-Date: 2019-04-25T00:00:00Z\r\n\r\n\r\n\r\n"))
    f.write(gzip.compress(b"WARC/1.0\r\nWARC-Target-URI: https://www.body.example.com/x/?ref=a"
                          b"\r\nWARC-Date: 2019-04-26T00:00:00Z\r\nContent-Type: text/plain\r\n"
                          b"\r\n  first line  \r\nWARCRAFT is a game.\r\nContent-Free line.\r\n"
                          b"CONTENT-LENGTH: 3\r\n\tlast line\r\n"))
  theirs = list(tfds.c4_utils.split_wet_file(str(path)))
  their_counters = {k: v for k, v in tfds.counters.items() if k.startswith("split-wet-file/")}
  tfds.counters.clear()
  counters = collections.Counter()
  ours = list(wet.read_wet(str(path), lambda name, amount=1: counters.update(
      {f"split-wet-file/{name}": amount})))
  assert [vars(p) for p in ours] == [
      {k: v for k, v in vars(p).items() if k != "language"} for p in theirs]
  assert counters == their_counters
  assert len(ours) == 60 + 6 + 7 + 1  # documents, their older copies, rule pages, the last
  assert ours[-1].text == "first line\nlast line"
  assert ours[-1].normalized_url == "body.example.com/x"
  assert counters["split-wet-file/filtered:no_url"] == 2  # warcinfo + the edge record


def test_normalize_url_equals_tfds(tfds, pages):
  urls = [url for _, url, _ in pages] + [
      "https://www.x.com/a/?utm_source=feed", "http://x.com/?ref=abc", "http://x.com/p?feed=rss",
      "HTTPS://WWW.X.COM/", "x.com///", "https://www.www.x.com", "ftp://x.com/a?utm=1",
      "http://x.com/a?b=1&utm_source=2", "https://sub.www.x.com/"]
  assert [wet.normalize_url(u) for u in urls] == [tfds.c4_utils.normalize_url(u) for u in urls]


def test_length_filter_equals_tfds(tfds):
  for n in (0, 189_999, 190_000, 190_001):
    page = wet.Page(text="x" * n)
    assert wet.is_valid_length(page) == tfds.c4_utils.is_valid_length(
        tfds.c4_utils.PageFeatures(text="x" * n)), n
  assert not wet.is_valid_length(wet.Page(text="x" * 190_001))


def test_validation_split_is_c4s(c4_sample, c4_allenai_shard, tfds):
  """The C4 sample comes from C4 en's validation split: every page hashes to validation; the
  allenai/c4 train shard's pages to train."""
  predicate = tfds.c4_utils.get_hashed_url_filter_fn(lambda x: x % 1000 == 0)
  for path, expected in ((c4_sample, True), (c4_allenai_shard, False)):
    with gzip.open(path, "rt") as f:
      urls = [json.loads(line)["url"] for line in f]
    ours = [c4_rules.is_validation(wet.normalize_url(u)) for u in urls]
    assert ours == [expected] * len(urls)
    assert ours == [predicate(tfds.c4_utils.PageFeatures(normalized_url=wet.normalize_url(u)))
                    for u in urls]
  assert not c4_rules.is_validation("anything", modulus=0)


LANGUAGE_PAGES = [
    OK + " " + OK2, "1234 5678 9012", "", "   ", demo.GERMAN,
    "Le chat est sur la table et le chien dort dans le jardin. Il fait beau aujourd'hui.",
    "Hello. Bonjour. Hallo. Ciao.", "OK", "The quick brown fox jumps over the lazy dog.",
    "El perro come en la cocina y el gato duerme en el sofá toda la tarde.",
]


def test_langdetect_equals_tfds(tfds):
  detector = c4_rules.LanguageFilter("en", 0.99)
  seen = collections.Counter()
  for text in LANGUAGE_PAGES:
    counters = collections.Counter()
    keep = detector.keep(text, lambda name, amount=1: counters.update(
        {f"english-filter/{name}": amount}))
    assert (keep, counters) == tfds.detect_english(text), text
    seen.update(counters)
  assert {"english-filter/passed", "english-filter/filtered:langdetect_exception",
          "english-filter/filtered:ignored_language"} <= set(seen)


@pytest.mark.slow
def test_langdetect_equals_tfds_on_every_page(tfds, pages, count_sentences):
  """Every real page after C4's cleaning (as the pipeline meets them), through both detectors."""
  detector, recipe = c4_rules.LanguageFilter("en", 0.99), c4_rules.Recipe()
  decisions = collections.Counter()
  for name, _, text in pages:
    text = ours_clean(text, recipe, count_sentences)[0] or text
    counters = collections.Counter()
    keep = detector.keep(text, lambda n, amount=1: counters.update({f"english-filter/{n}": amount}))
    assert (keep, counters) == tfds.detect_english(text), name
    decisions[keep] += 1
  assert decisions[True] > 1000 and decisions[False] > 0


def test_badwords_equal_tfds(tfds, badwords_en, pages):
  words = c4_rules.read_badwords(str(badwords_en))
  assert len(words) == 377
  ours, theirs = c4_rules.BadWords(words, "en", 1.0), tfds.badwords_filter(words, 1.0)
  texts = [text for _, _, text in pages] + [
      "ass", "Ass.", "an assessment of the class", "(anal)", "analysis", "2 girls 1 cup",
      "two girls one cup", "He is a BASTARD!", "bastardo", "x" * 10 + " bdsm", "bdsmx"]
  decisions = collections.Counter()
  for i, text in enumerate(texts):
    url = f"example.com/{i}"
    theirs_keep = theirs(tfds.c4_utils.PageFeatures(text=text, normalized_url=url, language="en"))
    assert ours.keep(text, url) == theirs_keep, text[:80]
    decisions[theirs_keep] += 1
  assert decisions[False] >= 5 and decisions[True] > 1000


def test_soft_badwords_fraction_equals_tfds(tfds, badwords_en):
  """mC4's soft filter (0.999): which pages with a bad word stay is decided by URL hash."""
  words = c4_rules.read_badwords(str(badwords_en))
  ours, theirs = c4_rules.BadWords(words, "en", 0.999), tfds.badwords_filter(words, 0.999)
  counters = collections.Counter()
  for i in range(3000):
    url = f"site{i}.example.com/page"
    page = tfds.c4_utils.PageFeatures(text="what a bastard", normalized_url=url, language="en")
    assert ours.keep(page.text, url, lambda n, a=1: counters.update({n: a})) == theirs(page)
  assert counters["soft-passed"] >= 1 and counters["filtered"] > 2900


def test_unspaced_languages_match_inside_words():
  assert c4_rules.BadWords({"bad"}, "en").keep("notbadatall", "x")
  assert not c4_rules.BadWords({"bad"}, "en").keep("not bad at all", "x")
  assert not c4_rules.BadWords({"bad"}, "ja").keep("notbadatall", "x")
  assert not c4_rules.BadWords({"悪"}, "ja").keep("これは悪い", "x")
  assert c4_rules.BadWords({"sm", "性"}, "zh-Hans").keep("性别", "x")  # zh's allowlist
  assert not c4_rules.BadWords({"sm", "性"}, "zh-Hans").keep("asmb", "x")


def test_missing_assets_are_one_clear_line(tmp_path):
  with pytest.raises(FileNotFoundError, match="punkt_tab.*nltk.downloader punkt_tab"):
    c4_rules.load_sentence_tokenizer("no_such_language", [str(tmp_path)])
  with pytest.raises(FileNotFoundError, match=r"bad-words list .*missing.* not found.*curl"):
    c4_rules.read_badwords(str(tmp_path / "missing"))
  (tmp_path / "empty").write_text("\n\n")
  with pytest.raises(ValueError, match="is empty"):
    c4_rules.read_badwords(str(tmp_path / "empty"))
  with pytest.raises(ValueError, match="badwords_fraction"):
    c4_rules.Recipe(badwords_fraction=2.0)


def test_unreadable_files_are_named_before_any_page(tmp_path, c4_sample):
  with gzip.open(c4_sample, "rt") as f:
    docs = [json.loads(line) for _, line in zip(range(20), f)]
  buffer = io.BytesIO()
  demo.write_wet(buffer, docs)
  data = buffer.getvalue()
  cases = {"truncated.warc.wet.gz": data[:len(data) // 2],
           "garbage.warc.wet.gz": b"this is not gzip at all",
           "latin1.warc.wet.gz": gzip.compress(b"WARC/1.0\r\nWARC-Target-URI: http://x\r\n\r\ncaf\xe9\r\n"),
           "latin1.jsonl": b'{"text": "caf\xe9", "url": "http://x"}\n'}
  for name, content in cases.items():
    (tmp_path / name).write_bytes(content)
    pages = wet.read_pages(str(tmp_path / name))
    with pytest.raises(wet.UnreadableFile, match=name):
      next(pages)


def test_json_lines_need_text_and_url(tmp_path):
  path = tmp_path / "pages.jsonl"
  path.write_text(json.dumps({"text": "a", "url": "http://a", "date": "2019"}) + "\n\n"
                  + json.dumps({"content": "b", "url": "http://b"}) + "\n")
  pages = wet.read_jsonl(str(path), wet.JsonKeys(timestamp="date"))
  assert next(pages) == wet.Page(url="http://a", normalized_url="a", text="a", timestamp="2019")
  with pytest.raises(ValueError, match=r"pages.jsonl:3: expected a JSON object with a string 'text'"):
    next(pages)
  path.write_text(json.dumps({"text": "b"}) + "\n")
  with pytest.raises(ValueError, match=r"pages.jsonl:1: .*'url'"):
    list(wet.read_jsonl(str(path)))
  with pytest.raises(ValueError, match="expected a Common Crawl WET file"):
    wet.file_format("pages.parquet")
