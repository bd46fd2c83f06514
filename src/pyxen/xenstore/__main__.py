"""``python -m pyxen.xenstore --state-dir DIR``: a standalone xenstored.

Quota options follow Xen's C xenstored (-E/--entry-nb, -S/--entry-size, -W/--watch-nb,
-t/--transaction, -A/--perm-nb, -M/--path-max, -Q/--quota NAME=VALUE), as does
-K/--keep-orphans.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from .quota import Quotas
from .server import XenstoreServer


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, Quotas]:
    ap = argparse.ArgumentParser(prog="python -m pyxen.xenstore",
                                 description="pyxen's xenstored")
    ap.add_argument("--state-dir", required=True, type=Path,
                    help="directory for socket, socket_ro and the persisted tree")
    ap.add_argument("-E", "--entry-nb", type=int, help="nodes per domain (1000)")
    ap.add_argument("-S", "--entry-size", type=int, help="bytes per node (2048)")
    ap.add_argument("-W", "--watch-nb", type=int, help="watches per domain (128)")
    ap.add_argument("-t", "--transaction", type=int, help="transactions per connection (10)")
    ap.add_argument("-A", "--perm-nb", type=int, help="extra ACL entries per node (5)")
    ap.add_argument("-M", "--path-max", type=int, help="path length below the domain path")
    ap.add_argument("-Q", "--quota", action="append", default=[], metavar="NAME=VALUE",
                    help="any quota by name: " + ", ".join(Quotas.names()))
    ap.add_argument("-K", "--keep-orphans", action="store_true",
                    help="give a released domain's nodes to dom0 instead of removing them")
    ap.add_argument("--rundir", type=Path,
                    help="pyxen's runtime directory: INTRODUCE maps guest rings through "
                         "RUNDIR/domains/N/xenbus.sock (how hostd runs it)")
    ap.add_argument("--no-persist", action="store_true", help="keep the tree in memory only")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    q = Quotas()
    for opt, name in (("entry_nb", "nodes"), ("entry_size", "node-size"),
                      ("watch_nb", "watches"), ("transaction", "transactions"),
                      ("perm_nb", "permissions"), ("path_max", "path-length")):
        if getattr(args, opt) is not None:
            q.set(name, getattr(args, opt))
    for item in args.quota:
        name, _, val = item.partition("=")
        try:
            q.set(name, int(val))
        except ValueError:
            ap.error(f"bad --quota {item!r}; names: {', '.join(Quotas.names())}")
    return args, q


def main(argv: list[str] | None = None) -> int:
    args, quotas = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="xenstored: %(message)s")
    try:
        server = XenstoreServer(args.state_dir, quotas, persist=not args.no_persist,
                                keep_orphans=args.keep_orphans)
        if args.rundir is not None:
            from pyxen.backends.xenbus import ring_mapper
            server.set_ring_mapper(ring_mapper(args.rundir))
        server.start()
    except OSError as e:
        print(f"xenstored: cannot serve in {args.state_dir}: {e}", file=sys.stderr)
        return 1
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    print(f"xenstored: serving {server.socket_path} (export XENSTORED_PATH={server.socket_path})",
          flush=True)
    done.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
