"""The xl.cfg file syntax, as libxlutil (tools/libs/util/libxlu_cfg_*) reads it.

A file is a sequence of settings ``key = value`` (or ``key += value`` to append to an
earlier setting of the same key), each ended by a newline or ``;``. Keys are lowercase
identifiers. Values are atoms (a number, or a string in '...' or "..." with C-like
escapes) or lists ``[ v, v, ]`` that may span lines, take a trailing comma and comments,
and nest. ``#`` starts a comment. As in libxlutil every atom is kept as its text: a number
is a string that happens to parse as one (so ``memory = "64"`` is as good as
``memory = 64``), and when a key is set twice the last setting wins, which is how
``key=value`` arguments on the xl command line override the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

Value = str | list["Value"]


class XlCfgError(Exception):
    """A config error located in its source: str() is ``source:line: message``."""

    def __init__(self, source: str, line: int | None, message: str) -> None:
        self.source = source
        self.line = line
        self.message = message
        where = f"{source}:{line}" if line else source
        super().__init__(f"{where}: {message}")


@dataclass
class Setting:
    name: str
    value: Value
    lineno: int
    source: str
    add: bool = False  # set with +=: a string or list to append to, never a number


@dataclass
class XlConfig:
    """Parsed settings in order of appearance; lookups see the last one of a name."""

    source: str
    settings: list[Setting] = field(default_factory=list)

    def find(self, name: str) -> Setting | None:
        for s in reversed(self.settings):
            if s.name == name:
                return s
        return None

    def __contains__(self, name: str) -> bool:
        return self.find(name) is not None

    def keys(self) -> list[str]:
        seen: dict[str, None] = {}
        for s in self.settings:
            seen[s.name] = None
        return list(seen)

    def as_dict(self) -> dict[str, Value]:
        return {k: self.find(k).value for k in self.keys()}  # type: ignore[union-attr]

    def error(self, name: str, message: str) -> XlCfgError:
        s = self.find(name)
        if s is None:
            return XlCfgError(self.source, None, message)
        return XlCfgError(s.source, s.lineno, message)

    def get_string(self, name: str) -> str | None:
        s = self.find(name)
        if s is None:
            return None
        if not isinstance(s.value, str):
            raise XlCfgError(s.source, s.lineno,
                             f"parameter `{name}' is a list but should be a single value")
        return s.value

    def get_long(self, name: str) -> int | None:
        """A number as libxlutil reads one: C strtol base 0 (0x.. hex, 0.. octal)."""
        text = self.get_string(name)
        if text is None:
            return None
        s = self.find(name)
        assert s is not None
        if s.add:  # libxlu's xlu_cfg_get_bounded_long
            raise XlCfgError(s.source, s.lineno,
                             f"can't use += with numbers for parameter `{name}'")
        value = parse_c_long(text)
        if value is None:
            raise XlCfgError(s.source, s.lineno, f"parameter `{name}' is not a valid number")
        return value

    def get_list(self, name: str) -> list[Value] | None:
        s = self.find(name)
        if s is None:
            return None
        if not isinstance(s.value, list):
            raise XlCfgError(s.source, s.lineno,
                             f"parameter `{name}' is a single value but should be a list")
        return s.value


_C_LONG = re.compile(r"\s*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)\Z")


def parse_c_long(text: str) -> int | None:
    """strtol(text, &end, 0) that must consume the whole string; None when it does not."""
    m = _C_LONG.match(text)
    if not m:
        return None
    sign, digits = m.groups()
    if digits.lower().startswith("0x"):
        n = int(digits, 16)
    elif digits.startswith("0") and len(digits) > 1:
        n = int(digits, 8)
    else:
        n = int(digits)
    return -n if sign == "-" else n


# ---------------------------------------------------------------------------- lexer

_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r]+)
  | (?P<comment>\#[^\n]*)
  | (?P<newline>\n)
  | (?P<ident>[a-z][._0-9a-z]*)
  | (?P<number>[0-9][0-9a-fx]*)
  | (?P<dstring>"(?:[^"\\\n]|\\[^\n])*")
  | (?P<sstring>'(?:[^'\\\n]|\\[^\n])*')
  | (?P<add>\+=)
  | (?P<punct>[,=;\[\]])
    """,
    re.VERBOSE,
)

# Bison's names for the tokens, used in "unexpected X, expecting Y" messages.
_TOKEN_NAMES = {
    "ident": "IDENT", "number": "NUMBER", "string": "STRING", "newline": "NEWLINE",
    "add": "OP_ADD", "eof": "$end",
}


@dataclass
class _Tok:
    kind: str  # ident number string newline add , = ; [ ] eof
    text: str  # source text
    value: str  # dequoted value for strings
    line: int

    def describe(self) -> str:
        return _TOKEN_NAMES.get(self.kind, f"'{self.kind}'")


_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "a": "\a", "b": "\b", "f": "\f", "n": "\n",
            "r": "\r", "t": "\t", "v": "\v"}


def _dequote(text: str, source: str, line: int) -> str:
    body = text[1:-1]
    out: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        i += 1
        if c != "\\":
            out.append(c)
            continue
        nc = body[i]
        i += 1
        if nc in _ESCAPES:
            out.append(_ESCAPES[nc])
        elif nc == "x":
            m = re.match(r"[0-9a-fA-F]{2}", body[i:i + 2])
            if not m:
                raise XlCfgError(source, line, f"config parsing error near `{text}': invalid "
                                 "digit after backslash hex numerical character escape in "
                                 "quoted string")
            out.append(chr(int(m.group(), 16)))
            i += 2
        elif "0" <= nc <= "7":
            m = re.match(r"[0-7]{0,2}", body[i:])
            digits = nc + (m.group() if m else "")
            out.append(chr(int(digits, 8) & 0xFF))
            i += len(digits) - 1
        else:
            raise XlCfgError(source, line, f"config parsing error near `{text}': invalid "
                             "character after backlash in quoted string")
    return "".join(out)


