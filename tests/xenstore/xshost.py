"""A xenstored in a temporary state dir, for tests/xenstore: its own module (not conftest)
so that tests importing Host get this one whichever conftest was imported first."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from pyxen.xenstore import Quotas, XenstoreClient, XenstoreServer


class Host:
    """A running daemon plus helpers to run Debian's xenstore-* tools against it."""

    def __init__(self, state_dir: Path, quotas: Quotas | None = None) -> None:
        self.state_dir = state_dir
        self.quotas = quotas
        self.server = XenstoreServer(state_dir, quotas).start()
        self.clients: list[XenstoreClient] = []

    @property
    def socket(self) -> str:
        return str(self.server.socket_path)

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, XENSTORED_PATH=self.socket)

    def tool(self, *argv: str, check: bool = True, path: str | None = None,
             timeout: float = 20) -> subprocess.CompletedProcess:
        env = self.env if path is None else dict(os.environ, XENSTORED_PATH=path)
        return subprocess.run(argv, env=env, capture_output=True, text=True, check=check,
                              timeout=timeout)

    def client(self, path: str | Path | None = None) -> XenstoreClient:
        c = XenstoreClient(path or self.socket)
        self.clients.append(c)
        return c

    def domu(self, domid: int, introduce: bool = True) -> XenstoreClient:
        """A client whose connection is domain `domid` (unprivileged)."""
        if introduce and not self.server.is_domain_introduced(domid):
            self.server.introduce_domain(domid)
        sock = self.state_dir / f"dom{domid}.sock"
        if not sock.exists():
            self.server.listen_as_domain(domid, sock)
        return self.client(sock)

    def restart(self) -> None:
        self.close_clients()
        self.server.stop()
        self.server = XenstoreServer(self.state_dir, self.quotas).start()

    def close_clients(self) -> None:
        for c in self.clients:
            c.close()
        self.clients.clear()

    def stop(self) -> None:
        self.close_clients()
        self.server.stop()
