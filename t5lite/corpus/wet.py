"""Reading raw pages: Common Crawl WET files and JSON lines, local or gs://.

WET files are split into pages exactly as TFDS's `c4_utils.split_wet_file` does (lines stripped,
empty lines and `WARC*` / `Content-*` / `CONTENT-*` lines dropped, a page needs a URL, text and a
date) and URLs normalised as its `normalize_url`. JSON lines give `text`, `url` and an optional
`timestamp` (the key names are settable); their text is taken as it is.

A file is checked whole (gzip stream, UTF-8) before its first page is given out, so a truncated
or unreadable file is skipped as a whole (`UnreadableFile`), never half-read. A JSON line
without text or URL is bad input (ValueError naming file and line).
"""
from __future__ import annotations

import codecs
import dataclasses
import gzip
import io
import json
import re
import zlib
from typing import Callable, Iterable, Iterator, Optional

from t5lite import files


# TFDS c4_utils's WET constants.
PAGE_DELIMITER = "WARC/1.0"
URL_KEY = "WARC-Target-URI:"
URL_DATE = "WARC-Date:"
CONTENT_TYPE = "Content-Type:"
CONTENT_LEN = "Content-Length:"
METADATA_PREFIXES = ("WARC", "CONTENT-", "Content-")
MAX_PAGE_CHARS = 190_000  # TFDS is_valid_length's max_length (1.9e5)

WET_SUFFIXES = (".wet.gz", ".wet")
JSONL_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")

Count = Callable[..., None]  # count(name, amount=1), TFDS's counter_inc_fn


def _no_count(name: str, amount: int = 1) -> None:
  del name, amount


@dataclasses.dataclass
class Page:
  """One page (TFDS's PageFeatures, less the language, which c4_rules decides)."""
  url: str = ""
  normalized_url: str = ""
  text: str = ""
  timestamp: str = ""
  content_length: str = ""
  content_type: str = ""


class UnreadableFile(ValueError):
  """An input file that cannot be read whole (truncated or corrupt gzip, not UTF-8)."""


def normalize_url(url: str) -> str:
  """TFDS's normalize_url: no scheme or `www.`, no utm_/ref/feed query, no trailing slash."""
  url = re.sub(r"https?:\/\/(www\.)?", "", url)
  url = re.sub(r"\?(utm_|ref|feed).*", "", url)
  return url.rstrip("/")


def file_format(path: str) -> str:
  """'wet' or 'jsonl' from a file name; ValueError for anything else."""
  name = path.lower()
  if name.endswith(WET_SUFFIXES):
    return "wet"
  if name.endswith(JSONL_SUFFIXES):
    return "jsonl"
  raise ValueError(f"{path}: expected a Common Crawl WET file (*.warc.wet.gz) or JSON lines "
                   f"(*.json, *.jsonl, optionally .gz)")


def split_wet_lines(lines: Iterable[str], count: Count = _no_count,
                    line_delimiter: str = "\n") -> Iterator[Page]:
  """The pages of a WET file's text lines (TFDS's split_wet_file after its file opening; `lines`
  as io.TextIOWrapper gives them). Counters as TFDS's `split-wet-file` namespace."""
  count("wet-file")

  def valid(page: Page) -> bool:
    if not page.url:
      count("filtered:no_url")
    elif not page.text:
      count("filtered:no_content")
    elif not page.timestamp:
      count("filtered:no_timestamp")
    else:
      count("passed")
      return True
    return False

  page = Page()
  parts: list[str] = []  # page.text as parts (TFDS appends to a string)
  for i, line in enumerate(lines):
    line = line.strip()
    if not line:
      continue
    if line == PAGE_DELIMITER:
      page.text = line_delimiter.join(parts)
      if i > 0 and valid(page):
        yield page
      page, parts = Page(), []
    if line.startswith(URL_KEY):
      page.url = line[len(URL_KEY):].strip()
      page.normalized_url = normalize_url(page.url)
    if line.startswith(URL_DATE):
      page.timestamp = line[len(URL_DATE):].strip()
    if line.startswith(CONTENT_TYPE):
      page.content_type = line[len(CONTENT_TYPE):].strip()
    if line.startswith(CONTENT_LEN):
      page.content_length = line[len(CONTENT_LEN):].strip()
    if line.startswith(METADATA_PREFIXES):
      continue
    parts.append(line)
  page.text = line_delimiter.join(parts)
  if valid(page):
    yield page


