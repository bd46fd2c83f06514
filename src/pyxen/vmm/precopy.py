"""Live pre-copy, the sending half of live migration (libxc's send_memory_live /
suspend_and_send_dirty in xc_sr_save.c), on the domain's own VMM.

Iteration 0 sends every RAM page while the guest runs, with log-dirty mode on
(vmm/dirtylog.py). Each later iteration fetches the pages written since the previous one
and sends them again, while the guest keeps running. The loop ends when the dirty set is
small (`target_dirty` pages, libxc's SPP_TARGET_DIRTY_COUNT), when it stops shrinking (the
guest dirties as fast as we send: more rounds only cost time), or after `max_iters`
(libxc's default 5). Then the domain is suspended (`suspend`: paused, or the guest's own
suspend when it has PV control), the last dirty pages and the vCPU/platform state
(`final_state`) are sent, and the stream ends. The guest is down from the suspend to the
moment the target unpauses its copy: that is the downtime, bounded by the last dirty set,
the state records and the target's restore.

A failure (the target died, the link dropped: EPIPE/ECONNRESET on the stream) stops
logging and resumes the domain in place: the caller sees the exception, the guest carries on.
"""

from __future__ import annotations

import array
import fcntl
import os
import stat
import termios
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..hypervisor.domain import Domain
from ..hypervisor.p2m import PAGE_SIZE
from .dirtylog import DirtyLog

MAX_BATCH = 1024  # pfns per PAGE_DATA record (libxc's MAX_BATCH_SIZE)
LOG_OFF_DELAY_S = 1.0  # after a successful send, log-dirty mode goes off this much later
DRAIN_WAIT_S = 0.25  # the longest wait for the receiver to catch up before the pause
SUSPEND_WAIT_S = 130.0  # hostd's wait for the acknowledgement and the suspend, and some
SHUTDOWN_suspend = 2


class MigrationError(Exception):
    """The migration cannot go on (the guest did not suspend); the domain runs on."""


@dataclass
class PrecopyPolicy:
    max_iters: int = 5  # live rounds after which we stop regardless (libxc default)
    target_dirty: int = 50  # a dirty set this small is sent with the guest stopped


@dataclass
class PrecopyStats:
    iterations: list[int] = field(default_factory=list)  # pages sent per round (0 first)
    final_pages: int = 0
    bytes: int = 0
    started: float = 0.0  # time.time() when iteration 0 began
    paused_at: float = 0.0  # time.time() when the guest stopped (downtime begins)
    stream_done: float = 0.0  # time.time() when the last record was written
    pyxen_pages: int = 0  # pages logged from pyxen's own writes
    # Where the stopped phase goes (seconds): pausing, the last pages, the state records
    # and the end (with the flush of what is buffered).
    stop_phases: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"iterations": self.iterations, "final_pages": self.final_pages,
                "bytes": self.bytes, "started": self.started, "paused_at": self.paused_at,
                "stream_done": self.stream_done, "pyxen_pages": self.pyxen_pages,
                "stop_phases": {k: round(v, 6) for k, v in self.stop_phases.items()}}


def placed_pfns(d: Domain) -> set[int]:
    """Pages placed in the physmap (shared info, grant frames, special pages, firmware):
    the hypervisor's, not covered by the dirty log, so resent with the domain stopped."""
    from .domain_save import NOT_SAVED_KINDS

    p2m = d.memory.p2m
    with p2m.lock:
        return {g for g, p in {**p2m.overlay, **p2m.outside}.items()
                if p.kind not in NOT_SAVED_KINDS}


class PageSender:
    """Sends pages as PAGE_DATA records straight from the domain's memory mapping."""

    def __init__(self, d: Domain, writer: Any) -> None:
        self.mem = d.memory
        self.p2m = d.memory.p2m
        self.writer = writer
        self.pages_sent = 0

    def send(self, pfns: Iterable[int], progress: Callable[[int], None] | None = None) -> int:
        """PAGE_DATA records of up to MAX_BATCH pfns: a run of gfns contiguous in the store
        goes out as one slice of the mapping (no copy), a scattered batch is joined."""
        view = self.mem.view
        p2m = self.p2m
        batch_pfns: list[int] = []
        offs: list[int] = []
        n = 0

        def flush() -> None:
            nonlocal n
            first, last = offs[0], offs[-1]
            if last - first == (len(offs) - 1) * PAGE_SIZE:
                data: bytes | memoryview = view[first:last + PAGE_SIZE]
            else:
                data = b"".join([view[o:o + PAGE_SIZE] for o in offs])
            self.writer.page_data(batch_pfns, data)
            n += len(batch_pfns)
            batch_pfns.clear()
            offs.clear()
            if progress is not None:
                progress(n)

        pfns = list(pfns)
        for i in range(0, len(pfns), MAX_BATCH):
            # The p2m may not change under a batch (ballooning, placements); the guest's
            # hypercalls wait at most one batch.
            with p2m.lock:
                for gfn in pfns[i:i + MAX_BATCH]:
                    off = p2m.page_offset(gfn)
                    if off is None:
                        continue  # ballooned out since: nothing to send
                    batch_pfns.append(gfn)
                    offs.append(off)
                if batch_pfns:
                    flush()
        self.pages_sent += n
        return n


