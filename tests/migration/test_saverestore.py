"""xl save / xl restore with a real guest (guests/savetest.c): the guest counts in ring 3
and keeps a 16 MiB memory pattern; its reports (counter, pattern checksum) before and
after tell whether it carried on exactly. Failure paths: the domain keeps running with
its memory intact; a bad image creates nothing."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
from xlhost import REPO, Host, have_vmm

pytestmark = pytest.mark.skipif(not have_vmm(), reason="needs /dev/kvm and the test guests")

GUEST = REPO / "guests" / "build" / "savetest.elf"
REPORT = re.compile(r"seq=(\S+) counter=(\d+) sum=([0-9a-f]{16}) dom=(\d+) resumed=(\d+) "
                    r"cancelled=(\d+) time=(\d+) disk=(\S+)")


def write_cfg(tmp_path: Path, name: str = "st", cmdline: str = "mode=pv",
              kernel: Path = GUEST, disk: Path | None = None) -> Path:
    f = tmp_path / f"{name}.cfg"
    f.write_text(f'name = "{name}"\ntype = "pvh"\nkernel = "{kernel}"\nmemory = 64\n'
                 f'vcpus = 1\ncmdline = "{cmdline}"\non_poweroff = "destroy"\n'
                 'on_crash = "preserve"\n'
                 + (f"disk = [ '{disk},raw,xvda,rw' ]\n" if disk else ""))
    return f


def create(host: Host, cfg: Path) -> int:
    host.xl("create", str(cfg), check=True)
    return int(host.list()[cfg.stem]["id"])


def ask(host: Host, domid: int, seq: str, pattern: re.Pattern[str]) -> re.Match[str]:
    """Ask the guest (data/request = seq) and wait for its answer (data/report, matching
    `pattern`, whose first group echoes seq)."""
    base = f"/local/domain/{domid}/data"
    r = host.xenstore("xenstore-write", f"{base}/request", seq)
    assert r.returncode == 0, r.stderr

    def answered() -> re.Match[str] | None:
        out = host.xenstore("xenstore-read", f"{base}/report").stdout.strip()
        m = pattern.fullmatch(out)
        return m if m and m.group(1) == seq else None

    return host.wait_for(answered, f"the guest's report {seq}", timeout=60)


def report(host: Host, domid: int, seq: str) -> dict[str, int | str]:
    """savetest's report: its counter, memory checksum, domid, resume counts, disk."""
    m = ask(host, domid, seq, REPORT)
    return {"counter": int(m.group(2)), "sum": m.group(3), "dom": int(m.group(4)),
            "resumed": int(m.group(5)), "cancelled": int(m.group(6)), "time": int(m.group(7)),
            "disk": m.group(8)}


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode != 0, r
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_save_restore_continues_exactly(host: Host, tmp_path: Path) -> None:
    """xl save: the guest suspends (PV control), the domain is gone; xl restore: a new
    domid, the counter goes on from where it was, the pattern's checksum is the same,
    and the guest saw SCHEDOP_shutdown return 0 (a new domain) and reconnected."""
    domid = create(host, write_cfg(tmp_path))
    before = report(host, domid, "1")
    img = tmp_path / "st.img"
    t0 = time.monotonic()
    host.xl("save", "st", str(img), check=True)
    t_save = time.monotonic() - t0
    assert "st" not in host.list()
    assert not (host.root / "domains" / str(domid)).exists()
    t0 = time.monotonic()
    r = host.xl("restore", str(img), check=True)
    t_restore = time.monotonic() - t0
    assert r.stderr == ""
    rows = host.list()
    new = int(rows["st"]["id"])
    assert new != domid and rows["st"]["state"].startswith("r")
    after = report(host, new, "2")
    assert after["sum"] == before["sum"]
    assert after["counter"] > before["counter"]
    assert after["dom"] == new and after["resumed"] == 1 and after["cancelled"] == 0
    # Xen system time went on from where it was (monotonic for the guest)
    assert after["time"] > before["time"]
    log = (host.root / "console" / "guest-st.log").read_text()
    assert f"savetest: resumed in domain {new}" in log
    print(f"\nsave {t_save:.2f} s, restore {t_restore:.2f} s (xl wall clock), image "
          f"{img.stat().st_size} bytes for a 64 MiB guest")
    host.xl("destroy", "st", check=True)
    host.assert_clean()


