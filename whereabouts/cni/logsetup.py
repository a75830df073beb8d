"""Logging for the plugin: to ``log_file`` or stderr, never stdout (stdout is the result)."""

from __future__ import annotations

import logging
import sys
from typing import Optional

LEVELS = {
    "debug": logging.DEBUG,
    "verbose": logging.INFO,
    "info": logging.INFO,
    "error": logging.ERROR,
    "panic": logging.CRITICAL,
}


def configure(level: str = "error", log_file: Optional[str] = None) -> None:
    root = logging.getLogger("whereabouts")
    root.setLevel(LEVELS.get(level, logging.ERROR))
    for old in list(root.handlers):
        root.removeHandler(old)
    handler: logging.Handler
    if log_file:
        try:
            handler = logging.FileHandler(log_file)
        except OSError as exc:
            sys.stderr.write(f"whereabouts: cannot open log_file {log_file}: {exc}\n")
            handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s [%(levelname)s] %(process)d %(message)s")
    )
    root.addHandler(handler)
    root.propagate = False
