"""Bad input as one clear line: which exceptions mean "the input is wrong", and their message.

The `t5lite` command prints `one_line(e)` and exits 2 (or the exception's `exit_code`) instead of
a traceback; an exception this returns None for is a bug, and keeps its traceback.
"""
from __future__ import annotations

import re
from typing import Optional

# Python exceptions raised inside tf.data (py_function, from_generator) reach the caller as a
# tf.errors.OpError whose message holds "<Name>Error: <message>" among traceback lines.
_WRAPPED = re.compile(r"^(?:\w+\.)*(\w*(?:Error|Exception)): (.+)$")
_GIN_CONTEXT = "In call to configurable"  # gin appends where a configurable failed: noise here
_BAD_INPUT = (ValueError, LookupError, OSError, RuntimeError, SyntaxError, ImportError)


def _tf_message(e: Exception) -> Optional[str]:
  """The useful line of a tf.errors.OpError: a wrapped Python error's, else the first line."""
  if not type(e).__module__.startswith("tensorflow"):
    return None
  message = getattr(e, "message", str(e))
  wrapped = [m for m in (_WRAPPED.match(line.strip()) for line in message.splitlines()) if m]
  if wrapped:
    return wrapped[-1].group(2)
  lines = [line.strip() for line in message.splitlines() if line.strip()]
  return lines[0] if lines else type(e).__name__


def one_line(e: BaseException) -> Optional[str]:
  """A one-line message for bad input; None for anything else (a bug)."""
  message = _tf_message(e) if isinstance(e, Exception) else None
  if message is None:
    if not isinstance(e, _BAD_INPUT) or isinstance(e, RecursionError):
      return None
    message = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    if isinstance(e, OSError) and e.filename and str(e.filename) not in message:
      message = f"{e.filename}: {message}"
  lines = [line.strip() for line in message.splitlines() if line.strip()
           and not line.strip().startswith(_GIN_CONTEXT)]
  message = " ".join(lines)
  return message or type(e).__name__