def _is_gzip(path: str) -> bool:
  return path.lower().endswith(".gz")


def _check_whole(path: str, raw: Optional[bytes]) -> None:
  """Reads the file through (gunzip, strict UTF-8) and raises UnreadableFile if it cannot."""
  decoder = codecs.getincrementaldecoder("utf-8")()
  try:
    with _binary_stream(path, raw) as f:
      while True:
        chunk = f.read(1 << 20)
        if not chunk:
          break
        decoder.decode(chunk)
      decoder.decode(b"", final=True)
  except (EOFError, gzip.BadGzipFile, zlib.error) as e:
    raise UnreadableFile(f"{path}: not a complete gzip file ({e})") from None
  except UnicodeDecodeError as e:
    raise UnreadableFile(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
  except OSError as e:
    raise UnreadableFile(f"{path}: cannot be read ({e})") from None


def _binary_stream(path: str, raw: Optional[bytes]):
  f = io.BytesIO(raw) if raw is not None else files.open_file(path, "rb")
  return gzip.GzipFile(fileobj=f) if _is_gzip(path) else f


def _checked_text_lines(path: str) -> Iterator[str]:
  """The file's text lines (universal newlines, as TFDS's TextIOWrapper) once the whole file has
  been checked; remote files are read once into memory, local ones twice from disk."""
  raw = None
  if files.is_remote(path):
    try:
      with files.open_file(path, "rb") as f:
        raw = f.read()
    except Exception as e:  # pylint: disable=broad-except  (gfile raises its own error types)
      raise UnreadableFile(f"{path}: cannot be read ({e})") from None
  _check_whole(path, raw)
  with _binary_stream(path, raw) as f:
    yield from io.TextIOWrapper(f, encoding="utf-8")


def read_wet(path: str, count: Count = _no_count) -> Iterator[Page]:
  """The pages of one WET file (UnreadableFile before any page if it cannot be read whole)."""
  return split_wet_lines(_checked_text_lines(path), count)


@dataclasses.dataclass(frozen=True)
class JsonKeys:
  text: str = "text"
  url: str = "url"
  timestamp: str = "timestamp"  # optional in every line


def read_jsonl(path: str, keys: JsonKeys = JsonKeys(), count: Count = _no_count
               ) -> Iterator[Page]:
  """The pages of one JSON-lines file; ValueError naming file and line for a line that is not a
  JSON object with a text and a URL. Pages with empty text count as filtered:no_content."""
  for number, line in enumerate(_checked_text_lines(path), 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:{number}: not a JSON line ({e.msg})") from None
    if not isinstance(record, dict) or not isinstance(record.get(keys.text), str):
      raise ValueError(f"{path}:{number}: expected a JSON object with a string {keys.text!r} "
                       f"(the page text; --text_key names another key)")
    url = record.get(keys.url)
    if not isinstance(url, str) or not url:
      raise ValueError(f"{path}:{number}: expected a non-empty string {keys.url!r} (the page URL; "
                       "--url_key names another key)")
    timestamp = record.get(keys.timestamp) or ""
    if not record[keys.text]:
      count("filtered:no_content")
      continue
    count("passed")
    yield Page(url=url, normalized_url=normalize_url(url), text=record[keys.text],
               timestamp=str(timestamp))


def read_pages(path: str, keys: JsonKeys = JsonKeys(), count: Count = _no_count
               ) -> Iterator[Page]:
  """The pages of a WET or JSON-lines file (by its name)."""
  if file_format(path) == "wet":
    return read_wet(path, count)
  return read_jsonl(path, keys, count)


def is_valid_length(page: Page, max_chars: int = MAX_PAGE_CHARS, count: Count = _no_count
                    ) -> bool:
  """TFDS's is_valid_length: False iff the text is longer than max_chars."""
  if len(page.text) > max_chars:
    count("filtered")
    return False
  count("passed")
  return True