def live_send(d: Domain, machine: Any, writer: Any, *, suspend: Callable[[], None],
              resume: Callable[[], None], final_state: Callable[[Any], None],
              policy: PrecopyPolicy | None = None, flush: Callable[[], None] = lambda: None,
              progress: Callable[[dict[str, Any]], None] | None = None,
              log_off: Callable[[Callable[[], None]], None] | None = None,
              drained: Callable[[], None] = lambda: None) -> PrecopyStats:
    """Run pre-copy onto `writer` (a stream.SaveWriter after begin()); returns the figures.
    On any exception the domain is resumed (if it was suspended here) and it propagates.
    On success the domain stays suspended and log-dirty mode is switched off by
    `log_off(disable)` if given (later), else at once. `drained()` returns once the
    receiver has read what was written (or gives up): called before the pause."""
    policy = policy or PrecopyPolicy()
    stats = PrecopyStats(started=time.time())
    from .domain_save import saved_pfns

    log = DirtyLog(machine.vm, d.memory.p2m)
    sender = PageSender(d, writer)
    suspended = False

    def report(phase: str, it: int, done: int, total: int) -> None:
        if progress is not None:
            progress({"phase": phase, "iteration": it, "done": done, "total": total})

    d.memory.dirty = log
    ok = False
    try:
        log.enable()
        pfns = saved_pfns(d)
        total = len(pfns)
        report("live", 0, 0, total)
        sender.send(pfns, lambda n: report("live", 0, n, total))
        stats.iterations.append(total)
        prev = total
        while True:
            dirty = log.fetch()
            if (len(dirty) <= policy.target_dirty or len(stats.iterations) >= policy.max_iters
                    or len(dirty) >= prev):
                break
            it, todo = len(stats.iterations), len(dirty)
            report("live", it, 0, todo)
            sent = sender.send(dirty, lambda n, it=it, t=todo: report("live", it, n, t))
            stats.iterations.append(sent)
            prev = len(dirty)
        # What the live rounds left in the buffer goes now, and the receiver catches up
        # with it, while the guest runs: the stopped phase then writes only the last
        # pages and the state into an empty transport (a 1 MiB buffer and a full pipe
        # behind a busy receiver cost 5-10 ms of downtime here, on both ends). What the
        # guest dirties meanwhile is fetched after the pause.
        flush()
        drained()
        stats.paused_at = t0 = time.time()
        suspend()
        suspended = True
        t1 = time.time()
        # What was dirty when the loop stopped, and what the guest wrote until it stopped.
        last = sorted(set(dirty).union(log.fetch(), placed_pfns(d)))
        report("stopped", len(stats.iterations), 0, len(last))
        stats.final_pages = sender.send(last)
        t2 = time.time()
        final_state(writer)
        t3 = time.time()
        writer.finish()
        flush()
        stats.stream_done = t4 = time.time()
        stats.stop_phases = {"suspend": t1 - t0, "pages": t2 - t1, "state": t3 - t2,
                             "end": t4 - t3}
        stats.bytes = getattr(writer, "bytes_written", 0)
        stats.pyxen_pages = log.stats["pyxen_pages"]
        report("done", len(stats.iterations), stats.final_pages, stats.final_pages)
        ok = True
        return stats
    except BaseException:
        if suspended:
            resume()
        raise
    finally:
        d.memory.dirty = None
        if ok and log_off is not None:
            log_off(log.disable)
        else:
            try:
                log.disable()
            except OSError:
                pass


def log_off_later(d: Domain, disable: Callable[[], None]) -> None:
    """Log-dirty mode off after a successful send, on a thread, once the handshake has
    had its time (LOG_OFF_DELAY_S) or at once when the domain is resumed: the ioctls on
    every memory slot (~7 ms for 512 MiB here) are not the guest's downtime."""
    now = threading.Event()

    def run() -> None:
        now.wait(LOG_OFF_DELAY_S)
        try:
            disable()
        except Exception:  # noqa: BLE001 - the VM may be going away (the source's destroy)
            pass

    t = threading.Thread(target=run, name=f"d{d.domid}-log-off", daemon=True)
    d.migration_log_off = (now, t)
    t.start()


def log_off_now(d: Domain) -> None:
    """Before the source's copy runs again: log-dirty mode is off."""
    pending = getattr(d, "migration_log_off", None)
    if pending is not None:
        d.migration_log_off = None
        now, t = pending
        now.set()
        t.join()


def unread_bytes(fd: int) -> int | None:
    """Octets written into the transport that the other end has not read yet: FIONREAD
    on a pipe (either end), SIOCOUTQ on a socket (a TCP one counts what is not acked);
    None where the kernel does not say (a file)."""
    try:
        mode = os.fstat(fd).st_mode
        req = (termios.FIONREAD if stat.S_ISFIFO(mode)
               else termios.TIOCOUTQ if stat.S_ISSOCK(mode) else None)
        if req is None:
            return None
        buf = array.array("i", [0])
        fcntl.ioctl(fd, req, buf, True)
        return buf[0]
    except OSError:
        return None


