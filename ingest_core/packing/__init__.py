"""Packing (CONTRACT §13): many pages become NDJSON lines in a few large objects.

``units`` turns one page into lines (one class per ``unit``); ``staging`` holds an
item's lines within the memory budget (or spilled); ``packer`` streams them into
rotating objects.
"""

from ingest_core.packing.packer import (
    COMPLETE_GRACE_S,
    FLUSH_EVERY,
    PACK_CONTENT_TYPE,
    Packer,
    ResultSink,
    first_index,
    read_item,
)
from ingest_core.packing.staging import SMALL_RESERVATION, Staged
from ingest_core.packing.units import Lines, PackUnit, Page, RecordUnit, ResponseUnit, make_unit

__all__ = [
    "COMPLETE_GRACE_S",
    "FLUSH_EVERY",
    "PACK_CONTENT_TYPE",
    "SMALL_RESERVATION",
    "Lines",
    "PackUnit",
    "Packer",
    "Page",
    "RecordUnit",
    "ResponseUnit",
    "ResultSink",
    "Staged",
    "first_index",
    "make_unit",
    "read_item",
]
