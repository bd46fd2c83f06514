"""The stream's Xen-defined pieces against Xen 4.17's public headers (libxen-dev): page
type values, the CPUID/MSR policy entries and the HVM save descriptor/header sizes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pyxen.toolstack.migration import libxc_stream as xc

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(not Path("/usr/include/xen/domctl.h").exists()
                                 or shutil.which("cc") is None,
                                 reason="needs Xen's public headers and a C compiler")]

PROGRAM = r"""
#define __XEN_TOOLS__ 1
#include <stdio.h>
#include <stdint.h>
#include <xen/xen.h>
#include <xen/domctl.h>
#include <xen/hvm/save.h>
int main(void) {
  printf("ltab_shift %u\n", XEN_DOMCTL_PFINFO_LTAB_SHIFT);
  printf("notab %u\n", XEN_DOMCTL_PFINFO_NOTAB >> XEN_DOMCTL_PFINFO_LTAB_SHIFT);
  printf("l1tab %u\n", XEN_DOMCTL_PFINFO_L1TAB >> XEN_DOMCTL_PFINFO_LTAB_SHIFT);
  printf("l4tab %u\n", XEN_DOMCTL_PFINFO_L4TAB >> XEN_DOMCTL_PFINFO_LTAB_SHIFT);
  printf("broken %u\n", XEN_DOMCTL_PFINFO_BROKEN >> XEN_DOMCTL_PFINFO_LTAB_SHIFT);
  printf("xalloc %u\n", XEN_DOMCTL_PFINFO_XALLOC >> XEN_DOMCTL_PFINFO_LTAB_SHIFT);
  printf("xtab %u\n", XEN_DOMCTL_PFINFO_XTAB >> XEN_DOMCTL_PFINFO_LTAB_SHIFT);
  printf("cpuid_leaf %zu\n", sizeof(xen_cpuid_leaf_t));
  printf("msr_entry %zu\n", sizeof(xen_msr_entry_t));
  printf("save_desc %zu\n", sizeof(struct hvm_save_descriptor));
  printf("save_header %zu\n", sizeof(struct hvm_save_header));
  printf("code_header %u\n", (unsigned)HVM_SAVE_CODE(HEADER));
  printf("code_end %u\n", (unsigned)HVM_SAVE_CODE(END));
  return 0;
}
"""


def test_stream_constants_match_xen_headers(tmp_path: Path) -> None:
    src = tmp_path / "abi.c"
    src.write_text(PROGRAM)
    subprocess.run(["cc", "-o", str(tmp_path / "abi"), str(src)], check=True)
    out = subprocess.run([str(tmp_path / "abi")], check=True, capture_output=True,
                         text=True).stdout
    got = {k: int(v) for k, v in (ln.split() for ln in out.splitlines())}
    assert got["ltab_shift"] + 32 == xc.TYPE_SHIFT  # "shifted by 32 bits" (the spec)
    assert (got["notab"], got["l1tab"], got["l4tab"]) == \
        (xc.PFINFO_NOTAB, xc.PFINFO_L1TAB, xc.PFINFO_L4TAB)
    assert (got["broken"], got["xalloc"], got["xtab"]) == \
        (xc.PFINFO_BROKEN, xc.PFINFO_XALLOC, xc.PFINFO_XTAB)
    assert got["cpuid_leaf"] == xc.CPUID_LEAF.size
    assert got["msr_entry"] == xc.MSR_ENTRY.size
    assert got["save_desc"] == xc.HVM_SAVE_DESC.size
    assert (got["code_header"], got["code_end"]) == \
        (xc.HVM_SAVE_CODE_HEADER, xc.HVM_SAVE_CODE_END)
    assert got["save_header"] == 24