def wait_drained(fd: int, limit_s: float = DRAIN_WAIT_S) -> None:
    """Until the receiver has read everything written to fd, for limit_s at most."""
    deadline = time.monotonic() + limit_s
    while True:
        n = unread_bytes(fd)
        if not n or time.monotonic() >= deadline:
            return
        time.sleep(0.0005)


# --- the VMM's `migrate_send` op ----------------------------------------------------------


def vmm_op(d: Domain, machine: Any, req: dict[str, Any]) -> dict[str, Any]:
    """The VMM's migration ops: `migrate_send` (below), `migrate_resume` (the source
    copy carries on after a failed handshake: libxl_domain_resume; a no-op unless a
    migration left the domain suspended) and `migrate_probe` (the bench's baseline)."""
    if req.get("op") == "migrate_resume":
        from .savestate import resume_domain
        log_off_now(d)
        if getattr(d, "migration_suspended", False):
            d.migration_suspended = False
            resume_domain(machine, getattr(d, "migration_pv", False))
            return {"resumed": True}
        return {"resumed": False}
    if req.get("op") == "migrate_suspend_abort":  # hostd's suspend request failed
        abort = getattr(d, "migration_abort", None)
        if abort is not None:
            d.migration_abort_why = str(req.get("message") or "suspend failed")
            with d.cond:
                abort.set()
                d.cond.notify_all()
        return {}
    if req.get("op") == "migrate_probe":
        return probe_op(d, req)
    return migrate_send_op(d, machine, req)


def probe_op(d: Domain, req: dict[str, Any]) -> dict[str, Any]:
    """`migrate_probe` with `stream`, `bytes`: write that many octets of guest memory to
    the stream the way pre-copy does (1 MiB buffered writes of 4 MiB slices), nothing
    else. bench/migrate.py's baseline: what the transport itself costs."""
    from ..toolstack.streamfd import take_fd

    total = int(req.get("bytes", 512 << 20))
    view = d.memory.view
    span = min(len(view), 4 << 20)
    t0 = time.monotonic()
    with open(take_fd(req.get("stream")), "wb", buffering=1 << 20) as out:
        left = total
        while left:
            n = min(left, span)
            out.write(view[:n])
            left -= n
    return {"seconds": time.monotonic() - t0, "bytes": total}


def migrate_send_op(d: Domain, machine: Any, req: dict[str, Any]) -> dict[str, Any]:
    """`{"op": "migrate_send", "stream": {pid, fd}, "config": C, "max_iters"?,
    "target_dirty"?}`: take the stream's descriptor (toolstack/streamfd.py) and write the
    whole stream there: xl's header with the domain config C, the libxl stream around the
    libxc stream, pre-copied live. The domain is left suspended on success (the toolstack
    destroys it once the target runs, or resumes it); resumed on failure."""
    from ..toolstack.migration import SaveWriter  # the format layer (stream branch)
    from ..toolstack.streamfd import take_fd
    from .domain_save import send_state
    from .savestate import resume_domain, suspend_domain

    stream = req.get("stream")
    config = req.get("config")
    if not isinstance(config, dict):
        raise ValueError("migrate_send needs a 'config' object")
    policy = PrecopyPolicy(int(req.get("max_iters", 5)), int(req.get("target_dirty", 50)))
    pv = bool(req.get("pv_suspend"))
    log_off_now(d)  # a previous send's log (its slots' flags) is off before this one's
    d.migration_pv = pv
    d.migration_abort = threading.Event()

    def suspend() -> None:
        """libxl's suspend for the last round: a guest with PV control is asked (by hostd,
        on the migrate_suspend event: control/shutdown = "suspend") and suspends itself
        with SCHEDOP_shutdown(SHUTDOWN_suspend); then the domain is paused."""
        if pv:
            d.emit({"event": "migrate_suspend"})
            with d.cond:
                d.cond.wait_for(lambda: d.shutdown_reason is not None
                                or d.migration_abort.is_set(), SUSPEND_WAIT_S)
                reason = d.shutdown_reason
            if reason != SHUTDOWN_suspend:
                why = getattr(d, "migration_abort_why", None) or (
                    "guest did not suspend" if reason is None
                    else f"the domain shut down ({reason}) instead of suspending")
                raise MigrationError(why)
        suspend_domain(machine)
    with open(take_fd(stream), "wb", buffering=1 << 20) as out:
        writer = SaveWriter(out, config, xl_header=True)
        writer.begin()
        stats = live_send(d, machine, writer, suspend=suspend,
                          resume=lambda: resume_domain(machine, pv),
                          final_state=lambda w: send_state(d, machine, w),
                          policy=policy, flush=out.flush,
                          progress=lambda p: d.emit({"event": "migrate_progress", **p}),
                          log_off=lambda disable: log_off_later(d, disable),
                          drained=lambda: wait_drained(out.fileno()))
    d.migration_suspended = True
    return stats.as_dict()
