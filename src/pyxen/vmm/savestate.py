"""Stopping the domain for the last round of a migration and writing its state records.
Placeholder until the save/restore branch's state capture is merged: it pauses and
resumes in place (a guest without PV control is paused and saved as is)."""

from __future__ import annotations

from typing import Any

from ..hypervisor.domain import Domain


def suspend_domain(d: Domain) -> None:
    d.pause()


def resume_domain(d: Domain) -> None:
    d.unpause()


def write_final_state(d: Domain, writer: Any) -> None:
    raise NotImplementedError("vCPU/platform state records come with the save/restore branch")
