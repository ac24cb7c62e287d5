"""C4's page rules, ported from TFDS `c4_utils.py` / `c4.py` (3.1.0), and the Recipe that switches
and sets each of them.

  clean_page        too-long words, citations, end marks and ellipsis, words per line, lorem ipsum
                    (page), javascript (line), `{` (page), policy lines, sentences per page
                    (NLTK Punkt), in TFDS's order with its constants and counter names
  LanguageFilter    langdetect with DetectorFactory.seed = 0, best guess `language` with
                    probability >= min_probability (TFDS detect_english)
  BadWords          the LDNOOBW page filter (TFDS get_badwords_filter_fn), hard or soft
  is_validation     md5(normalised URL) % 1000 == 0, TFDS's split

Every function counts what it does through `count(name, amount=1)` with TFDS's counter names,
so a build's report and TFDS's Beam counters read the same.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Callable, Optional, Sequence

import gin

from t5lite import files


Count = Callable[..., None]

CITATION_REGEX = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]")
POLICY_SUBSTRINGS = ("terms of use", "privacy policy", "cookie policy", "uses cookies",
                     "use of cookies", "use cookies")
# TFDS c4.py: words of these lists that are common subwords in languages written without spaces.
BADWORDS_ALLOWLIST = {"ja": {"sm", "グロ", "女の子"}, "zh": {"性"}}
UNSPACED_LANGUAGES = ("ja", "th", "zh")  # bad words match without word boundaries


def _no_count(name: str, amount: int = 1) -> None:
  del name, amount


@gin.configurable
@dataclasses.dataclass(frozen=True)
class Recipe:
  """Which of C4's rules a build applies, and their constants; the defaults are C4 `en` (TFDS
  c4/en 3.1.0). gin_configs/corpus/ has c4_en.gin, c4_en_noclean.gin, c4_en_noblocklist.gin.

  Reading: max_page_chars (pages longer are dropped; 0: no limit), dedup_urls (keep the newest
    page of each normalised URL).
  clean (False: none of the rules of clean_page, as en.noclean), then clean_page's rules in its
    order: max_word_length (a line with a longer word goes; 0: off), remove_citations
    ([1], [edit], [citation needed]), end_marks (a line must end with one; (): off),
    drop_ellipsis (a line ending '...' goes), min_words_per_line, drop_lorem_ipsum (page),
    drop_javascript_lines, drop_curly_bracket_pages, policy_substrings (a line with one goes),
    min_sentences (a page needs as many, counted by NLTK Punkt `sentence_model`).
  dedup_lines: each line (stripped, lower-cased) is kept in one page only; a page is then
    dropped below dedup_min_sentences sentences (TFDS: 3 when cleaning, 0 otherwise).
  language: keep pages langdetect calls this language (its code) with probability >=
    min_language_probability; '' keeps every page.
  badwords_fraction: share of the pages holding a word of the bad-words list that are dropped
    (1.0: all, C4; 0.999: mC4's soft filter, chosen by URL hash; 0: off, en.noblocklist).
  minhash: also drop near-duplicate pages (datatrove MinHash, word 5-grams, 14 buckets x 8).
  validation_modulus: pages with md5(normalised URL) % modulus == 0 form the validation split
    (0: no validation split).
  """
  max_page_chars: int = 190_000
  dedup_urls: bool = True
  clean: bool = True
  max_word_length: int = 1000
  remove_citations: bool = True
  end_marks: tuple[str, ...] = (".", "?", "!", '"')
  drop_ellipsis: bool = True
  min_words_per_line: int = 5
  drop_lorem_ipsum: bool = True
  drop_javascript_lines: bool = True
  drop_curly_bracket_pages: bool = True
  policy_substrings: tuple[str, ...] = POLICY_SUBSTRINGS
  min_sentences: int = 3
  sentence_model: str = "english"
  dedup_lines: bool = True
  dedup_min_sentences: int = 3
  language: str = "en"
  min_language_probability: float = 0.99
  badwords_fraction: float = 1.0
  minhash: bool = False
  validation_modulus: int = 1000

  def __post_init__(self):
    object.__setattr__(self, "end_marks", tuple(self.end_marks))
    object.__setattr__(self, "policy_substrings", tuple(self.policy_substrings))
    if not 0.0 <= self.badwords_fraction <= 1.0:
      raise ValueError(f"Recipe.badwords_fraction = {self.badwords_fraction}: expected a "
                       "fraction in [0, 1]")
    if not 0.0 <= self.min_language_probability <= 1.0:
      raise ValueError(f"Recipe.min_language_probability = {self.min_language_probability}: "
                       "expected a probability in [0, 1]")
    for name in ("max_page_chars", "max_word_length", "min_words_per_line", "min_sentences",
                 "dedup_min_sentences", "validation_modulus"):
      if getattr(self, name) < 0:
        raise ValueError(f"Recipe.{name} = {getattr(self, name)}: expected >= 0 (0: off)")

  def needs_sentences(self) -> bool:
    return (self.clean and self.min_sentences > 0) or (self.dedup_lines and
                                                       self.dedup_min_sentences > 0)

  def needs_badwords(self) -> bool:
    return self.badwords_fraction > 0.0

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


# ------------------------------------------------------------------------------ sentences


def load_sentence_tokenizer(model: str = "english", nltk_data: Sequence[str] = ()):
  """NLTK's Punkt sentence splitter `model` (punkt_tab form); FileNotFoundError saying how to get
  it when it is missing. nltk_data: folders searched first."""
  import nltk  # pylint: disable=g-import-not-at-top
  for path in reversed(list(nltk_data)):
    if path not in nltk.data.path:
      nltk.data.path.insert(0, path)
  try:
    return nltk.tokenize.PunktTokenizer(model)
  except (LookupError, OSError):
    raise FileNotFoundError(
        f"NLTK Punkt model {model!r} (tokenizers/punkt_tab/{model}/) not found in "
        f"{list(nltk.data.path)}: run `python -m nltk.downloader punkt_tab`, or pass --nltk_data "
        "DIR (a folder holding tokenizers/punkt_tab/)") from None


def sentence_counter(tokenizer) -> Callable[[str], int]:
  return lambda text: len(tokenizer.tokenize(text))


# ------------------------------------------------------------------------------ clean_page


def clean_page(text: str, recipe: Recipe, count_sentences: Callable[[str], int],
               count: Count = _no_count, line_delimiter: str = "\n") -> Optional[str]:
  """The cleaned text of a page, or None if the page is dropped (TFDS clean_page; counters of
  its `clean-page` namespace). Each rule is skipped where the recipe switches it off."""
  valid_lines = []
  num_sentences = 0
  end_marks, policy = recipe.end_marks, recipe.policy_substrings
  max_word, min_words = recipe.max_word_length, recipe.min_words_per_line
  for line in text.splitlines():
    line = line.strip()
    if max_word and any(len(word) > max_word for word in line.split()):
      count("line-filtered:too_long_word")
      continue
    if recipe.remove_citations:
      line = CITATION_REGEX.sub("", line)
    if ((end_marks and not line.endswith(end_marks)) or
        (recipe.drop_ellipsis and line.endswith("..."))):
      count("line-filtered:no_endmark")
      continue
    if len(line.split()) < min_words:
      count("line-filtered:too_short")
      continue
    line_lower = line.lower()
    if recipe.drop_lorem_ipsum and "lorem ipsum" in line_lower:
      count("filtered:loremipsum")
      return None
    if recipe.drop_javascript_lines and "javascript" in line_lower:
      count("line-filtered:javascript")
      continue
    if recipe.drop_curly_bracket_pages and "{" in line:
      count("filtered:squigglybracket")
      return None
    if policy and any(p in line_lower for p in policy):
      count("line-filtered:policy")
      continue
    if recipe.min_sentences:
      num_sentences += count_sentences(line)
    valid_lines.append(line)
    count("line-passed")
  if num_sentences < recipe.min_sentences:
    count("filtered:too_few_sentences")
    return None
  count("passed")
  return line_delimiter.join(valid_lines).strip()


# ------------------------------------------------------------------------------ language


class LanguageFilter:
  """langdetect's best guess must be `language` with probability >= min_probability (TFDS
  detect_english, generalised to any langdetect code); deterministic (seed 0, as TFDS)."""

  def __init__(self, language: str = "en", min_probability: float = 0.99):
    self.language = language
    self.min_probability = min_probability

  def keep(self, text: str, count: Count = _no_count) -> bool:
    import langdetect  # pylint: disable=g-import-not-at-top
    langdetect.DetectorFactory.seed = 0
    try:
      predictions = langdetect.detect_langs(text)
    except langdetect.lang_detect_exception.LangDetectException:
      count("filtered:langdetect_exception")
      return False
    if not predictions:
      count("filtered:no_predictions")
      return False
    best = predictions[0]
    if best.prob < self.min_probability:
      count("filtered:low_confidence")
      return False
    if best.lang != self.language:
      count("filtered:ignored_language")
      count(f"filtered:ignored_language-{best.lang}")
      return False
    count("passed")
    return True


# ------------------------------------------------------------------------------ bad words


EN_BADWORDS_URL = ("https://raw.githubusercontent.com/LDNOOBW/List-of-Dirty-Naughty-Obscene-and-"
                   "Otherwise-Bad-Words/25e679f03d96baa721cde20db9944649e8d0a844/en")


def read_badwords(path: str) -> set[str]:
  """The words of a bad-words file (one a line, stripped; blank lines ignored); FileNotFoundError
  saying how to get C4's list when it is missing."""
  if not files.exists(path):
    raise FileNotFoundError(
        f"bad-words list {path} not found: download C4's (LDNOOBW, commit 25e679f) with `curl -o "
        f"{path} {EN_BADWORDS_URL}`, pass --badwords FILE, or switch the filter off "
        "(--gin_file=corpus/c4_en_noblocklist.gin)")
  words = {line.strip() for line in files.read_text(path).splitlines()}
  words.discard("")
  if not words:
    raise ValueError(f"bad-words list {path} is empty: expected one word or phrase a line")
  return words


