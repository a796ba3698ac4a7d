"""What every command line of ours shares: a one-line ``error: ...`` on bad input, and the value checks behind it.

``pipeline.prepare``, ``pipeline.digits``, ``trainer`` and ``evaluation`` all build on these, so that a bad flag
reads the same everywhere: one line on stderr, exit code 2, before any data is read or any Ray process starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any, NoReturn
from urllib.parse import urlsplit


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line (usage would list every flag): ``error: <message> (see <prog> --help)``."""

    def error(self, message: str) -> NoReturn:
        """Print the one-line error and exit with code 2, as argparse does."""
        self.exit(2, f"error: {' '.join(message.split())} (see {self.prog} --help)\n")


def check_finite(config: Any) -> None:
    """Raise a one-line ValueError naming the first float field of a dataclass that holds NaN or an infinity.

    Comparisons with NaN are all false and infinity passes every "positive" check, so range checks alone let both
    through to fail much later (an ``int(inf)`` in a worker); this runs before them.
    """
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"bad {f.name} {v!r}: expected a finite number")


def check_http_url(name: str, url: str | None) -> None:
    """Raise a one-line ValueError unless ``url`` is None or an ``http://`` / ``https://`` URL with a host."""
    try:
        parts = urlsplit(url) if url is not None else None
        ok = parts is None or (parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0)
    except ValueError:  # a port that is not a number, an unbalanced IPv6 bracket
        ok = False
    if not ok:
        raise ValueError(f"bad {name} {url!r}: expected an http:// or https:// URL, e.g. http://127.0.0.1:9000")
