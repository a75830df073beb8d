"""Logging for code that runs on the CNI exec path, without importing ``logging``.

``import logging`` costs several milliseconds (it pulls in traceback, threading,
string, weakref), paid on every pod attachment. The plugin process therefore writes
its few log lines itself. In a process that configured the standard ``logging``
module (the controllers, the installer, tests) every call is forwarded to it, so
one set of log calls serves both.
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Any, Optional

DEBUG, INFO, WARNING, ERROR, CRITICAL = 10, 20, 30, 40, 50
_NAMES = {DEBUG: "DEBUG", INFO: "INFO", WARNING: "WARNING", ERROR: "ERROR", CRITICAL: "CRITICAL"}
LEVELS = {"debug": DEBUG, "verbose": INFO, "info": INFO, "warning": WARNING, "error": ERROR,
          "panic": CRITICAL}

_state: dict[str, Any] = {"native": False, "level": ERROR, "stream": None}


def configure(level: str = "error", log_file: Optional[str] = None) -> None:
    """Write this process's log lines to ``log_file`` (appended) or stderr, never stdout."""
    reset()
    stream: Optional[IO[str]] = None
    if log_file:
        try:
            stream = open(log_file, "a", encoding="utf-8")  # noqa: SIM115 - closed by reset()
        except OSError as exc:
            sys.stderr.write(f"whereabouts: cannot open log_file {log_file}: {exc}\n")
    _state.update(native=True, level=LEVELS.get(level, ERROR), stream=stream)


def reset() -> None:
    """Back to forwarding (or stderr at ERROR); closes a log file ``configure`` opened."""
    stream = _state.get("stream")
    if stream is not None:
        stream.close()
    _state.update(native=False, level=ERROR, stream=None)


class Logger:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def debug(self, msg: str, *args: object) -> None:
        _emit(self.name, DEBUG, msg, args)

    def info(self, msg: str, *args: object) -> None:
        _emit(self.name, INFO, msg, args)

    def warning(self, msg: str, *args: object) -> None:
        _emit(self.name, WARNING, msg, args)

    def error(self, msg: str, *args: object) -> None:
        _emit(self.name, ERROR, msg, args)

    def exception(self, msg: str, *args: object) -> None:
        _emit(self.name, ERROR, msg, args, with_traceback=True)


def get(name: str) -> Logger:
    return Logger(name)


def _emit(name: str, level: int, msg: str, args: tuple[object, ...],
          with_traceback: bool = False) -> None:
    if not _state["native"] and "logging" in sys.modules:
        import logging

        logging.getLogger(name).log(level, msg, *args, exc_info=with_traceback)
        return
    if level < _state["level"]:
        return
    text = msg % args if args else msg
    if with_traceback and sys.exc_info()[0] is not None:
        import traceback

        text += "\n" + traceback.format_exc().rstrip()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime())
    line = f"{stamp} [{_NAMES.get(level, level)}] {os.getpid()} {name}: {text}\n"
    stream = _state["stream"] or sys.stderr
    try:
        stream.write(line)
        stream.flush()
    except (OSError, ValueError):
        pass  # a full disk or closed stderr must not fail the CNI operation
