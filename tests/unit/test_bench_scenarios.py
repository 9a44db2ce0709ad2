"""The benchmark runner finds every scenario module, and each has what the runner calls."""

from __future__ import annotations

import importlib
import inspect

import pytest

from benchmarks import run


def test_every_scenario_module_is_found_and_has_a_run_function() -> None:
    names = run.scenario_names()
    assert {"cpu", "latency", "memory", "startup"} <= set(names)
    for name in names:
        module = importlib.import_module(f"benchmarks.scenarios.{name}")
        assert module.__doc__, f"{name}: the first docstring line is its --list summary"
        assert list(inspect.signature(module.run).parameters) == ["bench"], name


def test_unknown_scenario_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        run.main(["--scenarios", "cpu,nope", "--out", "/nonexistent"])
    assert exc.value.code == 2
    assert "unknown scenarios: nope" in capsys.readouterr().err


def test_list_prints_one_line_per_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    assert run.main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == run.scenario_names()
