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

from pyxen.record import dataclass, field

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


_HEX = frozenset("0123456789abcdefABCDEF")
_OCT = frozenset("01234567")
_DEC = frozenset("0123456789")


def parse_c_long(text: str) -> int | None:
    """strtol(text, &end, 0) that must consume the whole string; None when it does not."""
    digits = text.lstrip()  # strtol skips leading white space (isspace)
    sign = digits[:1] if digits[:1] in ("+", "-") else ""
    digits = digits[len(sign):]
    if digits[:2] in ("0x", "0X") and len(digits) > 2 and _HEX.issuperset(digits[2:]):
        n = int(digits[2:], 16)
    elif digits[:1] == "0" and _OCT.issuperset(digits):
        n = int(digits, 8)
    elif digits[:1] in _DEC and digits[:1] != "0" and _DEC.issuperset(digits):
        n = int(digits)
    else:
        return None
    return -n if sign == "-" else n


# ---------------------------------------------------------------------------- lexer

# libxlutil's lexer (libxlu_cfg_l.l), by hand: the re module costs `xl create` start-up
_WS = frozenset(" \t\r")
_IDENT_FIRST = frozenset("abcdefghijklmnopqrstuvwxyz")
_IDENT = _IDENT_FIRST | frozenset("._0123456789")
_NUMBER = _DEC | frozenset("abcdefx")
_PUNCT = frozenset(",=;[]")


def _span(data: str, pos: int, chars: frozenset[str]) -> int:
    """The end of the run of `chars` at `pos`."""
    end = len(data)
    while pos < end and data[pos] in chars:
        pos += 1
    return pos


def _string_end(data: str, pos: int) -> int | None:
    """The end of the quoted string starting at `pos` (a backslash takes the next
    character along, no newline inside), or None when it is not closed on its line."""
    quote, i, end = data[pos], pos + 1, len(data)
    while i < end:
        c = data[i]
        if c == quote:
            return i + 1
        if c == "\n":
            return None
        if c == "\\":
            if i + 1 >= end or data[i + 1] == "\n":
                return None
            i += 1
        i += 1
    return None


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
            hexd = body[i:i + 2]
            if len(hexd) != 2 or not _HEX.issuperset(hexd):
                raise XlCfgError(source, line, f"config parsing error near `{text}': invalid "
                                 "digit after backslash hex numerical character escape in "
                                 "quoted string")
            out.append(chr(int(hexd, 16)))
            i += 2
        elif "0" <= nc <= "7":
            digits = nc
            while len(digits) < 3 and i + len(digits) - 1 < len(body) and \
                    body[i + len(digits) - 1] in _OCT:
                digits += body[i + len(digits) - 1]
            out.append(chr(int(digits, 8) & 0xFF))
            i += len(digits) - 1
        else:
            raise XlCfgError(source, line, f"config parsing error near `{text}': invalid "
                             "character after backlash in quoted string")
    return "".join(out)


def _tokenize(data: str, source: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos, line = 0, 1
    end = len(data)
    while pos < end:
        c = data[pos]
        start = pos
        if c in _WS:
            pos = _span(data, pos, _WS)
            continue
        if c == "#":
            nl = data.find("\n", pos)
            pos = end if nl < 0 else nl
            continue
        if c == "\n":
            toks.append(_Tok("newline", c, c, line))
            line += 1
            pos += 1
        elif c in _IDENT_FIRST:
            pos = _span(data, pos + 1, _IDENT)
            toks.append(_Tok("ident", data[start:pos], data[start:pos], line))
        elif c in _DEC:
            pos = _span(data, pos + 1, _NUMBER)
            toks.append(_Tok("number", data[start:pos], data[start:pos], line))
        elif c in "\"'" and (stop := _string_end(data, pos)) is not None:
            pos = stop
            text = data[start:pos]
            toks.append(_Tok("string", text, _dequote(text, source, line), line))
        elif c == "+" and data.startswith("+=", pos):
            pos += 2
            toks.append(_Tok("add", "+=", "+=", line))
        elif c in _PUNCT:
            pos += 1
            toks.append(_Tok(c, c, c, line))
        else:
            stop = pos
            while stop < end and data[stop] not in " \t\n":
                stop += 1
            bad = data[pos:stop] or data[pos]
            hint = " (xl.cfg keys are lowercase)" if "A" <= bad[0] <= "Z" else ""
            raise XlCfgError(source, line,
                             f"config parsing error near `{bad}': lexical error{hint}")
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


_NOT_BARE = frozenset("'\"[],;=#")


def _bare_word(value: str) -> bool:
    """A word with no white space, quote, bracket, comma, semicolon, = or #."""
    return bool(value) and not any(c.isspace() or c in _NOT_BARE for c in value)


def _valid_key(key: str) -> bool:
    """[a-z][._0-9a-z]*, with a trailing + (key+=value)."""
    key = key[:-1] if key.endswith("+") else key
    return bool(key) and key[0] in _IDENT_FIRST and _IDENT.issuperset(key)


def apply_override(cfg: XlConfig, arg: str) -> None:
    """Apply one ``key=value`` command-line argument, as xl appends it to the config.

    The value is xl.cfg syntax (``name='x'``, ``memory=64``, ``cpus=[0,1]``); as a
    convenience a bare word with no quotes (``name=web1``) is taken as a string, where
    Xen's xl would report a parse error.
    """
    source = "command line"
    key, sep, raw = arg.partition("=")
    key = key.strip()
    if not sep or not _valid_key(key):
        raise XlCfgError(source, None, f"bad key=value argument `{arg}'")
    before = len(cfg.settings)
    try:
        parse(arg + "\n", source, into=cfg)
    except XlCfgError as e:
        value = raw.strip()
        if key.endswith("+") or not _bare_word(value):
            raise XlCfgError(source, None, f"`{arg}': {e.message}") from e
        cfg.settings.append(Setting(key, value, 0, source))
    for s in cfg.settings[before:]:
        s.lineno = 0  # reported as "command line: ..." without a line number
