"""The one error the format layer raises: a stream that cannot be read or written."""

from __future__ import annotations


class StreamError(Exception):
    """A save image or migration stream that is truncated, corrupt, foreign or unsupported.

    The message names where: the header or record (type name, index in the stream,
    byte offset of its header), so ``xl restore`` can print it as its one error line.
    """
