"""Reading a command's console output as a person does: whose lines they are, and whether one looks like a failure.

Ray forwards a worker's lines with a ``(RayTrainWorker pid=N)`` prefix (colour codes on a terminal): such a line is
ours when what follows the prefix is. ``ours`` knows verydeep's own line shapes; everything else (Ray's and MLflow's
logs, progress-bar leftovers) is not ours.
"""

from __future__ import annotations

import re

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
RAY_PREFIX = re.compile(r"^\((?:\w+ )?pid=\d+(?:, ip=[\d.]+)?\)\s*")
OURS = re.compile(
    r"^(== |\$ |digits: |planned \d+ shards|ray: |\[\d+/\d+\] |done: |model: |MLflow: |epoch \d+/\d+ |resumed at |"
    r"initialised |sweep: |report: |### |\||demo finished|\S*mlflow ui |then browse |skipped |note: |"
    r"[\w.-]+: VGG-|ladder |WARNING: MLflow tracking stopped)")
# What reads as a failure: an error level or code, a traceback, an exception's name.
ERROR = re.compile(r"\bERROR\b|\berror\b|Traceback|Exception|\bE\d{4} |^\[\S+ E \d+|\] E \d+ | E \d+ \d+\] |Failed")


def plain(line: str) -> str:
    """The line without colour codes, carriage-return redraws and Ray's process prefix."""
    text = ANSI.sub("", line).split("\r")[-1].strip()
    return RAY_PREFIX.sub("", text)


def ours(line: str) -> bool:
    """Whether the line is one of verydeep's own (an empty line between the demo's stages included)."""
    return line == "" or bool(OURS.match(plain(line)))


def looks_like_error(line: str) -> bool:
    """Whether a person would read the line as something having failed."""
    return bool(ERROR.search(plain(line)))
