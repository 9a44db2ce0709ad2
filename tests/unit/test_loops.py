"""The event loop the handler and the CLI run on (ingest_core/loops.py, CONTRACT §8)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
import uvloop

from ingest_core import loops
from ingest_core.loops import LOOP_ENV, loop_factory

ROOT = Path(__file__).resolve().parents[2]


def test_uvloop_is_the_default() -> None:
    # GIVEN no FANOUT_EVENT_LOOP (or an empty one)
    # THEN runs get uvloop's loop
    assert loop_factory({}) is uvloop.new_event_loop
    assert loop_factory({LOOP_ENV: " "}) is uvloop.new_event_loop
    assert loop_factory({LOOP_ENV: "UVLoop"}) is uvloop.new_event_loop


def test_asyncio_when_asked() -> None:
    # GIVEN FANOUT_EVENT_LOOP=asyncio, THEN asyncio.Runner's own loop (no factory)
    assert loop_factory({LOOP_ENV: "asyncio"}) is None


def test_unknown_loop_is_refused_with_the_variable_named() -> None:
    # GIVEN a loop that does not exist
    # THEN the error names the variable, the value and what is accepted
    with pytest.raises(ValueError, match=r"FANOUT_EVENT_LOOP='trio': expected one of uvloop"):
        loop_factory({LOOP_ENV: "trio"})


def test_falls_back_to_asyncio_when_uvloop_cannot_import(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN uvloop cannot be imported (Windows, a build without it)
    monkeypatch.setitem(sys.modules, "uvloop", None)

    # THEN the default is asyncio's loop, not an error
    assert loop_factory({}) is None


def test_run_uses_the_chosen_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    async def which() -> str:
        return type(asyncio.get_running_loop()).__module__

    # WHEN the CLI's runner runs a coroutine on each choice
    monkeypatch.setenv(LOOP_ENV, "uvloop")
    on_uvloop = loops.run(which())
    monkeypatch.setenv(LOOP_ENV, "asyncio")
    on_asyncio = loops.run(which())

    # THEN each ran on the loop it names
    assert on_uvloop.startswith("uvloop")
    assert on_asyncio.startswith("asyncio")


@pytest.mark.parametrize(("value", "module"), [(None, "uvloop"), ("asyncio", "asyncio")])
def test_the_handler_runs_on_the_chosen_loop(value: str | None, module: str) -> None:
    # GIVEN a fresh interpreter (the handler picks its loop when imported)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "AWS_DEFAULT_REGION": "us-east-1"}
    if value is not None:
        env[LOOP_ENV] = value
    probe = (
        "import handler.app as app\nprint(type(app._runner.get_loop()).__module__.split('.')[0])\n"
    )

    # WHEN it imports the handler and looks at its runner's loop
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60
    )

    # THEN it is the loop the environment asked for
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == module