def url_hash(normalized_url: str) -> int:
  """TFDS _hashed_url_filter_fn's value: md5 of the normalised URL as an integer."""
  return int(hashlib.md5(normalized_url.encode("utf-8")).hexdigest(), 16)


class BadWords:
  """Drops pages holding a listed word (TFDS get_badwords_filter_fn for one language): words
  matched in the lower-cased text between non-word characters (anywhere for ja / th / zh); with
  fraction < 1 a page is kept anyway when md5(normalised URL) % denominator >= numerator."""

  def __init__(self, words: set[str], language: str = "en", fraction: float = 1.0):
    language = language.split("-")[0]
    words = sorted(set(words) - BADWORDS_ALLOWLIST.get(language, set()))
    alternatives = "|".join(re.escape(w) for w in words)
    self.regex = (re.compile(alternatives) if language in UNSPACED_LANGUAGES
                  else re.compile(r"(?:\W|^)({})(?:\W|$)".format(alternatives)))
    self.numerator, self.denominator = float.as_integer_ratio(float(fraction))

  def keep(self, text: str, normalized_url: str, count: Count = _no_count) -> bool:
    if self.regex.search(text.lower()) is None:
      count("passed")
      return True
    if url_hash(normalized_url) % self.denominator >= self.numerator:
      count("soft-passed")
      return True
    count("filtered")
    return False


def is_validation(normalized_url: str, modulus: int = 1000) -> bool:
  """TFDS's split: validation iff md5(normalised URL) % 1000 == 0 (no validation for 0)."""
  return bool(modulus) and url_hash(normalized_url) % modulus == 0
