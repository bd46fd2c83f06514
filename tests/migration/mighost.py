"""A test host for migration tests (tests/toolstack/xlhost.py's Host, plus what migration
needs: this checkout's `xl` on PATH for the transport command, the hypervisor log)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "toolstack"))
from xlhost import REPO, Host  # noqa: E402

VENV_BIN = Path(sys.executable).parent
__all__ = ["REPO", "MigHost"]


class MigHost(Host):
    @property
    def env(self) -> dict[str, str]:
        env = super().env
        # xl migrate runs `sh -c "exec SSHCOMMAND HOST xl migrate-receive"`: `xl` must be
        # this checkout's.
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        return env

    @staticmethod
    def xl_argv() -> list[str]:
        return [sys.executable, "-m", "pyxen.cli.xl"]

    def dmesg(self) -> list[str]:
        return self.xl("dmesg", check=True).stdout.splitlines()
