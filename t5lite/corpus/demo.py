"""A Common Crawl-like WET file of real documents dressed as web pages, for the demo and the tests.

Each document becomes a page: its paragraphs unwrapped into one line each (as an HTML extractor
gives them), between the boilerplate C4's rules exist for: navigation, a javascript notice, a
cookie banner, a footer every page of a site repeats, citation marks. Beside them, pages that a
rule drops whole: an older copy of a page at the same URL (http://www. variant), a lorem ipsum
page, a page of code with `{`, a page in German, a page with a word of the bad-words list, a
page too long, a page too short, and a page syndicating another's paragraphs. The records are
gzip members, one per record, as Common Crawl writes WET files.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import random
import re
from typing import Iterable, Iterator, Mapping

CRAWL_DATE = "2019-04-25T00:00:00Z"
SITE_FOOTER = "Copyright 2019 The Example Publishing Company. All rights reserved."
NAVIGATION = ("Home | News | About | Contact", "Skip to main content", "Menu", "Search")
JAVASCRIPT_NOTICE = "Please enable JavaScript in your browser to view this site properly."
COOKIE_BANNER = ("This website uses cookies to improve your experience. By continuing to browse "
                 "you agree to our use of cookies.")
POLICY_LINE = "Read our Privacy Policy and Terms of Use before you post a comment."
SHARE_LINES = ("Share this:", "Facebook", "Twitter", "Read more...", "Related posts")
GERMAN = ("Die Stadt liegt am Ufer eines großen Flusses und ist für ihre alten Brücken bekannt. "
          "Jedes Jahr besuchen viele Menschen die Altstadt, um die Kirchen und Museen zu sehen. "
          "Im Sommer finden auf dem Marktplatz zahlreiche Konzerte und Feste statt. Die Bewohner "
          "sind stolz auf ihre Geschichte und pflegen die Traditionen ihrer Vorfahren.")
END_OF_PARAGRAPH = (".", "!", "?", '"', ":")
BADWORD_PAGE = ("The review of the new novel appeared in the Sunday paper last week.",
                "Most critics praised the careful plot and the vivid characters.",
                "Some readers called the author a {} for writing it.",
                "The publisher expects a second printing before the summer.")
LOREM = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor "
         "incididunt ut labore et dolore magna aliqua.")


def paragraphs(text: str) -> list[str]:
  """A document's paragraphs, each on one line: a line is joined to the next unless it ends a
  sentence (hard-wrapped text) or a blank line follows."""
  out: list[str] = []
  for block in re.split(r"\n\s*\n", text):
    current: list[str] = []
    for line in block.splitlines():
      line = line.strip()
      if line:
        current.append(line)
        if line.endswith(END_OF_PARAGRAPH):
          out.append(" ".join(current))
          current = []
    if current:
      out.append(" ".join(current))
  return out


def _record(headers: Mapping[str, str], body: str) -> bytes:
  payload = body.encode("utf-8")
  head = "WARC/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
  head += f"Content-Length: {len(payload)}\r\n\r\n"
  return gzip.compress(head.encode("utf-8") + payload + b"\r\n\r\n", mtime=0)


def _conversion(url: str, date: str, body: str) -> bytes:
  digest = hashlib.sha1(f"{url} {date}".encode()).hexdigest()
  return _record({"WARC-Type": "conversion", "WARC-Target-URI": url, "WARC-Date": date,
                  "WARC-Record-ID": f"<urn:uuid:{digest[:8]}-{digest[8:12]}-{digest[12:16]}-"
                                    f"{digest[16:20]}-{digest[20:32]}>",
                  "WARC-Block-Digest": f"sha1:{digest.upper()}",
                  "Content-Type": "text/plain"}, body)


def web_page(document: Mapping[str, str], rng: random.Random) -> str:
  """A document as a crawled page's text: boilerplate around its unwrapped paragraphs."""
  lines = list(NAVIGATION[:rng.randint(1, len(NAVIGATION))])
  body = paragraphs(document["text"])
  if body and rng.random() < 0.3:  # a citation mark that C4 removes
    body[0] = body[0] + "[1]"
  lines += body
  if rng.random() < 0.5:
    lines.append(JAVASCRIPT_NOTICE)
  if rng.random() < 0.5:
    lines.append(COOKIE_BANNER)
  lines += list(SHARE_LINES[:rng.randint(0, len(SHARE_LINES))])
  lines.append(SITE_FOOTER)
  if rng.random() < 0.3:
    lines.append(POLICY_LINE)
  return "\n".join(lines)


def pages(documents: Iterable[Mapping[str, str]], seed: int = 0,
          badword: str = "bastard") -> Iterator[tuple[str, str, str]]:
  """(url, date, text) of every page: the documents' pages, their older copies, the pages a rule
  drops whole. `badword`: a word of the bad-words list for the page that holds one."""
  rng = random.Random(seed)
  documents = [d for d in documents if d.get("text")]
  for i, doc in enumerate(documents):
    date = doc.get("timestamp") or doc.get("date") or CRAWL_DATE
    url = doc["url"]
    if i % 10 == 3:  # an older crawl of the same page under another spelling of its URL
      old = re.sub(r"^https?://(www\.)?", "http://www.", url)
      yield old, "2018-01-01T00:00:00Z", web_page(doc, rng) + "\nThis is the old version."
    yield url, date, web_page(doc, rng)
  first = documents[0] if documents else {"text": "An example. Of text. With sentences."}
  specials = [
      ("lorem", web_page({"text": LOREM + "\n\n" + first["text"]}, rng)),
      ("code", "How to configure the server in a few easy steps.\n"
               'The settings object looks like {"port": 8080, "debug": true} in the file.\n'
               "Restart the server after you change the settings. It reads them at start."),
      ("german", "\n".join([GERMAN] * 3)),
      ("badword", "\n".join(BADWORD_PAGE).format(badword)),
      ("too-long", "\n".join(["This sentence is repeated to make a very long page indeed."]
                             * 4000)),
      ("too-short", "Welcome to my homepage.\nUnder construction."),
      ("syndicated", "\n".join(paragraphs(first["text"]))),
  ]
  for name, text in specials:
    yield f"https://spam.example.com/{name}", CRAWL_DATE, text


def write_wet(path_or_file, documents: Iterable[Mapping[str, str]], seed: int = 0,
              badword: str = "bastard") -> int:
  """Writes the WET file (a warcinfo record, then one conversion record a page); returns the
  number of pages. path_or_file: a local path or a binary file object."""
  data = io.BytesIO()
  data.write(_record({"WARC-Type": "warcinfo", "WARC-Date": CRAWL_DATE,
                      "WARC-Filename": "CC-MAIN-t5lite-demo.warc.wet.gz",
                      "Content-Type": "application/warc-fields"},
                     "Software-Info: t5lite corpus demo\r\nisPartOf: CC-MAIN-2019-18\r\n"))
  count = 0
  for url, date, text in pages(documents, seed, badword):
    data.write(_conversion(url, date, text))
    count += 1
  if hasattr(path_or_file, "write"):
    path_or_file.write(data.getvalue())
  else:
    with open(path_or_file, "wb") as f:
      f.write(data.getvalue())
  return count
