"""The job's log file: every line the job prints, and the log records, with absl's levels.

    log = joblog.JobLog()
    log.say("[baseline] task 5/20 ...")          # stdout, and the file at level INFO
    log.attach(os.path.join(workdir, "log.txt"))  # once the workdir is known
    log.warn("warning: ...")                      # stderr, and the file at WARNING
    log.close()

A line said before `attach` is kept and written when the file opens, so the
file holds the job's output from its first line; `discard` drops them (a
process that writes no results). Once attached, the file also receives the
log records of absl and Python's ``logging`` (JAX's, orbax's, this package's
``absl.logging.info``) exactly as stderr does: those at or above absl's
``--verbosity`` (WARNING by default; ``-v 0`` adds INFO, ``-v 1`` DEBUG).

Every line of the file starts with absl's prefix (its level letter I, W, E,
the date and time, the thread and the source line), then the text::

  I0521 14:03:11.482913 140213 runner.py:262] [baseline] task 5/20  train_accuracy ...

The file is appended to, so a resumed job's log follows the first run's.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

from absl import logging as absl_logging

LOG_FILE = "log.txt"


class AbslFormatter(logging.Formatter):
  """A record as absl writes it: ``absl.logging.get_absl_log_prefix`` then the
  message (the prefix on every line, INFO included)."""

  def format(self, record: logging.LogRecord) -> str:
    return absl_logging.get_absl_log_prefix(record) + super().format(record)


class JobLog:
  """Prints the job's lines and writes them, with the log records, to a file."""

  def __init__(self, stdout: TextIO | None = None, stderr: TextIO | None = None):
    self._stdout, self._stderr = stdout, stderr
    self._handler: logging.FileHandler | None = None
    self._pending: list[logging.LogRecord] = []
    self._discarded = False
    self.path: str | None = None

  def __enter__(self) -> "JobLog":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def say(self, line: str) -> None:
    """Prints `line` on stdout and records it at INFO."""
    print(line, file=self._stdout or sys.stdout, flush=True)
    self.record(logging.INFO, line, depth=2)

  def warn(self, line: str) -> None:
    """Prints `line` on stderr and records it at WARNING."""
    print(line, file=self._stderr or sys.stderr, flush=True)
    self.record(logging.WARNING, line, depth=2)

  def record(self, level: int, text: str, depth: int = 1) -> None:
    """Writes `text` (each of its lines) to the file at `level`, whatever the
    verbosity, without printing it (kept until `attach` if none is open yet).
    `depth`: how many calls up the source line named in the prefix is."""
    if self._discarded:
      return
    frame = sys._getframe(depth)  # pylint: disable=protected-access
    for line in text.splitlines() or [""]:
      record = logging.LogRecord("plastix", level, frame.f_code.co_filename, frame.f_lineno,
                                 line, None, None, frame.f_code.co_name)
      if self._handler is None:
        self._pending.append(record)
      else:
        self._handler.handle(record)

  def attach(self, path: str) -> None:
    """Opens `path` for appending, writes the lines kept so far, and from now on
    every line and every log record that passes the verbosity."""
    if self._handler is not None:
      if os.path.abspath(path) == os.path.abspath(self.path):
        return
      self.close()
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(AbslFormatter())
    handler.setLevel(logging.NOTSET)
    for record in self._pending:
      handler.handle(record)
    self._pending = []
    logging.root.addHandler(handler)
    self._handler, self.path, self._discarded = handler, path, False

  def discard(self) -> None:
    """Drops the lines kept so far and records nothing more (the other
    processes of a multi-process job, which write no results)."""
    self.close()
    self._pending, self._discarded = [], True

  def close(self) -> None:
    """Stops writing to the file (lines said afterwards are kept for a next `attach`)."""
    if self._handler is not None:
      logging.root.removeHandler(self._handler)
      self._handler.close()
      self._handler = None
