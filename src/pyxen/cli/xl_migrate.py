"""xl migrate / xl migrate-receive (tools/xl/xl_migrate.c), with xl's handshake and
messages. The work is hostd's (toolstack/migrate.py) and the VMM's (vmm/precopy.py).

Transport, as xl: `xl migrate DOMAIN HOST` runs `sh -c "exec SSHCOMMAND HOST xl
migrate-receive"` (SSHCOMMAND is `ssh` unless -s gives another; `-s ''` makes HOST the
whole command) and speaks over that command's stdin/stdout. For hosts without ssh, pyxen
adds a direct TCP mode: `xl migrate-receive --listen [ADDR:]PORT` on the target, then
`xl migrate DOMAIN tcp://HOST:PORT` on the source (one connection carries both ways).

The protocol on the transport (xl's): the receiver's banner line; the save image (xl's
header, libxl stream, libxc stream); "domain received, ready to unpause" from the target;
the source renames its copy NAME--migratedaway (xl on that message; pyxen while it waits
for it, off the guest's downtime) and sends "domain is yours, you are cleared to
unpause"; the target renames its NAME--incoming copy to NAME, unpauses it and answers
"my copy unpause results are as follows" and a status octet (0: running). Only then is the
source destroyed. Messages are NUL-terminated (xl writes sizeof), the banner is not.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from ..toolstack.streamfd import stream_spec

CONTEXT = {"help_option_names": ["-h", "--help"]}
_xl: Any = None

MIGRATE_RECEIVER_BANNER = b"xl migration receiver ready, send binary domain data.\n"
MIGRATE_RECEIVER_READY = b"domain received, ready to unpause\0"
MIGRATE_PERMISSION_TO_GO = b"domain is yours, you are cleared to unpause\0"
MIGRATE_REPORT = b"my copy unpause results are as follows\0"

FAILED_BADLY = (
    "** Migration failed during final handshake **\n"
    "Domain state is now undefined !\n"
    "Please CHECK AT BOTH ENDS for running instances, before renaming and\n"
    " resuming at most one instance.  Two simultaneous instances of the domain\n"
    " would probably result in SEVERE DATA LOSS and it is now your\n"
    " responsibility to avoid that.  Sorry.")

cli = click.Group()



class Hostd:
    """One connection to hostd kept for the whole handshake: the requests made while the
    domain is down (rename, unpause) cost a round trip each, not a new connection."""

    def __init__(self) -> None:
        self.client = _xl.connect()

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        from ..toolstack.client import HostdError

        try:
            return self.client.request(op, **args)
        except HostdError as e:
            raise OpFailed(str(e)) from None

    def close(self) -> None:
        self.client.close()


class OpFailed(Exception):
    pass


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class HandshakeError(Exception):
    pass


def read_exactly(fd: int, n: int, what: str, stream: str) -> bytes:
    buf = b""
    while len(buf) < n:
        try:
            chunk = os.read(fd, n - len(buf))
        except OSError as e:
            raise HandshakeError(f"{stream}: read error on {what}: {e.strerror}") from None
        if not chunk:
            raise HandshakeError(f"{stream}: unexpected end of file reading {what}")
        buf += chunk
    return buf


def read_fixed(fd: int, msg: bytes, what: str, rune: str | None) -> None:
    """migrate_read_fixedmessage: exactly `msg`, else one of xl's two complaints."""
    stream = "migration receiver stream" if rune else "migration stream"
    if read_exactly(fd, len(msg), what, stream) != msg:
        text = f"{stream} contained unexpected data instead of {what}"
        if rune:
            text += f"\n(command run was: {rune} )"
        raise HandshakeError(text)


def write_all(fd: int, data: bytes, what: str) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except OSError as e:
            raise HandshakeError(f"migration stream: write error on {what}: "
                                 f"{e.strerror}") from None
        view = view[n:]


# --- progress ------------------------------------------------------------------------------


