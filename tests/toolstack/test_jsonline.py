"""toolstack/jsonline.py (hostd's protocol lines for xl's lean path) agrees with json."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyxen.toolstack import jsonline

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30)


@given(values)
def test_round_trips_agree_with_json(v: object) -> None:
    assert json.loads(jsonline.dumps(v)) == v
    assert jsonline.loads(json.dumps(v)) == v
    assert jsonline.loads(json.dumps(v, indent=2).encode()) == v


def test_errors_and_constants() -> None:
    for bad in ("", "{", '{"a": }', "[1, 2", "nul", '{"a": 1} x', "'a'"):
        with pytest.raises(ValueError):
            jsonline.loads(bad)
    assert math.isnan(jsonline.loads("NaN")) and jsonline.loads(" [Infinity] ") == [math.inf]
    with pytest.raises(ValueError):
        jsonline.dumps(math.nan)
    with pytest.raises(TypeError):
        jsonline.dumps({1, 2})
    assert jsonline.dumps({"op": "list", "domains": ["a\"b", 3], "x": (True, None)}) == \
        '{"op":"list","domains":["a\\"b",3],"x":[true,null]}'
