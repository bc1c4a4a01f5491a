"""Peak memory of a call, for the tests of bounded memory (behaviour, not timing)."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Linux lets a process reset its resident-set high-water mark (VmHWM) here.
CLEAR_REFS = Path("/proc/self/clear_refs")


def traced_peak(fn: Callable[[], Any]) -> int:
    """Peak bytes Python and numpy allocated while ``fn`` ran (``tracemalloc``: numpy
    arrays are traced, torch tensors and C++ libraries' own buffers are not)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def peak_rss_growth(fn: Callable[[], Any]) -> int:
    """Bytes the resident set grew to above where it was while ``fn`` ran: every
    allocator (torch, faiss) counts. The high-water mark is reset through
    ``/proc/self/clear_refs`` first (Linux; tests skip elsewhere)."""
    status = Path("/proc/self/status")

    def field(name: str) -> int:
        line = next(x for x in status.read_text().splitlines() if x.startswith(name))
        return int(line.split()[1]) * 1024

    CLEAR_REFS.write_text("5")
    base = field("VmRSS:")
    fn()
    return field("VmHWM:") - base
