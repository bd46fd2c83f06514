"""pyxen's xenstored: Xen's configuration store, wire-compatible with Xen's clients.

See docs/xenstore.md. Entry points: server.XenstoreServer, client.XenstoreClient,
ring.RingTransport, ``python -m pyxen.xenstore --state-dir DIR``.
"""

from .client import XenstoreClient
from .quota import Quotas
from .ring import RingTransport
from .server import XenstoreServer
from .wire import XenstoreError

__all__ = ["XenstoreClient", "XenstoreServer", "RingTransport", "Quotas", "XenstoreError"]
