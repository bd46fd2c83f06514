"""A lean ``@dataclass`` for the modules `xl create` imports (toolstack/config.py, xlcfg.py,
xldisk.py, vifspec.py): the standard library's dataclasses module imports inspect, re and
their dependencies, about 15 ms of every `xl create` (docs/xl.md).

``dataclass`` here supports what those classes use: fields from the class annotations in
order, defaults, ``field(default_factory=...)``, and generates ``__init__``, ``__repr__``
and ``__eq__`` as the standard decorator does (same signatures, same messages: a missing
argument reads ``DomainConfig.__init__() missing 1 required positional argument: 'name'``).
``asdict``, ``fields`` and ``replace`` are theirs. The classes stay usable by the standard
library's functions too (``dataclasses.replace``, ``asdict``, ``fields``,
``is_dataclass``): ``__dataclass_fields__`` holds field objects whose ``_field_type`` (the
attribute those functions test) is the standard one, looked up only when they ask, i.e.
once dataclasses is imported anyway (tests/test_record.py).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeVar

    T = TypeVar("T")

_NOTHING: Any = object()  # no default / no factory (dataclasses.MISSING, lazily)
_FACTORY: Any = object()  # __init__'s default for a field with a default_factory


class Field:
    """One field: its name, type (the annotation's text), default or default factory."""

    __slots__ = ("name", "type", "_default", "_factory")
    init = True
    repr = True
    compare = True
    kw_only = False

    def __init__(self, default: Any = _NOTHING, default_factory: Any = _NOTHING) -> None:
        self.name = ""
        self.type: Any = None
        self._default = default
        self._factory = default_factory

    @property
    def _field_type(self) -> object:
        import dataclasses
        return dataclasses._FIELD  # type: ignore[attr-defined]

    @property
    def default(self) -> Any:
        if self._default is _NOTHING:
            import dataclasses
            return dataclasses.MISSING
        return self._default

    @property
    def default_factory(self) -> Any:
        if self._factory is _NOTHING:
            import dataclasses
            return dataclasses.MISSING
        return self._factory

    def __repr__(self) -> str:
        return f"Field(name={self.name!r})"


def field(*, default: Any = _NOTHING, default_factory: Any = _NOTHING) -> Any:
    if default is not _NOTHING and default_factory is not _NOTHING:
        raise ValueError("cannot specify both default and default_factory")
    return Field(default, default_factory)


def dataclass(cls: type[T]) -> type[T]:
    """The standard ``@dataclass`` (no arguments) for plain classes: see the module."""
    own = cls.__dict__.get("__annotations__", {})
    flds: dict[str, Field] = {}
    for base in reversed(cls.__mro__[1:]):
        flds.update(getattr(base, "__dataclass_fields__", {}))
    for name, ann in own.items():
        if isinstance(ann, str) and ann.startswith(("ClassVar", "typing.ClassVar")):
            continue
        value = cls.__dict__.get(name, _NOTHING)
        f = value if isinstance(value, Field) else Field(value)
        f.name, f.type = name, ann
        if isinstance(value, Field):  # as dataclasses does: no class attribute is left
            if f._default is _NOTHING:
                delattr(cls, name)
            else:
                setattr(cls, name, f._default)
        flds[name] = f
    ns: dict[str, Any] = {"_FACTORY": _FACTORY}
    params, body = [], []
    seen_default = False
    for f in flds.values():
        if f._factory is not _NOTHING:
            ns[f"_factory_{f.name}"] = f._factory
            params.append(f"{f.name}=_FACTORY")
            body.append(f"self.{f.name} = _factory_{f.name}() if {f.name} is _FACTORY "
                        f"else {f.name}")
            seen_default = True
            continue
        if f._default is not _NOTHING:
            ns[f"_default_{f.name}"] = f._default
            params.append(f"{f.name}=_default_{f.name}")
            seen_default = True
        elif seen_default:
            raise TypeError(f"non-default argument {f.name!r} follows default argument")
        else:
            params.append(f.name)
        body.append(f"self.{f.name} = {f.name}")
    src = (f"def __init__(self, {', '.join(params)}):\n"
           + "".join(f"    {line}\n" for line in body or ["pass"]))
    exec(src, ns)  # noqa: S102 - generated from the class's own field names
    init = ns["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    names = tuple(flds)

    def __repr__(self: Any) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in names)
        return f"{type(self).__qualname__}({inner})"

    def __eq__(self: Any, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in names)

    __repr__.__qualname__ = f"{cls.__qualname__}.__repr__"
    __eq__.__qualname__ = f"{cls.__qualname__}.__eq__"
    for name, fn in (("__init__", init), ("__repr__", __repr__), ("__eq__", __eq__)):
        if name not in cls.__dict__:
            setattr(cls, name, fn)
    if "__hash__" not in cls.__dict__:
        cls.__hash__ = None  # type: ignore[assignment]  # as eq=True without frozen
    cls.__dataclass_fields__ = flds  # type: ignore[attr-defined]
    cls.__match_args__ = names  # type: ignore[attr-defined]
    return cls


def fields(obj: Any) -> tuple[Field, ...]:
    try:
        return tuple(obj.__dataclass_fields__.values())
    except AttributeError:
        raise TypeError("must be called with a dataclass type or instance") from None


def asdict(obj: Any) -> dict[str, Any]:
    """The fields as a dict, nested dataclasses, lists, tuples and dicts copied (as
    dataclasses.asdict)."""
    return {f.name: _copy(getattr(obj, f.name)) for f in fields(obj)}


def _copy(v: Any) -> Any:
    if v is None or isinstance(v, (str, int, float, bytes)):
        return v
    if hasattr(type(v), "__dataclass_fields__"):
        return asdict(v)
    if isinstance(v, list):
        return [_copy(x) for x in v]
    if isinstance(v, dict):
        return type(v)((_copy(k), _copy(x)) for k, x in v.items())
    if isinstance(v, tuple) and not hasattr(v, "_fields"):
        return type(v)(_copy(x) for x in v)
    import copy
    return copy.deepcopy(v)


def replace(obj: T, **changes: Any) -> T:
    for f in fields(obj):
        changes.setdefault(f.name, getattr(obj, f.name))
    return type(obj)(**changes)


__all__ = ["Field", "asdict", "dataclass", "field", "fields", "replace"]
