"""Bounded fuzzing (the long run is fuzz_xenstored.py): the daemon never dies or hangs."""

from __future__ import annotations

from fuzz_xenstored import run

FUZZ_INPUTS = 12000


def test_fuzz_random_bytes_and_messages():
    assert run(seconds=None, count=FUZZ_INPUTS, seed=2024) >= FUZZ_INPUTS
