"""Xen's save image and migration stream formats: xl's save-file header, libxl's
migration stream v2 and the libxc domain image it carries (docs/migration.md)."""

from .errors import StreamError
from .stream import (
    CpuidPolicy,
    EmulatorData,
    End,
    HvmContext,
    HvmParams,
    MsrPolicy,
    PageData,
    Record,
    SaveReader,
    SaveWriter,
    TscInfo,
    read_image,
)

__all__ = ["SaveWriter", "SaveReader", "StreamError", "Record", "PageData", "TscInfo",
           "HvmContext", "HvmParams", "CpuidPolicy", "MsrPolicy", "EmulatorData", "End",
           "read_image"]
