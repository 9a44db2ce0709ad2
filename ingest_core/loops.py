"""The event loop every run uses: uvloop where it is installed, asyncio's own otherwise.

Measured in round three (docs/PERFORMANCE.md, P4): on uvloop a run spends 1-5 %
less client CPU per item than on asyncio's loop (two quiet runs of interleaved pairs,
below 1.0 in 17 of 20); the floors gain more (13-18 %), since their CPU is mostly
the loop and transports. The handler and the CLI both run on ``loop_factory()``. The
CLI's install (the ``cli`` extra) brings uvloop; the Lambda package leaves it out
(17 MB unzipped on arm64, against a 55 MB package budget, for a few percent of a
Lambda row that costs cents per million items), so there the handler runs on
asyncio's loop unless the function's build adds uvloop.

``FANOUT_EVENT_LOOP`` (CONTRACT §8): ``uvloop`` (the default) or ``asyncio``.
Where uvloop cannot be imported, asyncio's loop is used.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

LOOP_ENV = "FANOUT_EVENT_LOOP"
LOOPS = ("uvloop", "asyncio")
T = TypeVar("T")
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def loop_factory(env: Mapping[str, str] | None = None) -> LoopFactory | None:
    """uvloop's loop factory, or None for asyncio's own (``asyncio.Runner``'s default).

    Raises:
        ValueError: ``FANOUT_EVENT_LOOP`` names no known loop.
    """
    env = os.environ if env is None else env
    choice = env.get(LOOP_ENV, "").strip().lower() or "uvloop"
    if choice not in LOOPS:
        raise ValueError(f"{LOOP_ENV}={choice!r}: expected one of {', '.join(LOOPS)}")
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    factory: LoopFactory = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on the chosen loop (the CLI's commands)."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
