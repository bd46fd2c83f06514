"""Keeping the tree across daemon restarts: a snapshot plus an append-only journal.

Committed changes are appended to ``state_dir/journal`` before any reply that
acknowledges them leaves: group commit, one JSON line and one write() per event-loop
turn for everything the requests handled in that turn changed, so a daemon that is
killed loses nothing that a client saw acknowledged (process crash; the journal is not
fsync'ed, a host crash may lose the last writes). ``stop()`` and journal
growth write ``state_dir/tree.json`` (atomic rename) and truncate the journal. The
domain table (introduced domains, SET_TARGET) and the special nodes' ACLs travel
with the tree, which is what Xen's live update hands over.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from json.encoder import encode_basestring_ascii as _json_str
from pathlib import Path
from typing import Any

from .perms import Perms, dump_perms, load_perms
from .store import Store

log = logging.getLogger("pyxen.xenstore")

SNAPSHOT = "tree.json"
JOURNAL = "journal"
COMPACT_BYTES = 16 * 1024 * 1024


def _perms_in(items: list[str]) -> Perms:
    return load_perms(items)  # keeps IGNORE marks ("!r5") across restarts


class Persistence:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.snapshot_path = state_dir / SNAPSHOT
        self.journal_path = state_dir / JOURNAL
        self._fd = -1
        self._perms_text: dict[Perms, str] = {}  # ACL -> its JSON list items
        self.journal_bytes = 0
        self._pending: list[bytes] = []

    # -- loading ----------------------------------------------------------------------
    def load(self) -> dict[str, Any]:
        """{'nodes': [(path, value, perms)], 'domains': {...}, 'special': {...}}."""
        nodes: dict[str, tuple[bytes, Perms]] = {}
        domains: dict[str, Any] = {}
        special: dict[str, list[str]] = {}
        if self.snapshot_path.exists():
            snap = json.loads(self.snapshot_path.read_text())
            for p, v, perms in snap.get("nodes", []):
                nodes[p] = (v.encode("latin-1"), _perms_in(perms))
            domains = snap.get("domains", {})
            special = snap.get("special", {})
        if self.journal_path.exists():
            with open(self.journal_path, "rb") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        log.warning("xenstored journal: ignoring a torn last record")
                        break
                    for p, v, perms in rec.get("n", []):
                        if v is None:
                            nodes.pop(p, None)
                        else:
                            nodes[p] = (v.encode("latin-1"), _perms_in(perms))
                    if "d" in rec:
                        domains = rec["d"]
                        special = rec.get("s", special)
        return {"nodes": [(p, v, perms) for p, (v, perms) in nodes.items()],
                "domains": domains, "special": special}

    # -- writing ----------------------------------------------------------------------
    def open_journal(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.journal_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.journal_bytes = os.fstat(self._fd).st_size

    def record_nodes(self, store: Store, paths: Iterable[str]) -> None:
        """One line for all the given paths: {"n": [[path, value|null, perms|null]]}.

        Built by hand (the hot path of every write): paths are validated xenstore
        paths (no character JSON would escape), perms strings likewise; values go
        through json's C string escaper."""
        nodes = store.nodes
        perms_text = self._perms_text
        items = []
        for p in paths:
            n = nodes.get(p)
            if n is None:
                items.append(f'["{p}",null,null]')
                continue
            pt = perms_text.get(n.perms)
            if pt is None:
                if len(perms_text) > 4096:
                    perms_text.clear()
                pt = perms_text[n.perms] = ",".join(f'"{t}"' for t in dump_perms(n.perms))
            items.append(f'["{p}",{_json_str(n.value.decode("latin-1"))},[{pt}]]')
        self._append_line('{"n":[' + ",".join(items) + "]}\n")

    def record_domains(self, domains: dict[str, Any], special: dict[str, list[str]]) -> None:
        self._append({"d": domains, "s": special})

    def _append(self, rec: dict[str, Any]) -> None:
        self._append_line(json.dumps(rec, separators=(",", ":")) + "\n")

    def _append_line(self, line: str) -> None:
        if self._fd < 0:
            return
        data = line.encode()
        self._pending.append(data)
        self.journal_bytes += len(data)

    def flush(self) -> None:
        """Write buffered records; the loop calls it before any reply leaves."""
        if self._pending and self._fd >= 0:
            data = b"".join(self._pending)
            self._pending.clear()
            while data:
                data = data[os.write(self._fd, data):]

    def snapshot(self, store: Store, domains: dict[str, Any],
                 special: dict[str, list[str]]) -> None:
        """Write the whole tree atomically, then start an empty journal."""
        self.dir.mkdir(parents=True, exist_ok=True)
        snap = {
            "version": 1,
            "nodes": [(p, n.value.decode("latin-1"), dump_perms(n.perms))
                      for p, n in store.walk()],
            "domains": domains,
            "special": special,
        }
        tmp = self.snapshot_path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(snap, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.snapshot_path)
        self._pending.clear()
        if self._fd >= 0:
            os.ftruncate(self._fd, 0)
        elif self.journal_path.exists():
            self.journal_path.unlink()
        self.journal_bytes = 0

    def close(self) -> None:
        self.flush()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
