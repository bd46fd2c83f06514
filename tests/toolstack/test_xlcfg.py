"""xl.cfg syntax, as libxlutil parses it (pure logic: unit tests)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyxen.toolstack.xlcfg import XlCfgError, XlConfig, apply_override, parse, parse_c_long

pytestmark = pytest.mark.timeout(60)


def test_assignments_strings_numbers_and_comments() -> None:
    cfg = parse('# a comment\nname = "hello"   # trailing\nmemory=32\nextra=\'x y\'\n', "h.cfg")
    assert cfg.as_dict() == {"name": "hello", "memory": "32", "extra": "x y"}
    assert cfg.find("memory").lineno == 3


def test_semicolons_separate_settings() -> None:
    cfg = parse('name="a"; memory=64;vcpus=2\n', "h.cfg")
    assert cfg.as_dict() == {"name": "a", "memory": "64", "vcpus": "2"}


def test_lists_span_lines_with_trailing_comma_and_comments() -> None:
    cfg = parse('disk = [\n  "a", # first\n\n  "b",\n]\nvif=[]\nnested=[["x"],"y"]\n', "h.cfg")
    assert cfg.get_list("disk") == ["a", "b"]
    assert cfg.get_list("vif") == []
    assert cfg.get_list("nested") == [["x"], "y"]


def test_escapes_in_quoted_strings() -> None:
    cfg = parse(r'''a = "tab\there \"q\" \x41\101 \\"''' + "\nb='it\\'s'\n", "h.cfg")
    assert cfg.get_string("a") == 'tab\there "q" AA \\'
    assert cfg.get_string("b") == "it's"


def test_last_setting_wins_and_plus_equals_appends() -> None:
    cfg = parse('memory=32\nmemory=64\nextra="a"\nextra+=" b"\nl=["x"]\nl+=["y"]\n', "h.cfg")
    assert cfg.get_long("memory") == 64
    assert cfg.get_string("extra") == "a b"
    assert cfg.get_list("l") == ["x", "y"]


def test_missing_final_newline_is_accepted() -> None:
    assert parse('name="x"', "h.cfg").get_string("name") == "x"


def test_numbers_are_c_longs() -> None:
    cfg = parse('a=0x10\nb=010\nc="12"\nd="12k"\n', "h.cfg")
    assert (cfg.get_long("a"), cfg.get_long("b"), cfg.get_long("c")) == (16, 8, 12)
    with pytest.raises(XlCfgError, match=r"^h.cfg:4: parameter `d' is not a valid number$"):
        cfg.get_long("d")


@pytest.mark.parametrize("text, line, fragment", [
    ('name="x"\nmemory = = 3\n', 2, "near `='"),
    ('name="x"\n\nmemory 32\n', 3, "near `32'"),
    ('disk=["a" "b"]\n', 1, "near `\"b\"'"),
    ('name="x\n', 1, "lexical error"),
    ('Name="x"\n', 1, "lexical error"),
    ('a=1 b=2\n', 1, "near `b'"),
    ('x = [\n"a",\n"b"\n', 4, "unexpected $end"),
    ('s="a\\qb"\n', 1, "invalid character after backlash"),
])
def test_syntax_errors_carry_file_and_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(XlCfgError) as e:
        parse(text, "hello.cfg")
    msg = str(e.value)
    assert msg.startswith(f"hello.cfg:{line}: config parsing error near ")
    assert fragment in msg
    assert "\n" not in msg


def test_list_where_a_value_is_expected() -> None:
    cfg = parse('name=["a"]\ndisk="x"\n', "h.cfg")
    with pytest.raises(XlCfgError, match=r"^h.cfg:1: parameter `name' is a list"):
        cfg.get_string("name")
    with pytest.raises(XlCfgError, match=r"^h.cfg:2: parameter `disk' is a single value"):
        cfg.get_list("disk")


def test_command_line_overrides() -> None:
    cfg = parse('name="hello"\nmemory=32\n', "h.cfg")
    apply_override(cfg, "memory=64")
    apply_override(cfg, 'name="web"')
    apply_override(cfg, "cmdline=bare")
    apply_override(cfg, "cpus=[0,1]")
    assert cfg.as_dict() == {"name": "web", "memory": "64", "cmdline": "bare",
                             "cpus": ["0", "1"]}


@pytest.mark.parametrize("arg", ["memory", "=5", "Memory=5", "memory=[", "x='a"])
def test_bad_overrides(arg: str) -> None:
    with pytest.raises(XlCfgError) as e:
        apply_override(XlConfig("h.cfg"), arg)
    assert str(e.value).startswith("command line: ")


def test_parse_c_long() -> None:
    assert parse_c_long("0") == 0
    assert parse_c_long("-0x1f") == -31
    assert parse_c_long("08") is None
    assert parse_c_long("") is None


# --- property: whatever settings we write in xl.cfg syntax come back ------------------

_keys = st.from_regex(r"[a-z][_0-9a-z]{0,10}", fullmatch=True)
_atoms = st.one_of(
    st.integers(min_value=0, max_value=10**12).map(str),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=20),
)
_values = st.recursive(_atoms, lambda inner: st.lists(inner, max_size=4), max_leaves=8)


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _render(v: object, multiline: bool) -> str:
    if isinstance(v, list):
        sep = ",\n  " if multiline else ", "
        body = sep.join(_render(x, multiline) for x in v)
        return "[" + ("\n  " if multiline else "") + body + (",\n]" if multiline and v else "]")
    return _quote(str(v))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=6), st.booleans(), st.booleans())
def test_roundtrip(data: dict[str, object], multiline: bool, semicolons: bool) -> None:
    end = ";" if semicolons else "\n"
    text = "# generated\n" + "".join(f"{k} = {_render(v, multiline)} # c{end}"
                                      if not semicolons else
                                      f"{k} = {_render(v, multiline)}{end}"
                                      for k, v in data.items())
    assert parse(text, "gen.cfg").as_dict() == data
