"""Host processes hostd follows without being their parent (adopted VMMs, the VMM
template, xenstored): a pid can only be polled, and a zombie counts as gone."""

from __future__ import annotations


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
