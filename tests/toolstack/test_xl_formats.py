"""pyxen's `xl list`, `list -v/-Z`, `vcpu-list`, `uptime`, `vm-list` and `info` against
the printf formats of Xen 4.17's tools/xl/xl_info.c and xl_vcpu.c (copied below): every
line of the output must be what those printf calls print, field widths included."""

from __future__ import annotations

from pathlib import Path

import pytest
from printf_match import assert_printf, printf_matches
from xlhost import HELLO, Host, needs_vmm

pytestmark = pytest.mark.timeout(180)

# tools/xl/xl_info.c: list_domains()
LIST_HEADER = "Name                                        ID   Mem VCPUs\tState\tTime(s)"
LIST_ROW = "%-40s %5d %5lu %5d     %c%c%c%c%c%c  %8.1f"
UUID = "%08x-%04x-%04x-%04x-%04x%08x"  # LIBXL_UUID_FMT
LIST_V_HEADER = LIST_HEADER + "   UUID                            Reason-Code\tSecurity Label"
LIST_Z_HEADER = LIST_HEADER + "   Security Label"
# tools/xl/xl_vcpu.c: vcpulist() / print_vcpuinfo()
VCPU_HEADER = ("%-32s %5s %5s %5s %5s %9s %s", ("Name", "ID", "VCPU", "CPU", "State",
                                               "Time(s)", "Affinity (Hard / Soft)"))
VCPU_ROW_ONLINE = "%-32s %5u %5u%5u %3c%c- %9.1f  %s / %s"
VCPU_ROW_OFFLINE = "%-32s %5u %5u%5c %3c%cp %9.1f  %s / %s"
# tools/xl/xl_info.c: print_uptime(), uptime_to_string(), list_vm()
UPTIME_HEADER = "%-33s %4s %s"
UPTIME_ROW = "%-33s %4d %s"
UPTIME_SHORT = " %s up %s, %s (%d)"
UPTIME_LONG = ("%2d:%02d:%02d", "%d day, %2d:%02d:%02d", "%d days, %2d:%02d:%02d")
UPTIME_SHORT_TIME = ("%2d:%02d", "%d day, %2d:%02d", "%d days, %2d:%02d")
VM_LIST_HEADER = "UUID                                  ID    name"
VM_LIST_ROW = UUID + "  %d    %-30s"
# tools/xl/xl_info.c: output_nodeinfo(), output_physinfo(), output_xeninfo(), print_info()
INFO = [
    "host                   : %s", "release                : %s", "version                : %s",
    "machine                : %s", "nr_cpus                : %d", "max_cpu_id             : %d",
    "nr_nodes               : %d", "cores_per_socket       : %d", "threads_per_core       : %d",
    "cpu_mhz                : %d.%03d",
    "hw_caps                : %08x:%08x:%08x:%08x:%08x:%08x:%08x:%08x",
    "virt_caps              :%s", "total_memory           : %lu",
    "free_memory            : %lu", "sharing_freed_memory   : %lu",
    "sharing_used_memory    : %lu", "outstanding_claims     : %lu",
    "free_cpus              : %d", "xen_major              : %d",
    "xen_minor              : %d", "xen_extra              : %s",
    "xen_version            : %d.%d%s", "xen_caps               : %s",
    "xen_scheduler          : %s", "xen_pagesize           : %u",
    "platform_params        : virt_start=0x%lx", "xen_changeset          : %s",
    "xen_commandline        : %s", "cc_compiler            : %s",
    "cc_compile_by          : %s", "cc_compile_domain      : %s",
    "cc_compile_date        : %s", "build_id               : %s",
    "xend_config_format     : 4",
]


def cfg(tmp_path: Path, name: str, mode: str, vcpus: int = 1, maxvcpus: int = 1) -> str:
    f = tmp_path / f"{name}.cfg"
    f.write_text(f'name = "{name}"\ntype = "pvh"\nkernel = "{HELLO}"\nmemory = 32\n'
                 f'vcpus = {vcpus}\nmaxvcpus = {maxvcpus}\ncmdline = "mode={mode}"\n')
    return str(f)


