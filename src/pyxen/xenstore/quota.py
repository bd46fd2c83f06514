"""Per-domain limits, with the defaults of Xen 4.17's C xenstored.

Quotas bind unprivileged domains only (dom0 and its tools are exempt, as in Xen),
except ``outstanding`` and the output-buffer cap, which protect the daemon from any
client that stops reading its replies.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from .wire import XENSTORE_REL_PATH_MAX


@dataclass
class Quotas:
    """Names match xenstored's ``--quota NAME=VALUE`` / ``CONTROL quota NAME VALUE``."""

    nodes: int = 1000  # quota_nb_entry_per_domain (-E / --entry-nb)
    node_size: int = 2048  # quota_max_entry_size, value + perms + child names (-S)
    watches: int = 128  # quota_nb_watch_per_domain (-W / --watch-nb)
    transactions: int = 10  # quota_max_transaction (-t / --transaction)
    permissions: int = 5  # quota_nb_perms_per_node, besides the owner (-A / --perm-nb)
    path_length: int = XENSTORE_REL_PATH_MAX  # quota_max_path_len, below /local/domain/N (-M)
    outstanding: int = 20  # quota_req_outstanding: unanswered requests before reading stops
    transaction_nodes: int = 1024  # quota_trans_nodes: nodes one transaction may touch
    memory: int = 2 * 1024 * 1024 + 512 * 1024  # quota_memory_per_domain_hard (bytes)
    memory_soft: int = 2 * 1024 * 1024  # quota_memory_per_domain_soft: logged only
    privileged_output: int = 64 * 1024 * 1024  # queued output a dom0 client may leave unread

    @classmethod
    def names(cls) -> list[str]:
        return [f.name.replace("_", "-") for f in fields(cls)]

    def set(self, name: str, value: int) -> None:
        """Set by CLI/CONTROL name ('node-size' or 'node_size'); ValueError if unknown."""
        attr = name.replace("-", "_")
        if attr not in {f.name for f in fields(self)} or value < 1:
            raise ValueError(f"unknown quota or bad value: {name}={value}")
        setattr(self, attr, value)

    def get(self, name: str) -> int:
        return int(getattr(self, name.replace("-", "_")))

    def describe(self) -> str:
        return "".join(f"{n:<20} {self.get(n)}\n" for n in self.names())
