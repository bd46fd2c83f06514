"""pyxen.record, the lean @dataclass of the modules `xl create` imports, against the
standard library's: same generated methods and messages, and the standard functions
(replace, asdict, fields, is_dataclass) work on its classes."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from pyxen import record
from pyxen.toolstack.config import DomainConfig
from pyxen.toolstack.xldisk import DiskSpec


def _pair():
    def make(mod):
        @mod.dataclass
        class Rec:
            name: str
            size: int
            tags: list[str] = mod.field(default_factory=list)
            mode: str = "rw"
            extra: dict[str, str] = mod.field(default_factory=dict)

        return Rec

    return make(dataclasses), make(record)


def test_same_methods_as_dataclasses():
    std, lean = _pair()
    for cls in (std, lean):
        a = cls("a", 1)
        assert a.tags == [] and a.extra == {} and a.mode == "rw"
        assert cls("a", 1, ["x"]) == cls("a", 1, ["x"])
        assert cls("a", 1) != cls("a", 2)
        assert cls.__hash__ is None
        assert cls("a", 1).tags is not cls("a", 1).tags  # a fresh list each time
        assert "tags" not in cls.__dict__ and cls.mode == "rw"
    assert repr(std("a", 1)).split("(", 1)[1] == repr(lean("a", 1)).split("(", 1)[1]
    for args, kwargs in (((), {}), (("a",), {}), (("a", 1), {"bogus": 1}),
                         (("a", 1, [], "r", {}, 5), {})):
        with pytest.raises(TypeError) as s:
            std(*args, **kwargs)
        with pytest.raises(TypeError) as le:
            lean(*args, **kwargs)
        assert str(s.value) == str(le.value)  # from_json's "malformed ...: <this>" lines


def test_standard_functions_work_on_lean_classes():
    std, lean = _pair()
    a, b = std("a", 1, ["t"], extra={"k": "v"}), lean("a", 1, ["t"], extra={"k": "v"})
    assert dataclasses.is_dataclass(b)
    assert dataclasses.asdict(a) == dataclasses.asdict(b) == record.asdict(b)
    assert record.asdict(b)["tags"] is not b.tags
    assert [f.name for f in dataclasses.fields(a)] == [f.name for f in dataclasses.fields(b)]
    assert dataclasses.fields(b)[0].default is dataclasses.MISSING
    assert dataclasses.fields(b)[3].default == "rw"
    c = dataclasses.replace(b, size=2)
    assert (c.name, c.size, c.tags) == ("a", 2, ["t"]) and type(c) is lean
    assert record.replace(b, mode="r").mode == "r"


def test_domain_config_round_trip():
    d = DiskSpec(target="/x.img", vdev="xvda")
    assert DiskSpec.from_json(d.to_json()) == d
    with pytest.raises(Exception, match="malformed disk entry"):
        DiskSpec.from_json(5)
    fields = [f.name for f in dataclasses.fields(DomainConfig)]
    assert fields[:3] == ["name", "uuid", "type"] and "vnuma" in fields


def test_xl_create_imports_stay_lean():
    """What `xl create` imports to parse a config: no dataclasses, inspect, re, enum."""
    code = ("import sys; import pyxen.cli.xl_create, pyxen.cli.xlconf, "
            "pyxen.toolstack.config, pyxen.toolstack.sched, pyxen.toolstack.xlcfg_keys; "
            "print(' '.join(m for m in ('dataclasses', 'inspect', 're', 'enum', 'typing') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == ""
