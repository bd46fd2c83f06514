"""Xen's node permission model.

A node's ACL is a list of (domid, perm) entries written 'n0', 'r1', 'w2', 'b3'. The
first entry names the owner, and its letter is the default for every domain not listed
later. The owner, privileged connections, and a stub domain acting for its target
(SET_TARGET) get everything.
"""

from __future__ import annotations

from dataclasses import dataclass

from .wire import XenstoreError

READ = 1
WRITE = 2
OWNER = 4
ALL = READ | WRITE | OWNER

_LETTER_BITS = {"n": 0, "r": READ, "w": WRITE, "b": READ | WRITE}
_BITS_LETTER = {v: k for k, v in _LETTER_BITS.items()}

Perms = tuple[tuple[int, int], ...]  # ((domid, bits), ...), first = owner/default

DOM0_DEFAULT: Perms = ((0, 0),)  # 'n0'
DOMID_MAX = 0x7FF0  # DOMID_FIRST_RESERVED


def parse_perm(text: str) -> tuple[int, int]:
    """'b3' -> (3, READ|WRITE); EINVAL for anything Xen would reject."""
    if len(text) < 2 or text[0] not in _LETTER_BITS or not text[1:].isdigit():
        raise XenstoreError("EINVAL", f"bad permission {text!r}")
    domid = int(text[1:])
    if domid > 0xFFFF:
        raise XenstoreError("EINVAL", f"bad domid in {text!r}")
    return domid, _LETTER_BITS[text[0]]


def parse_perms(items: list[str]) -> Perms:
    if not items:
        raise XenstoreError("EINVAL", "empty permission list")
    return tuple(parse_perm(t) for t in items)


def format_perms(perms: Perms) -> list[str]:
    return [f"{_BITS_LETTER[bits & (READ | WRITE)]}{domid}" for domid, bits in perms]


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking: the identity a connection carries into every permission check."""

    domid: int
    privileged: bool
    target: int | None = None  # SET_TARGET: the domain this stub domain acts for

    def perm_for(self, perms: Perms) -> int:
        """The rights this caller has on a node with these perms (Xen's perm_for_conn)."""
        if self.privileged:
            return ALL
        owner = perms[0][0]
        if owner == self.domid or (self.target is not None and owner == self.target):
            return ALL
        for domid, bits in perms[1:]:
            if domid == self.domid or (self.target is not None and domid == self.target):
                return bits
        return perms[0][1]


DOM0 = Caller(0, True)