def _tokenize(data: str, source: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos, line = 0, 1
    while pos < len(data):
        m = _TOKEN.match(data, pos)
        if not m:
            bad = re.match(r"[^ \t\n]*", data[pos:]).group() or data[pos]  # type: ignore[union-attr]
            hint = ""
            if re.match(r"[A-Z]", bad):
                hint = " (xl.cfg keys are lowercase)"
            raise XlCfgError(source, line,
                             f"config parsing error near `{bad}': lexical error{hint}")
        kind = m.lastgroup or ""
        text = m.group()
        pos = m.end()
        if kind in ("ws", "comment"):
            continue
        if kind in ("dstring", "sstring"):
            toks.append(_Tok("string", text, _dequote(text, source, line), line))
        elif kind == "punct":
            toks.append(_Tok(text, text, text, line))
        else:
            toks.append(_Tok(kind, text, text, line))
        if kind == "newline":
            line += 1
    toks.append(_Tok("eof", "", "", line))
    return toks


# ---------------------------------------------------------------------------- parser

class _Parser:
    def __init__(self, toks: list[_Tok], source: str) -> None:
        self.toks = toks
        self.i = 0
        self.source = source

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        t = self.toks[self.i]
        self.i += 1
        return t

    def fail(self, tok: _Tok, expecting: list[str]) -> XlCfgError:
        # libxlu reports a newline token on the line it ends, as "near <newline>".
        if tok.kind == "newline":
            near = "<newline>"
        elif tok.kind == "eof":
            near = "end of file"
        else:
            near = f"`{tok.text}'"
        msg = f"config parsing error near {near}: syntax error, unexpected {tok.describe()}"
        if expecting:
            msg += ", expecting " + " or ".join(expecting)
        return XlCfgError(self.source, tok.line, msg)

    def skip_newlines(self) -> None:
        while self.peek().kind == "newline":
            self.take()

    def parse_file(self, into: XlConfig) -> None:
        while True:
            tok = self.take()
            if tok.kind == "eof":
                return
            if tok.kind in ("newline", ";"):
                continue
            if tok.kind != "ident":
                raise self.fail(tok, ["IDENT"] if tok.kind != "number" else ["IDENT"])
            op = self.take()
            if op.kind not in ("=", "add"):
                raise self.fail(op, ["'='", "OP_ADD"])
            line = self.peek().line
            value = self.parse_value()
            end = self.peek()
            if end.kind not in ("newline", ";", "eof"):
                raise self.fail(end, ["NEWLINE", "';'"])
            if end.kind != "eof":
                self.take()
            self.store(into, tok.text, op.kind == "add", value, line)

    def store(self, into: XlConfig, name: str, add: bool, value: Value, line: int) -> None:
        if add:
            prev = into.find(name)
            if prev is not None:
                if isinstance(prev.value, list) != isinstance(value, list):
                    raise XlCfgError(self.source, line, "config parsing error near `+=': "
                                     "can't add [list] to \"string\" or vice versa")
                value = prev.value + value  # type: ignore[operator]
        into.settings.append(Setting(name, value, line, self.source, add))

    def parse_value(self) -> Value:
        tok = self.take()
        if tok.kind in ("string", "number"):
            return tok.value
        if tok.kind != "[":
            raise self.fail(tok, ["STRING", "NUMBER", "'['"])
        items: list[Value] = []
        self.skip_newlines()
        if self.peek().kind == "]":
            self.take()
            return items
        while True:
            items.append(self.parse_value())
            self.skip_newlines()
            tok = self.take()
            if tok.kind == "]":
                return items
            if tok.kind != ",":
                raise self.fail(tok, ["','", "']'"])
            self.skip_newlines()
            if self.peek().kind == "]":
                self.take()
                return items


def parse(data: str, source: str = "<config>", into: XlConfig | None = None) -> XlConfig:
    """Parse xl.cfg text; settings are appended to ``into`` (so later ones override)."""
    cfg = into if into is not None else XlConfig(source)
    _Parser(_tokenize(data, source), source).parse_file(cfg)
    return cfg


def parse_file(path: str) -> XlConfig:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            data = f.read()
    except OSError as e:
        raise XlCfgError(path, None, f"unable to open configuration file: {e.strerror}") from e
    return parse(data, path)


_BARE_WORD = re.compile(r"[^\s'\"\[\],;=#]+\Z")


def apply_override(cfg: XlConfig, arg: str) -> None:
    """Apply one ``key=value`` command-line argument, as xl appends it to the config.

    The value is xl.cfg syntax (``name='x'``, ``memory=64``, ``cpus=[0,1]``); as a
    convenience a bare word with no quotes (``name=web1``) is taken as a string, where
    Xen's xl would report a parse error.
    """
    source = "command line"
    key, sep, raw = arg.partition("=")
    key = key.strip()
    if not sep or not re.fullmatch(r"[a-z][._0-9a-z]*\+?", key):
        raise XlCfgError(source, None, f"bad key=value argument `{arg}'")
    before = len(cfg.settings)
    try:
        parse(arg + "\n", source, into=cfg)
    except XlCfgError as e:
        value = raw.strip()
        if key.endswith("+") or not _BARE_WORD.match(value):
            raise XlCfgError(source, None, f"`{arg}': {e.message}") from e
        cfg.settings.append(Setting(key, value, 0, source))
    for s in cfg.settings[before:]:
        s.lineno = 0  # reported as "command line: ..." without a line number
