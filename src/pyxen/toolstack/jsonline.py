"""JSON for hostd's protocol lines without importing ``json`` (whose decoder and encoder
import ``re``, and with it enum and functools: about a third of `xl list`'s start-up).

The C accelerator ``_json`` that ``json`` itself uses does the work: its scanner parses a
value, its string encoder escapes. Same results as json.loads / json.dumps for the
values the protocol carries (objects, arrays, strings, numbers, booleans, null).
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class _Context:
    """What _json.make_scanner reads from a JSONDecoder."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo: dict[str, Any] = {}

    @staticmethod
    def parse_constant(name: str) -> float:
        return {"NaN": float("nan"), "Infinity": float("inf"),
                "-Infinity": float("-inf")}[name]


_scan = _json.make_scanner(_Context())
_WS = " \t\n\r"


def loads(text: str | bytes) -> Any:
    if isinstance(text, bytes):
        text = text.decode()
    start = len(text) - len(text.lstrip(_WS))
    try:
        value, end = _scan(text, start)
    except StopIteration as e:
        raise ValueError(f"invalid JSON at offset {e.value}") from None
    if text[end:].strip(_WS):
        raise ValueError(f"extra data after JSON at offset {end}")
    return value


def dumps(obj: Any) -> str:
    """Compact JSON (json.dumps(obj, separators=(",", ":")))."""
    if isinstance(obj, str):
        return _json.encode_basestring_ascii(obj)
    if obj is None:
        return "null"
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    if isinstance(obj, int):
        return int.__repr__(obj)
    if isinstance(obj, float):
        if obj != obj or obj in (float("inf"), float("-inf")):
            raise ValueError("out of range float values are not JSON compliant")
        return float.__repr__(obj)
    if isinstance(obj, dict):
        return "{" + ",".join(f"{dumps(str(k))}:{dumps(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, (list, tuple)):
        return "[" + ",".join(dumps(v) for v in obj) + "]"
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")
