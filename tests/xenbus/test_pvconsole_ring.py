"""The console ring (struct xencons_interface) and PvConsole, as pure logic over a page."""

from __future__ import annotations

import mmap
import struct
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyxen.backends.console import (
    IN_CONS,
    IN_OFF,
    IN_PROD,
    IN_SIZE,
    OUT_CONS,
    OUT_OFF,
    OUT_PROD,
    OUT_SIZE,
    ConsoleRing,
    PvConsole,
    RingCorrupt,
)

U32 = struct.Struct("<I")


class GuestSide:
    """What a guest's console driver does with the page (the other end of ConsoleRing)."""

    def __init__(self, page: mmap.mmap) -> None:
        self.page = page

    def get(self, off: int) -> int:
        return U32.unpack_from(self.page, off)[0]

    def put(self, off: int, v: int) -> None:
        U32.pack_into(self.page, off, v & 0xFFFFFFFF)

    def write(self, data: bytes) -> int:
        cons, prod = self.get(OUT_CONS), self.get(OUT_PROD)
        n = min(len(data), OUT_SIZE - ((prod - cons) & 0xFFFFFFFF))
        for i in range(n):
            self.page[OUT_OFF + (prod + i) % OUT_SIZE] = data[i]
        self.put(OUT_PROD, prod + n)
        return n

    def read(self) -> bytes:
        cons, prod = self.get(IN_CONS), self.get(IN_PROD)
        out = bytes(self.page[IN_OFF + (c % IN_SIZE)] for c in range(cons, prod))
        self.put(IN_CONS, prod)
        return out


@pytest.fixture
def page() -> mmap.mmap:
    return mmap.mmap(-1, 4096)


def test_output_in_order_across_the_wrap(page: mmap.mmap) -> None:
    ring, guest = ConsoleRing(page), GuestSide(page)
    start = 0xFFFFFFFF - 100  # indices wrap around 2^32 as well as the ring
    guest.put(OUT_CONS, start)
    guest.put(OUT_PROD, start)
    got = b""
    for k in range(20):
        chunk = bytes([65 + k % 26]) * 300
        assert guest.write(chunk) == 300
        got += ring.read_output()
    assert got == b"".join(bytes([65 + k % 26]) * 300 for k in range(20))
    assert ring.read_output() == b""


def test_corrupt_output_indices_reset_the_ring(page: mmap.mmap) -> None:
    ring, guest = ConsoleRing(page), GuestSide(page)
    guest.put(OUT_PROD, 100000)
    with pytest.raises(RingCorrupt, match="out_prod=100000"):
        ring.read_output()
    assert guest.get(OUT_CONS) == 100000  # reset: the guest can go on from here
    guest.write(b"still here\n")
    assert ring.read_output() == b"still here\n"


def test_input_respects_space_and_wraps(page: mmap.mmap) -> None:
    ring, guest = ConsoleRing(page), GuestSide(page)
    assert ring.write_input(b"x" * 2000) == IN_SIZE  # no more than the ring holds
    assert ring.write_input(b"y") == 0
    assert guest.read() == b"x" * IN_SIZE
    assert ring.write_input(b"hello") == 5
    assert guest.read() == b"hello"


def test_corrupt_input_indices(page: mmap.mmap) -> None:
    ring, guest = ConsoleRing(page), GuestSide(page)
    guest.put(IN_CONS, 5000)  # the guest claims to have read what was never written
    with pytest.raises(RingCorrupt):
        ring.write_input(b"abc")
    assert ring.write_input(b"abc") == 3
    assert guest.read() == b"abc"


def test_small_or_readonly_buffer_refused() -> None:
    with pytest.raises(ValueError):
        ConsoleRing(bytearray(100))
    with pytest.raises(ValueError):
        ConsoleRing(bytes(4096))


def test_ring_output_is_the_stream_and_the_log_file(page: mmap.mmap, tmp_path: Path) -> None:
    """Ring output, in order, buffered for the next client and in guest-NAME.log."""
    log = tmp_path / "console" / "guest-t.log"
    con = PvConsole(log)
    con.attach_ring(page, None, poll_s=3600)  # the poller never runs during this test
    guest = GuestSide(page)
    guest.write(b"1 ring\n")
    con.service()
    guest.write(b"2 ring again\n")
    con.service()
    expected = b"1 ring\n2 ring again\n"
    assert con.attach(None) == expected  # nobody attached: all buffered, in order
    con.close()
    assert log.read_bytes() == expected


def test_input_goes_to_console_io_until_the_ring_is_used(page: mmap.mmap) -> None:
    con = PvConsole()
    con.attach_ring(page, None, poll_s=3600)
    guest = GuestSide(page)
    con.feed(b"a")
    assert con.read(10) == b"a"  # CONSOLEIO_read while the guest ignores the ring
    guest.write(b"prompt> ")
    con.service()
    con.feed(b"bc")
    assert con.read(10) == b""
    assert guest.read() == b"bc"
    con.close()


def test_corruption_is_reported_once_per_interval(page: mmap.mmap) -> None:
    reports: list[str] = []
    con = PvConsole(report=reports.append)
    con.attach_ring(page, None, poll_s=3600)
    guest = GuestSide(page)
    for _ in range(50):
        guest.put(OUT_PROD, guest.get(OUT_CONS) + 10**6)
        con.service()
    assert len(reports) == 1 and "console ring corrupt" in reports[0]
    guest.write(b"ok\n")
    con.service()
    assert con.attach(None).endswith(b"ok\n")
    con.close()


def test_poller_serves_the_ring_without_an_event_channel(page: mmap.mmap) -> None:
    con = PvConsole()
    got: list[bytes] = []
    con.attach(got.append)
    con.attach_ring(page, None, poll_s=0.01)
    GuestSide(page).write(b"polled\n")
    deadline = time.monotonic() + 5
    while b"".join(got) != b"polled\n" and time.monotonic() < deadline:
        time.sleep(0.01)
    con.close()
    assert b"".join(got) == b"polled\n"


@given(st.lists(st.tuples(st.sampled_from(["scribble", "write", "read", "feed"]),
                          st.integers(0, 0xFFFFFFFF), st.binary(max_size=300)),
                max_size=40))
@settings(max_examples=300, deadline=None)
def test_hostile_page_never_breaks_the_backend(ops: list[tuple[str, int, bytes]]) -> None:
    """Whatever the guest writes into the page, the backend neither raises nor reads or
    writes outside the rings, and it recovers: afterwards a well-behaved guest is served."""
    page = mmap.mmap(-1, 4096)
    reports: list[str] = []
    con = PvConsole(report=reports.append)
    con.ring = ConsoleRing(page)  # served synchronously by service() below
    con.ring_in_use = True
    guest = GuestSide(page)
    for op, value, data in ops:
        if op == "scribble":
            guest.put((IN_CONS, IN_PROD, OUT_CONS, OUT_PROD)[value % 4], value)
        elif op == "write":
            page[OUT_OFF:OUT_OFF + len(data)] = data
            guest.put(OUT_PROD, guest.get(OUT_PROD) + len(data))
        elif op == "read":
            guest.put(IN_CONS, guest.get(IN_CONS) + value % 2048)
        else:
            con.feed(data)
        con.service()
        assert (guest.get(OUT_PROD) - guest.get(OUT_CONS)) & 0xFFFFFFFF <= OUT_SIZE
    con.attach(None)
    guest.put(OUT_CONS, guest.get(OUT_PROD))  # the guest resynchronises, as after a reset
    guest.write(b"recovered\n")
    con.service()
    assert con.attach(None).endswith(b"recovered\n")
