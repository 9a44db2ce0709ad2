"""The Lambda process's garbage collector is tuned once, when the handler is imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_import_freezes_the_startup_heap_and_raises_the_gen0_threshold() -> None:
    # A fresh interpreter: the test process's own collector settings must not leak in.
    probe = (
        "import gc, handler.app as app; "
        "print(gc.get_threshold()[0], app.GC_GEN0_THRESHOLD, gc.get_freeze_count())"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    threshold, expected, frozen = (int(v) for v in done.stdout.split())
    assert threshold == expected > 700  # above CPython's default
    assert frozen > 10_000  # the imported modules' objects are out of every collection
