"""What every xl command shares, kept lean (no click, no rich, no config parsing) so the
commands people run in loops start fast: xl's global options, the one-line error
convention, and the hostd connection.

xl's global options (xl(1), tools/xl/xl.c) are parsed before the subcommand and live in
``G``: ``-v`` raises the verbosity (repeatable), ``-N`` is a dry run, ``-f`` forces, ``-t``
uses carriage returns for progress output, ``-T`` puts a timestamp and xl's pid on the
messages xl logs (its stderr lines), as libxentoollog's stdiostream does with
XTL_STDIOSTREAM_SHOW_DATE | XTL_STDIOSTREAM_SHOW_PID.
"""

from __future__ import annotations

import os
import sys

from pyxen.toolstack.client import HostdClient, HostdError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at start-up
    from typing import Any, NoReturn


class Globals:
    """xl's global options (a plain class: dataclasses cost start-up time)."""

    def __init__(self) -> None:
        self.verbose = 0  # each -v: one more level of detail on stderr
        self.dryrun = False  # -N
        self.force = False  # -f
        self.progress_cr = False  # -t
        self.timestamps = False  # -T


G = Globals()


class XlError(Exception):
    """One line for stderr, then exit with ``code`` (1 unless xl uses another)."""

    def __init__(self, msg: str, code: int = 1) -> None:
        super().__init__(msg)
        self.code = code


def fail(msg: str, code: int = 1) -> NoReturn:
    raise XlError(msg, code)


def stamp() -> str:
    """libxentoollog's prefix with -T: local date and time, zone, then [pid]."""
    import time
    return time.strftime("%Y-%m-%d %H:%M:%S %Z ") + f"[{os.getpid()}] "


def one_line(msg: str) -> None:
    """Write a message as one line on stderr (with -T's timestamp)."""
    text = " ".join(msg.split("\n")).strip()
    if G.timestamps:
        text = stamp() + text
    try:
        print(text, file=sys.stderr, flush=True)
    except OSError:
        pass


def log(level: int, msg: str) -> None:
    """A message shown from ``level`` -v options on (xl -v, -vv...)."""
    if G.verbose >= level:
        one_line(f"xl: {msg}")


def connect() -> HostdClient:
    try:
        c = HostdClient.connect()
        if G.verbose:
            c.trace = _trace
        return c
    except HostdError as e:
        fail(str(e))
    except OSError as e:
        fail(f"cannot start or reach hostd: {e}")


def _trace(op: str, args: dict[str, Any]) -> None:
    log(1, f"hostd request {op} {args if args else ''}".rstrip())


def call(op: str, **args: Any) -> dict[str, Any]:
    with connect() as c:
        try:
            return c.request(op, **args)
        except HostdError as e:
            fail(str(e))
