"""The VMM template (a fork server, Android's "zygote"): one warm, already-imported
process per host from which hostd gets each domain's VMM by fork() instead of starting a
new interpreter (python -m pyxen.vmm) per domain.

    python -m pyxen.vmm.template --rundir RUNDIR

It imports everything a VMM needs, collects and freezes the garbage collector's objects
(gc.freeze: the children's collections never write to the template's pages, so those
stay shared copy-on-write), then serves $RUNDIR/template/socket (mode 0600), one request
at a time, single-threaded:

    -> {"op": "spawn", "domid": N, "config": PATH, "env": {...}}   + 2 fds (SCM_RIGHTS):
       the VMM's stdout (hostd reads the "built" line there) and stderr (vmm.log)
    <- {"ok": true, "pid": P}
    -> {"op": "ping"}  <- {"ok": true, "pid": TEMPLATE_PID, "code": FINGERPRINT}

FINGERPRINT (pyxen/codeid.py) says which pyxen code the template imported, and so which
code its children run: a hostd of other code replaces the template rather than adopt it.

The child becomes the VMM exactly as ``python -m pyxen.vmm --domid N --config PATH``
would (vmm/main.py): its own session, its own sockets. Before that it closes every
descriptor but the three it was given, so no domain sees the template's socket or
another domain's anything: the template never builds or runs a domain, so a child
inherits only imported code and module state. SIGCHLD is ignored here: the kernel reaps
the children, and they outlive the template (hostd restarts a dead template:
toolstack/template.py).
"""

from __future__ import annotations

import _signal
import argparse
import gc
import importlib
import json
import os
import pkgutil
import signal
import socket
import sys
import threading
import traceback
from pathlib import Path

#: the packages a VMM runs (everything in them is imported, except __main__ modules)
VMM_PACKAGES = ("pyxen.vmm", "pyxen.arch", "pyxen.hypervisor", "pyxen.backends")
#: library modules the VMM imports lazily on its usual paths
VMM_LIBRARY = ("asyncio", "asyncio.unix_events", "concurrent.futures.thread", "ctypes",
               "ctypes.util", "json", "uuid", "traceback", "argparse", "mmap",
               "pyxen.xenstore.client")
MAX_REQUEST = 1 << 16
#: hostd starts the template with this argument, a run of spaces, so that its argv area
#: has room for each child's command line (set_cmdline)
TITLE_ROOM = "--title-room"


def set_cmdline(args: list[str]) -> bool:
    """Rewrite this process's /proc/PID/cmdline in place (its argv area, as
    setproctitle does) so that ps, and whoever looks for a VMM by its command line, sees
    a forked VMM as ``python -m pyxen.vmm --domid N --config PATH``, as if started so."""
    try:  # bytes, no text I/O: what a forked VMM runs first should touch little
        fd = os.open("/proc/self/stat", os.O_RDONLY)
        try:
            fields = os.read(fd, 4096).rsplit(b")", 1)[1].split()
        finally:
            os.close(fd)
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (man 5 proc)
    except (OSError, IndexError, ValueError):
        return False
    raw = "\0".join(args).encode() + b"\0"
    if end <= start or len(raw) > end - start:
        return False
    import ctypes
    ctypes.memmove(start, raw + b"\0" * (end - start - len(raw)), end - start)
    return True


def preload() -> list[str]:
    """Import what a VMM imports; the names of the modules that failed (logged only)."""
    failed = []
    for name in VMM_LIBRARY:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the child imports it again and reports
            failed.append(name)
    for pkg_name in VMM_PACKAGES:
        pkg = importlib.import_module(pkg_name)
        for info in pkgutil.walk_packages(pkg.__path__, pkg_name + "."):
            if info.name.rsplit(".", 1)[-1] == "__main__" or info.name == __name__:
                continue
            try:
                importlib.import_module(info.name)
            except Exception:  # noqa: BLE001
                failed.append(info.name)
    warm()
    return failed


def warm() -> None:
    """Run, once, the generic code every VMM runs (an event loop, JSON, a thread), so that
    what it creates lazily (caches, specialised bytecode) is the template's and shared,
    not made again in each child. Nothing here touches KVM or any domain."""
    import asyncio
    import json as _json
    import tempfile

    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while line := await r.readline():
            w.write(line)
            await w.drain()
        w.close()

    async def serve(path: str) -> None:
        """A unix-socket server and its clients, as control.sock and console.sock are
        served (vmm/server.py), round after round: code run often enough here is
        specialised here (CPython 3.11), and a child runs it without rewriting it."""
        await asyncio.get_running_loop().run_in_executor(None, lambda: None)
        srv = await asyncio.start_unix_server(echo, path)
        for _ in range(10):
            r, w = await asyncio.open_unix_connection(path)
            w.write(_json.dumps({"event": "log", "id": 1, "ok": True, "line": "x"}).encode()
                    + b"\n")
            await w.drain()
            _json.loads(await r.readline())
            w.close()
            await w.wait_closed()
        srv.close()
        await srv.wait_closed()

    with tempfile.TemporaryDirectory(prefix="pyxen-template-") as d:
        asyncio.run(serve(os.path.join(d, "warm.sock")))
    t = threading.Thread(target=lambda: None, name="warm")
    t.start()
    t.join()