def test_disk_reconnects_after_restore(host: Host, tmp_path: Path) -> None:
    """A guest with a PV disk: after restore its blkfront forgets the old domain's rings
    and grants, connects to the new domain's backend and reads back what it wrote."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    domid = create(host, write_cfg(tmp_path, cmdline="mode=pv disk=1", disk=disk))
    before = report(host, domid, "1")
    assert before["disk"] == "ok"
    host.xl("save", "st", str(tmp_path / "d.img"), check=True)
    host.xl("restore", str(tmp_path / "d.img"), check=True)
    new = int(host.list()["st"]["id"])
    after = report(host, new, "2")
    assert after["disk"] == "ok" and after["resumed"] == 1 and after["sum"] == before["sum"]
    rows = host.xl("block-list", "st", check=True).stdout.splitlines()
    assert len(rows) == 2 and rows[1].split()[3] == "4", rows  # Connected
    host.xl("destroy", "st", check=True)
    host.assert_clean()


def test_checkpoint_and_paused(host: Host, tmp_path: Path) -> None:
    """-c: the original keeps running (its suspend returned 1: cancelled); -p: kept but
    paused; restore -p: created paused; the image of a running domain restores once the
    name is free again."""
    domid = create(host, write_cfg(tmp_path))
    first = report(host, domid, "1")
    img = tmp_path / "c.img"
    host.xl("save", "-c", "st", str(img), check=True)
    assert host.list()["st"]["id"] == str(domid)
    after_c = report(host, domid, "2")
    assert after_c["cancelled"] == 1 and after_c["resumed"] == 0
    assert after_c["counter"] > first["counter"] and after_c["sum"] == first["sum"]
    r = host.xl("restore", str(img))
    assert 'Domain with name "st" already exists' in one_line_error(r)
    # xl restore CONFIG FILE: the same image as a second domain beside the original (a
    # restore loads no kernel: the configuration's need not exist here)
    clone_cfg = write_cfg(tmp_path, name="clone", kernel=tmp_path / "gone.elf")
    host.xl("restore", str(clone_cfg), str(img), check=True)
    clone = report(host, int(host.list()["clone"]["id"]), "c1")
    assert clone["resumed"] == 1 and clone["cancelled"] == 0
    assert clone["sum"] == first["sum"] and clone["counter"] > first["counter"]
    host.xl("destroy", "clone", check=True)
    host.xl("pause", "st", check=True)
    line = one_line_error(host.xl("save", "st", str(tmp_path / "x.img")))
    assert "is paused and has PV drivers" in line and not (tmp_path / "x.img").exists()
    host.xl("unpause", "st", check=True)
    host.xl("save", "-p", "st", str(tmp_path / "p.img"), check=True)
    assert host.list()["st"]["state"] == "--p---"
    host.xl("unpause", "st", check=True)
    after_p = report(host, domid, "3")
    assert after_p["cancelled"] == 2 and after_p["counter"] > after_c["counter"]
    host.xl("destroy", "st", check=True)
    host.xl("restore", "-p", str(img), check=True)
    row = host.list()["st"]
    assert row["state"] == "--p---"
    host.xl("unpause", "st", check=True)
    restored = report(host, int(row["id"]), "4")
    assert restored["resumed"] == 1 and restored["cancelled"] == 0
    assert restored["sum"] == first["sum"] and restored["counter"] > first["counter"]
    host.xl("destroy", "st", check=True)
    host.assert_clean()


def _nopv_reports(host: Host, domid: int) -> list[tuple[int, str]]:
    lines = host.xl("dmesg", check=True).stdout.splitlines()
    out = []
    for ln in lines:
        if ln.startswith(f"(d{domid}) savetest: "):
            m = REPORT.search(ln)
            if m:
                out.append((int(m.group(2)), m.group(3)))
    return out


def test_guest_without_pv_control_is_saved_as_is(host: Host, tmp_path: Path) -> None:
    """No PV drivers: no suspend request, the domain is paused and saved as it is; after
    restore it runs on without knowing (its debug-port reports continue)."""
    domid = create(host, write_cfg(tmp_path, cmdline="mode=nopv every=5"))
    reports = host.wait_for(lambda: _nopv_reports(host, domid), "a report on the debug port")
    img = tmp_path / "n.img"
    host.xl("save", "st", str(img), check=True)
    dmesg = host.xl("dmesg", check=True).stdout
    assert f"Domain {domid} (st): suspend requested" not in dmesg
    last = _nopv_reports(host, domid)[-1]
    host.xl("restore", str(img), check=True)
    new = int(host.list()["st"]["id"])
    later = host.wait_for(lambda: _nopv_reports(host, new), "a report after restore")
    assert later[0][1] == reports[0][1]  # the pattern survived
    assert later[0][0] > last[0]
    host.xl("destroy", "st", check=True)
    host.assert_clean()


def test_blocked_guest_restores_blocked(host: Host, tmp_path: Path) -> None:
    """A vCPU parked in SCHEDOP_block (hello.elf mode=block, no PV control) is saved as
    Xen has it (the hypercall returned 0, the vCPU descheduled): restored, it is a running
    domain that blocks again, not a crashed one."""
    cfg = tmp_path / "blk.cfg"
    cfg.write_text(f'name = "blk"\ntype = "pvh"\nkernel = "{REPO}/guests/build/hello.elf"\n'
                   'memory = 32\nvcpus = 1\ncmdline = "mode=block"\non_crash = "preserve"\n')
    host.xl("create", str(cfg), check=True)
    host.wait_for(lambda: "blocked, no PV drivers" in host.xl("dmesg").stdout, "the guest")
    host.wait_for(lambda: host.list()["blk"]["state"] == "-b----", "state b")
    host.xl("save", "blk", str(tmp_path / "b.img"), check=True)
    host.xl("restore", str(tmp_path / "b.img"), check=True)
    time.sleep(1)
    assert host.list()["blk"]["state"] == "-b----"
    assert "crash" not in host.xl("dmesg").stdout.split("restored from")[-1]
    host.xl("destroy", "blk", check=True)
    host.assert_clean()


def test_failed_saves_leave_the_domain_running(host: Host, tmp_path: Path) -> None:
    """Unwritable file, /dev/full, a full file system: one error line, the guest's
    suspend is cancelled and it carries on with its memory unchanged; no partial file."""
    domid = create(host, write_cfg(tmp_path))
    first = report(host, domid, "1")
    line = one_line_error(host.xl("save", "st", str(tmp_path / "no" / "such" / "dir.img")))
    assert line.startswith(f"Failed to open temp file {tmp_path}/no/such/dir.img for writing")
    line = one_line_error(host.xl("save", "st", "/dev/full"))
    assert line == "Failed to save domain, resuming domain: writing the image: " \
                   "No space left on device"
    seq = 2
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(small)],
                             capture_output=True).returncode == 0
    try:
        if mounted:
            line = one_line_error(host.xl("save", "st", str(small / "x.img")))
            assert "No space left on device" in line
            assert list(small.iterdir()) == []
        for _ in range(2):
            now = report(host, domid, str(seq))
            seq += 1
            assert now["sum"] == first["sum"] and now["counter"] > first["counter"]
            assert now["resumed"] == 0 and now["cancelled"] >= 2
            assert host.list()["st"]["state"][:1] in "rb"
    finally:
        if mounted:
            subprocess.run(["umount", str(small)], check=False)
    host.xl("destroy", "st", check=True)
    host.assert_clean()


@pytest.fixture(scope="module")
def saved_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real image, shared by the read-only tests below."""
    tmp = tmp_path_factory.mktemp("img")
    h = Host(root=tmp / "run", workdir=REPO)
    try:
        domid = create(h, write_cfg(tmp))
        report(h, domid, "1")
        img = tmp / "st.img"
        h.xl("save", "st", str(img), check=True)
    finally:
        h.stop()
    return img