class Progress:
    """libxc's progress lines on stderr (`xc: progress: ...`), or a rich bar on a terminal;
    fed by the VMM's migrate_progress events (its control.sock)."""

    def __init__(self, control: Path, domid: int) -> None:
        self.control = control
        self.domid = domid
        self.tty = sys.stderr.isatty()
        self.sock: socket.socket | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self._last: tuple[Any, ...] | None = None

    def start(self) -> None:
        try:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(str(self.control))
        except OSError:
            self.sock = None
            return
        self.thread.start()

    def stop(self) -> None:
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.thread.join(2)
            self.sock.close()

    def _events(self):
        assert self.sock is not None
        for line in self.sock.makefile("rb"):
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if isinstance(ev, dict) and ev.get("event") == "migrate_progress":
                yield ev

    def _run(self) -> None:
        try:
            if self.tty:
                self._run_rich()
            else:
                self._run_lines()
        except (OSError, ValueError):
            pass

    def _run_lines(self) -> None:
        for ev in self._events():
            phase, it, done, total = ev["phase"], ev["iteration"], ev["done"], ev["total"]
            if phase == "done":  # the stopped round is complete
                phase, done, total = "stopped", total, total
            # libxc's xc_report_progress_step: one line at the start and end of a round.
            if done not in (0, total) or (phase, it, done) == self._last:
                continue
            self._last = (phase, it, done)
            what = (f"Frames iteration {it}" if phase == "live"
                    else "Frames (domain suspended)")
            pct = 100 * done // total if total else 100
            say(f"xc: progress: {what}: {done}/{total}  {pct:3d}%")
            if ev["phase"] == "done":
                break

    def _run_rich(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
        from rich.progress import Progress as Bar

        with Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                 console=Console(stderr=True), transient=False) as bar:
            task = None
            key = None
            for ev in self._events():
                if ev["phase"] == "done":
                    if task is not None:
                        bar.update(task, completed=ev["total"])
                    break
                k = (ev["phase"], ev["iteration"])
                if k != key:
                    key = k
                    desc = (f"iteration {ev['iteration']}" if ev["phase"] == "live"
                            else "domain suspended")
                    task = bar.add_task(desc, total=max(ev["total"], 1))
                bar.update(task, completed=ev["done"])


# --- xl migrate ----------------------------------------------------------------------------


def _rune(ssh: str, host: str, debug: bool, pause: bool, daemonize: bool) -> str:
    if not ssh:
        return host
    return (f"exec {ssh} {host} xl migrate-receive{'' if daemonize else ' -e'}"
            f"{' -d' if debug else ''}{' -p' if pause else ''}")


def _tcp_target(host: str) -> tuple[str, int] | None:
    if not host.startswith("tcp://"):
        return None
    addr, _, port = host[len("tcp://"):].rpartition(":")
    if not addr or not port.isdigit():
        _xl.fail(f"migrate: bad TCP target {host!r}: use tcp://HOST:PORT")
    return addr.strip("[]"), int(port)


@cli.command("migrate", context_settings=CONTEXT)
@click.option("-s", "ssh", default="ssh", metavar="SSHCOMMAND",
              help="Use SSHCOMMAND instead of ssh; '' makes HOST the whole command.")
@click.option("-C", "config_file", metavar="CONFIG",
              help="Send CONFIG instead of the config file the domain was created with.")
@click.option("-e", "no_daemon", is_flag=True, help="Do not wait in the background on the "
              "target (accepted for xl compatibility).")