def _recv_request(conn: socket.socket) -> tuple[dict, list[int]]:
    data, fds = b"", []
    while not data.endswith(b"\n") and len(data) < MAX_REQUEST:
        chunk, got, _flags, _addr = socket.recv_fds(conn, MAX_REQUEST, 4)
        fds += got
        if not chunk:
            break
        data += chunk
    try:
        req = json.loads(data)
    except ValueError:
        req = None
    return (req if isinstance(req, dict) else {}), fds


def _child(listener: socket.socket, conn: socket.socket, req: dict, fds: list[int]) -> None:
    """In the forked child: become domain N's VMM; never returns."""
    rc = 70
    try:
        # first thing: until then this process reads as the template to whoever looks for
        # a domain's VMM by its command line (a hostd restarted mid-create, tests)
        domid, config = int(req["domid"]), str(req["config"])
        sys.argv = [sys.executable, "-m", "pyxen.vmm", "--domid", str(domid), "--config",
                    config]
        set_cmdline(sys.argv)
        os.setsid()
        # _signal, not signal: the wrapper's enum conversions would copy enum's pages
        for sig in (_signal.SIGCHLD, _signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP):
            _signal.signal(sig, _signal.SIG_DFL)
        os.close(listener.detach())  # detach: the objects must not close a reused fd later
        os.close(conn.detach())
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # null, fds and anything else
        for k, v in (req.get("env") or {}).items():
            os.environ[str(k)] = str(v)  # (update() would run the Mapping ABCs' code)
        os.chdir("/")
        from .main import run
        rc = run(domid, config)  # main() without its argparse (main.run says why)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - report, then go: never back to the template loop
        traceback.print_exc()
    finally:
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except Exception:  # noqa: BLE001, S110 - stdout may be closed by announce()
                pass
        os._exit(rc)


def spawn(listener: socket.socket, conn: socket.socket, req: dict, fds: list[int]) -> dict:
    if not isinstance(req.get("domid"), int) or not isinstance(req.get("config"), str):
        return {"ok": False, "error": "spawn needs an integer 'domid' and a 'config' path"}
    if len(fds) != 2:
        return {"ok": False, "error": "spawn needs 2 descriptors (stdout, stderr)"}
    if threading.active_count() != 1:  # a fork of a threaded process can deadlock
        return {"ok": False, "error": "the template has threads: it cannot fork"}
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _child(listener, conn, req, fds)
    return {"ok": True, "pid": pid}


def serve(listener: socket.socket) -> None:
    from pyxen.codeid import fingerprint
    code = fingerprint()
    while True:
        conn, _ = listener.accept()
        fds: list[int] = []
        try:
            conn.settimeout(5)
            req, fds = _recv_request(conn)
            op = req.get("op")
            if op == "spawn":
                reply = spawn(listener, conn, req, fds)
            elif op == "ping":
                reply = {"ok": True, "pid": os.getpid(), "code": code}
            else:
                reply = {"ok": False, "error": f"unknown op {op!r}"}
            conn.sendall(json.dumps(reply).encode() + b"\n")
        except OSError as e:
            print(f"template: request failed: {e}", file=sys.stderr, flush=True)
        finally:
            for fd in fds:
                os.close(fd)
            conn.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pyxen.vmm.template",
                                 description="pyxen VMM template (fork server)")
    ap.add_argument("--rundir", required=True)
    ap.add_argument(TITLE_ROOM, default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    set_cmdline([sys.executable, "pyxen-vmm-template", "--rundir", args.rundir])
    os.environ["PYXEN_RUNDIR"] = args.rundir
    tdir = Path(args.rundir) / "template"
    tdir.mkdir(parents=True, exist_ok=True)
    from pyxen.codeid import fingerprint
    fingerprint()  # of the code imported now, before anything on disk can change
    failed = preload()
    if failed:
        print(f"template: not preloaded: {', '.join(failed)}", file=sys.stderr, flush=True)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the VMMs
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    path = tdir / "socket"
    tmp = tdir / f"socket.{os.getpid()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        tmp.unlink(missing_ok=True)
        listener.bind(str(tmp))
        os.chmod(tmp, 0o600)
        listener.listen(64)
        os.replace(tmp, path)  # ready: it accepts from the moment it has its name
        (tdir / "pid").write_text(f"{os.getpid()}\n")
        gc.collect()
        gc.freeze()  # from here the children share the template's objects' pages
        from .main import trim_heap
        trim_heap()  # the import-time garbage's pages go back to the host, not to children
        print(f"template: pid {os.getpid()} ready on {path}", file=sys.stderr, flush=True)
        serve(listener)
    finally:
        if _owns(path):
            path.unlink(missing_ok=True)
            (tdir / "pid").unlink(missing_ok=True)
        listener.close()
    return 0


def _owns(path: Path) -> bool:
    """Whether the socket at `path` is still this template's (not a successor's)."""
    try:
        return int((path.parent / "pid").read_text()) == os.getpid()
    except (OSError, ValueError):
        return False


if __name__ == "__main__":
    sys.exit(main())
