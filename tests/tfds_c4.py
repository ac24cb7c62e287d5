"""TFDS's own C4 code, the reference of t5lite corpus's tests: its `c4_utils` with the sentence
tokenizer pointed at the shared Punkt model, every Beam counter captured, and `c4.py`'s order of
steps for c4/en run over the pages of WET files without Beam."""
from __future__ import annotations

import collections
import contextlib


class Reference:
  """c4_utils with counters routed to `self.counters` ("namespace/counter" -> count)."""

  def __init__(self, c4_utils):
    self.c4_utils = c4_utils
    self.counters = collections.Counter()

  def counter_fn(self, namespace: str):
    def inc(counter, amt=1):
      self.counters[f"{namespace}/{counter}"] += amt
    return inc

  def clean_page(self, text: str, url: str = "http://example.com"):
    """(cleaned text or None, this page's clean-page counters)."""
    counters = collections.Counter()
    page = self.c4_utils.PageFeatures(url=url, normalized_url=self.c4_utils.normalize_url(url),
                                      text=text)
    out = list(self.c4_utils.get_clean_page_fn()(
        page, counter_inc_fn=lambda c, amt=1: counters.update({c: amt})))
    return (out[0].text if out else None), counters

  def detect_english(self, text: str):
    """(kept, this page's english-filter counters)."""
    before = collections.Counter(self.counters)
    out = list(self.c4_utils.detect_english(self.c4_utils.PageFeatures(text=text)))
    return bool(out), self.counters - before

  def badwords_filter(self, words, fraction: float = 1.0):
    return self.c4_utils.get_badwords_filter_fn({"en": set(words)}, filter_fraction=fraction)

  def build_en(self, wet_paths, badwords) -> dict[str, dict[str, str]]:
    """c4/en (c4.py _get_pages_pcollection + _split_generators) over the WET files' pages, in
    file order: {split: {url: text}}; counters in self.counters."""
    c4 = self.c4_utils
    pages = [p for path in wet_paths for p in c4.split_wet_file(str(path))]
    pages = [p for p in pages if c4.is_valid_length(p)]
    by_url = {}
    for p in pages:  # beam.CombinePerKey(select_newest_page), groups in reading order
      by_url.setdefault(p.normalized_url, []).append(p)
    pages = [c4.select_newest_page(group) for group in by_url.values()]
    pages = [q for p in pages for q in c4.get_clean_page_fn()(p)]
    pages = self._remove_duplicate_text(pages)
    pages = [q for p in pages for q in c4.detect_english(p)]
    keep = c4.get_badwords_filter_fn({"en": set(badwords)}, filter_fraction=1.0)
    pages = [p for p in pages if keep(p)]
    is_validation = c4.get_hashed_url_filter_fn(lambda x: x % 1000 == 0)
    out = {"train": {}, "validation": {}}
    for p in pages:
      split = "validation" if is_validation(p) else "train"
      self.counters[f"{split}/examples"] += 1
      out[split][p.url] = p.text
    return out

  def _remove_duplicate_text(self, pages):
    """c4_utils.remove_duplicate_text without Beam: Top.PerKey(1, key=_hash_text, reverse=True)
    is the URL of smallest md5 per line, then _remove_lines_from_text per page."""
    c4 = self.c4_utils
    winner = {}
    for page in pages:
      for line_hash, url in c4._emit_url_to_lines(page):  # pylint: disable=protected-access
        if line_hash not in winner or c4._hash_text(url) < c4._hash_text(winner[line_hash]):  # pylint: disable=protected-access
          winner[line_hash] = url
    lines = collections.defaultdict(list)
    for line_hash, url in winner.items():
      lines[url].append(line_hash)
    inc = self.counter_fn("dedupe-lines")
    return [q for p in pages for q in c4._remove_lines_from_text(  # pylint: disable=protected-access
        (p.url, {"pages": [p], "lines": lines[p.url]}), counter_inc_fn=inc,
        min_num_sentences=3)]


@contextlib.contextmanager
def reference(nltk_data):
  """A Reference; c4_utils's Beam counters and sentence tokenizer patched meanwhile."""
  import nltk  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.text import c4_utils  # pylint: disable=g-import-not-at-top
  nltk.data.path.insert(0, str(nltk_data))
  ref = Reference(c4_utils)
  saved = c4_utils.get_counter_inc_fn, c4_utils._SENTENCE_TOKENIZER  # pylint: disable=protected-access
  c4_utils.get_counter_inc_fn = ref.counter_fn
  c4_utils._SENTENCE_TOKENIZER = nltk.tokenize.PunktTokenizer("english")  # pylint: disable=protected-access
  try:
    yield ref
  finally:
    c4_utils.get_counter_inc_fn, c4_utils._SENTENCE_TOKENIZER = saved  # pylint: disable=protected-access