@click.option("-p", "pause", is_flag=True, help="Leave the domain paused on the target.")
@click.option("--debug", is_flag=True, help="Report the pre-copy figures.")
@click.option("--max-iters", type=int, default=None, hidden=True)
@click.argument("domain")
@click.argument("host")
def migrate(ssh: str, config_file: str | None, no_daemon: bool, pause: bool, debug: bool,
            max_iters: int | None, domain: str, host: str) -> None:
    """Migrate a domain to another host (live)."""
    rows = _xl.call("list", domains=[domain])["domains"]
    if not rows:
        _xl.fail(f"Error: Domain '{domain}' does not exist.")
    row = rows[0]
    domid, name = row["domid"], row["name"]
    override = None
    if config_file is not None:
        override = _load_config(config_file)
    tcp = _tcp_target(host)
    child: subprocess.Popen[bytes] | None = None
    rune: str | None = None
    sock: socket.socket | None = None
    if tcp is not None:
        try:
            sock = socket.create_connection(tcp, timeout=30)
            sock.settimeout(None)
        except OSError as e:
            _xl.fail(f"migrate: cannot connect to {tcp[0]}:{tcp[1]}: {e.strerror or e}")
        send_fd = recv_fd = sock.fileno()
    else:
        rune = _rune(ssh, host, debug, pause, not no_daemon)
        child = subprocess.Popen(["sh", "-c", rune], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE)
        assert child.stdin is not None and child.stdout is not None
        send_fd, recv_fd = child.stdin.fileno(), child.stdout.fileno()

    def close_transport() -> None:
        if sock is not None:
            sock.close()
        if child is not None:
            for f in (child.stdin, child.stdout):
                try:
                    f.close()  # type: ignore[union-attr]
                except OSError:
                    pass
            try:
                child.wait(2)
            except subprocess.TimeoutExpired:
                say(f"migration child [{child.pid}] not exiting, no longer waiting "
                    "(exit status will be unreported)")

    try:
        read_fixed(recv_fd, MIGRATE_RECEIVER_BANNER, "banner", rune)
    except HandshakeError as e:
        say(str(e))
        close_transport()
        sys.exit(1)

    progress = Progress(Path(row["console"]).parent / "control.sock", domid)
    progress.start()
    say(f"xc: info: Saving domain {domid}, type x86 HVM")
    args: dict[str, Any] = {"domain": domid, "stream": stream_spec(send_fd)}
    if override is not None:
        args["config"] = override
    if max_iters is not None:
        args["max_iters"] = max_iters
    hostd = Hostd()
    try:
        stats = hostd.call("migrate_send", **args)
    except OpFailed as e:  # hostd's error line, then xl's
        progress.stop()
        say(str(e))
        say("migration sender: libxl_domain_suspend failed (rc=-3)")
        close_transport()
        say("Migration failed, resuming at sender.")
        _resume(hostd, domid)
        sys.exit(1)
    replied = time.time()
    progress.stop()
    if debug:
        say(f"migration sender: {len(stats['iterations'])} live iteration(s) "
            f"{stats['iterations']}, {stats['final_pages']} page(s) with the domain "
            f"suspended, {stats['bytes']} bytes; paused at {stats['paused_at']:.6f}, "
            f"stream done at {stats['stream_done']:.6f}")
        phases = ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in stats["stop_phases"].items())
        say(f"migration sender: domain suspended: {phases}")
        say(f"migration sender: hostd replied at {replied:.6f}")

    try:
        # xl renames its copy once the target is ready; here the rename is done while
        # the target finishes its restore (off the guest's downtime), the messages are
        # xl's. A failure from here on renames it back (hostd's migrate_resume).
        hostd.call("domain_rename", domain=domid, name=f"{name}--migratedaway")
        renamed = time.time()
        read_fixed(recv_fd, MIGRATE_RECEIVER_READY, "ready message", rune)
        if debug:
            say(f"migration sender: renamed at {renamed:.6f}, target ready at "
                f"{time.time():.6f}")
        say("migration sender: Target has acknowledged transfer.")
    except (HandshakeError, OpFailed) as e:
        say(str(e))
        close_transport()
        say("Migration failed, resuming at sender.")
        _resume(hostd, domid)
        sys.exit(1)

    # Point of no return: once "go" may have reached the target, resuming here could run
    # the domain twice.
    say("migration sender: Giving target permission to start.")
    try:
        write_all(send_fd, MIGRATE_PERMISSION_TO_GO, "GO message")
        read_fixed(recv_fd, MIGRATE_REPORT, "success/failure report message", rune)
        status = read_exactly(recv_fd, 1, "success/failure status", "migration ack stream")[0]
        if status:
            say(f"migration sender: Target reports startup failure (status code {status}).")
            read_fixed(recv_fd, MIGRATE_PERMISSION_TO_GO, "permission for sender to resume",
                       rune)
            say("migration sender: Trying to resume at our end.")
            _rename_back(hostd, domid, name)
            if _resume(hostd, domid):
                say("migration sender: Resumed OK.")
            say("Migration failed due to problems at target.")
            close_transport()
            sys.exit(1)
    except HandshakeError as e:
        say(str(e))
        say(FAILED_BADLY)
        close_transport()
        sys.exit(1)
    say("migration sender: Target reports successful startup.")
    hostd.call("destroy", domain=domid)
    hostd.close()
    close_transport()
    say("Migration successful.")


def _load_config(path: str) -> dict[str, Any]:
    from ..toolstack import config as domconfig

    try:
        return domconfig.load(path, []).to_json()
    except Exception as e:  # noqa: BLE001 - a config error is one line
        _xl.fail(str(e))


def _resume(hostd: Hostd, domid: int) -> bool:
    """libxl_domain_resume, with the name the domain had (hostd's migrate_resume renames
    NAME--migratedaway back)."""
    try:
        hostd.call("migrate_resume", domain=domid)
        return True
    except OpFailed as e:
        say(f"migration sender: resume failed: {e}")
        return False