def test_the_matcher_tells_printf_output_from_near_misses() -> None:
    """The checker itself (pure logic): exact widths pass, one space more or less fails."""
    assert printf_matches("%-10s %5d", "abc           42")
    assert printf_matches("%-10s %5d", "abcdefghijkl    42")  # a long value overflows
    assert not printf_matches("%-10s %5d", "abc          42")
    assert not printf_matches("%-10s %5d", "abc            42")
    assert printf_matches("%8.1f", "     0.5") and not printf_matches("%8.1f", "    0.50")
    assert printf_matches("%08x", "0000beef") and not printf_matches("%08x", "beef")
    # pyxen's vcpu-list before it followed xl_vcpu.c: one space short before the state
    assert not printf_matches(VCPU_ROW_ONLINE, f"{'idle':<32}     1     0    1  -b-       "
                                               "0.0  all / all")


@needs_vmm
def test_list_vcpu_list_uptime_vm_list_as_xl_prints_them(host: Host, tmp_path: Path) -> None:
    assert host.xl("create", cfg(tmp_path, "idle", "idle")).returncode == 0
    assert host.xl("create", cfg(tmp_path, "two-vcpus", "idle", 1, 2)).returncode == 0

    lines = host.xl("list", check=True).stdout.splitlines()
    assert lines[0] == LIST_HEADER and len(lines) == 4
    for line in lines[1:]:
        assert_printf(LIST_ROW, line)
    assert lines[1].startswith("Domain-0 ")

    for opt, header in (("-v", LIST_V_HEADER), ("-Z", LIST_Z_HEADER)):
        lines = host.xl("list", opt, check=True).stdout.splitlines()
        assert lines[0] == header
        tail = f" {UUID} %8s %16s" if opt == "-v" else " %16s"
        for line in lines[1:]:
            assert_printf(LIST_ROW + tail, line)
            assert line.endswith("               -")  # no XSM label

    lines = host.xl("list", "-c", "-n", check=True).stdout.splitlines()
    assert lines[0] == LIST_HEADER + "         Cpupool NODE Affinity"
    for line in lines[1:]:
        assert_printf(LIST_ROW + "%16s %s", line)
        assert line.endswith("          Pool-0 all"), line  # print_bitmap: every node

    lines = host.xl("vcpu-list", check=True).stdout.splitlines()
    fmt, args = VCPU_HEADER
    assert lines[0] == fmt % args  # Python's % is C's printf for these conversions
    names = [ln.split()[0] for ln in lines[1:]]
    assert names.count("two-vcpus") == 2 and names.count("idle") == 1, lines
    for line in lines[1:]:
        assert printf_matches(VCPU_ROW_ONLINE, line) or \
            printf_matches(VCPU_ROW_OFFLINE, line), line
    offline = [ln for ln in lines[1:] if ln.startswith("two-vcpus") and ln.split()[2] == "1"]
    assert len(offline) == 1 and offline[0].split()[3:5] == ["-", "--p"], offline

    lines = host.xl("uptime", check=True).stdout.splitlines()
    assert lines[0] == UPTIME_HEADER % ("Name", "ID", "Uptime")
    assert [ln.split()[0] for ln in lines[1:]] == ["Domain-0", "idle", "two-vcpus"]
    for line in lines[1:]:
        assert_printf(UPTIME_ROW, line)
        assert any(printf_matches(f, line[39:]) for f in UPTIME_LONG), line
    lines = host.xl("uptime", "-s", "idle", "0", check=True).stdout.splitlines()
    assert len(lines) == 2 and lines[0].endswith(", idle (1)") and \
        lines[1].endswith(", Domain-0 (0)")
    for line in lines:
        assert_printf(UPTIME_SHORT, line)
        up = line.split(" up ", 1)[1].rsplit(", ", 1)[0]
        assert any(printf_matches(f, up) for f in UPTIME_SHORT_TIME), line
        assert_printf("%02d:%02d:%02d", line[1:9])

    lines = host.xl("vm-list", check=True).stdout.splitlines()
    assert lines[0] == VM_LIST_HEADER and len(lines) == 3  # no Domain-0, as libxl_list_vm
    for line in lines[1:]:
        assert_printf(VM_LIST_ROW, line)
    assert lines[1].split()[1:] == ["1", "idle"]


def test_info_lines_are_xls_in_xls_order(host: Host) -> None:
    lines = host.xl("info", check=True).stdout.splitlines()
    assert len(lines) == len(INFO), lines
    for fmt, line in zip(INFO, lines, strict=True):
        if fmt.startswith("virt_caps"):
            assert line.startswith("virt_caps              :")
            assert all(c in ("pv", "hvm", "hvm_directio", "pv_directio", "hap")
                       for c in line.split(":", 1)[1].split()), line
            continue
        assert_printf(fmt, line)