def _with_far_pfn(data: bytes) -> bytes:
    """The same image re-written with one extra page at pfn 2^40."""
    import io

    from pyxen.toolstack.migration import (
        HvmContext,
        HvmParams,
        PageData,
        SaveWriter,
        TscInfo,
        read_image,
    )
    config, records = read_image(io.BytesIO(data))
    out = io.BytesIO()
    w = SaveWriter(out, config)
    w.begin()
    w.page_data([1 << 40], bytes(4096))
    for rec in records:
        if isinstance(rec, PageData):
            w.page_data(rec.pfns, rec.data, types=rec.types)
        elif isinstance(rec, TscInfo):
            w.tsc_info(rec.mode, rec.khz, rec.nsec, rec.incarnation)
        elif isinstance(rec, HvmContext):
            w.hvm_context(rec.blob)
        elif isinstance(rec, HvmParams):
            w.hvm_params(rec.params)
    w.finish()
    return out.getvalue()


def test_bad_images_create_nothing(host: Host, tmp_path: Path, saved_image: Path) -> None:
    data = saved_image.read_bytes()
    cases = {
        "truncated.img": (data[:len(data) // 2], "PAGE_DATA"),
        "header.img": (data[:100], "xl save-file"),
        "foreign.img": (b"\x7fELF" + bytes(4000), "wrong magic number"),
        "noend.img": (data[:-16], "truncated"),
    }
    # corrupted HVM context: the HVM_CONTEXT record's first descriptor gets a bad type
    pos = data.rfind(b"\x86\x12\x38\x54")  # HVM_FILE_MAGIC, little-endian, in HEADER
    assert pos > 0
    bad = bytearray(data)
    bad[pos + 24:pos + 26] = b"\xff\xff"  # the descriptor after HEADER: type 65535
    cases["corrupt.img"] = (bytes(bad), "HVM context record 1 (type 65535)")
    # a CPU record KVM refuses (CR0.PG without CR0.PE)
    bad = bytearray(data)
    cr0 = pos + 24 + 8 + 512 + 18 * 8  # HEADER, CPU's descriptor, fpu_regs, 18 registers
    bad[cr0:cr0 + 8] = (0x80000000).to_bytes(8, "little")
    cases["badcpu.img"] = (bytes(bad), "vCPU 0: KVM refused the state")
    cases["farpfn.img"] = (_with_far_pfn(data), "beyond the guest's physical address width")
    for name, (blob, what) in cases.items():
        f = tmp_path / name
        f.write_bytes(blob)
        line = one_line_error(host.xl("restore", str(f)))
        assert what in line, (name, line)
        host.assert_clean()
        r = host.xenstore("xenstore-list", "/local/domain")
        assert r.stdout.split() in ([], ["0"]), r.stdout
    line = one_line_error(host.xl("restore", str(tmp_path / "missing.img")))
    assert line == f"cannot open restore file {tmp_path}/missing.img: No such file or directory"


def test_independent_reader_checks_every_record(saved_image: Path) -> None:
    reader = pytest.importorskip("xen_stream_reader")
    summary = reader.check_image(str(saved_image))
    text = repr(summary)
    for rec in ("PAGE_DATA", "X86_TSC_INFO", "HVM_CONTEXT", "HVM_PARAMS", "END"):
        assert rec in text, (rec, text[:2000])