def _rename_back(hostd: Hostd, domid: int, name: str) -> None:
    try:
        hostd.call("domain_rename", domain=domid, name=name)
    except OpFailed as e:
        say(f"migration sender: rename back to {name} failed: {e}")


# --- xl migrate-receive --------------------------------------------------------------------


def _listen(spec: str) -> socket.socket:
    addr, _, port = spec.rpartition(":")
    if not port.isdigit():
        _xl.fail(f"migrate-receive: bad --listen {spec!r}: use [ADDR:]PORT")
    srv = socket.create_server((addr.strip("[]") or "0.0.0.0", int(port)))
    say(f"migration target: listening on {addr or '0.0.0.0'}:{port}")
    conn, _ = srv.accept()
    srv.close()
    return conn


@cli.command("migrate-receive", context_settings=CONTEXT)
@click.option("-d", "debug", is_flag=True, help="Debug.")
@click.option("-e", "no_daemon", is_flag=True, help="Accepted for xl compatibility.")
@click.option("-p", "pause", is_flag=True, help="Leave the domain paused after migration.")
@click.option("--listen", metavar="[ADDR:]PORT", default=None,
              help="pyxen: take the stream from one TCP connection instead of stdin/stdout.")
def migrate_receive(debug: bool, no_daemon: bool, pause: bool, listen: str | None) -> None:
    """Receive a migrating domain (run by xl migrate on the target host)."""
    conn = _listen(listen) if listen else None
    recv_fd = conn.fileno() if conn else 0
    send_fd = conn.fileno() if conn else 1
    say("migration target: Ready to receive domain.")
    try:
        write_all(send_fd, MIGRATE_RECEIVER_BANNER, "banner")
    except HandshakeError as e:
        _xl.fail(str(e))
    hostd = Hostd()
    try:
        r = hostd.call("migrate_receive", stream=stream_spec(recv_fd))
    except OpFailed as e:
        say(str(e))
        say("migration target: Domain creation failed (code -3).")
        sys.exit(1)
    domid, common = r["domid"], r["common_name"]
    if debug:  # bench/migrate.py's breakdown of the target's part of the downtime
        say(f"migration target: image end at {r.get('image_end_at') or 0:.6f}, VMM restored "
            f"at {r.get('vmm_restored_at') or 0:.6f}, hostd at {r.get('hostd_at') or 0:.6f}, "
            f"replied at {r.get('replied_at') or 0:.6f}")
        say(f"migration target: restored at {time.time():.6f}")
    say("migration target: Transfer complete, requesting permission to start domain.")
    rc = 0
    try:
        write_all(send_fd, MIGRATE_RECEIVER_READY, "ready message")
        read_fixed(recv_fd, MIGRATE_PERMISSION_TO_GO, "GO message", None)
    except HandshakeError as e:
        # The source is gone or said something else: it keeps (or resumes) its copy, so
        # ours must go (xl would leave NAME--incoming paused here).
        say(str(e))
        _destroy_copy(hostd, domid)
        sys.exit(1)
    if debug:
        say(f"migration target: permission at {time.time():.6f}")
    say("migration target: Got permission, starting domain.")
    try:  # libxl_domain_rename + libxl_domain_unpause, in one request to hostd
        started = hostd.call("migrate_go", domain=domid, name=common, unpause=not pause)
        say("migration target: Domain started successsfully.")
        if debug:
            say(f"migration target: go at {started.get('go_at') or 0:.6f}, "
                f"unpaused at {started['unpaused_at']:.6f}")
    except OpFailed as e:
        say(str(e))
        rc = 3
    try:
        write_all(send_fd, MIGRATE_REPORT + bytes([rc]), "success/failure report")
    except HandshakeError as e:
        say(str(e))
        if rc:
            _destroy_copy(hostd, domid)
        sys.exit(1)
    if rc:
        _destroy_copy(hostd, domid)
        say("migration target: Cleanup OK, granting sender permission to resume.")
        try:
            write_all(send_fd, MIGRATE_PERMISSION_TO_GO, "permission for sender to resume")
        except HandshakeError as e:
            say(str(e))
        sys.exit(1)


def _destroy_copy(hostd: Hostd, domid: int) -> None:
    say("migration target: Failure, destroying our copy.")
    try:
        hostd.call("migrate_abort", domain=domid)
    except OpFailed as e:
        say(f"migration target: Failed to destroy our copy ({e}).")

