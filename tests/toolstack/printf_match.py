"""Does a line look exactly like C's printf(FORMAT, ...) would print it, for some values?

The formats are copied from Xen 4.17's tools/xl sources; pyxen's output is checked
against them field by field: each conversion (%-40s, %5d, %8.1f, %c, %08x, ...) must
fill its width exactly as printf pads (a longer value overflows, never a shorter pad),
and the literal text between conversions must be the same.
"""

from __future__ import annotations

import re

_CONV = re.compile(r"%(?P<flags>[-0 +#]*)(?P<width>\d+)?(?:\.(?P<prec>\d+))?"
                   r"(?P<len>hh|h|ll|l|z|j|t|L)?(?P<conv>[sdiuxXfc%])")

_BODY = {
    "s": r".*?",
    "d": r"-?\d+", "i": r"-?\d+", "u": r"\d+",
    "x": r"[0-9a-f]+", "X": r"[0-9A-F]+",
    "c": r".",
}


Token = str | dict  # literal text, or a conversion spec


def _tokens(fmt: str) -> list[Token]:
    out: list[Token] = []
    pos = 0
    for m in _CONV.finditer(fmt):
        if m.start() > pos:
            out.append(fmt[pos:m.start()])
        conv = m["conv"]
        if conv == "%":
            out.append("%")
        else:
            if conv == "f":
                prec = int(m["prec"]) if m["prec"] is not None else 6
                body = rf"-?\d+\.\d{{{prec}}}" if prec else r"-?\d+"
            else:
                body = _BODY[conv]
            out.append({"width": int(m["width"] or 0), "left": "-" in m["flags"],
                        "zero": "0" in m["flags"] and "-" not in m["flags"],
                        "body": re.compile(body, re.S)})
        pos = m.end()
    if pos < len(fmt):
        out.append(fmt[pos:])
    return out


def _field_ok(spec: dict, text: str) -> bool:
    """`text` is one conversion's output: the value, padded to the width as printf pads.
    Values are taken to have no padding of their own (a longer-than-width field has no
    leading/trailing pad character)."""
    w, body = spec["width"], spec["body"]
    pad = "0" if spec["zero"] else " "
    if len(text) < w:
        return False
    if w == 0:  # no padding: the value is the text
        return bool(body.fullmatch(text))
    if len(text) > w and (text.endswith(" ") if spec["left"] else text.startswith(pad)):
        return False
    if spec["left"]:
        value = text.rstrip(" ")
    else:
        value = text.lstrip(pad)
        if pad == "0" and not value:
            value = "0"
    if body.pattern == ".":  # %c: one character, which may itself be a space
        return len(text) == max(w, 1) and (len(text) == 1 or
                                            (text[1:] == " " * (w - 1) if spec["left"]
                                             else text[:-1] == " " * (w - 1)))
    return bool(body.fullmatch(value))


def _match(tokens: list[Token], i: int, line: str, pos: int) -> bool:
    if i == len(tokens):
        return pos == len(line)
    tok = tokens[i]
    if isinstance(tok, str):
        return line.startswith(tok, pos) and _match(tokens, i + 1, line, pos + len(tok))
    for end in range(pos + tok["width"], len(line) + 1):
        if _field_ok(tok, line[pos:end]) and _match(tokens, i + 1, line, end):
            return True
    return False


def printf_matches(fmt: str, line: str) -> bool:
    """True if `line` is what printf(fmt, ...) prints for some values (no newline)."""
    return _match(_tokens(fmt), 0, line, 0)


def assert_printf(fmt: str, line: str) -> None:
    assert printf_matches(fmt, line), f"{line!r} is not printf({fmt!r}, ...)"
