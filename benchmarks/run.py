"""Run the benchmark scenarios and write RESULTS.md, results.json and plots.

    python -m benchmarks.run [--quick] [--scenarios cpu,latency,...] [--list]
                             [--s3 sink|moto|URL] [--out benchmarks/results]

A scenario is one module, ``benchmarks/scenarios/<name>.py``, with a
``run(bench: benchmarks.measure.Bench) -> benchmarks.report.Section`` function
(setup, runs, tables, verdicts). Every module in that package is a scenario, found
by name: adding one is adding a file. ``--list`` prints them with their first
docstring line. The default run is all of them, in name order.

Every measurement runs in its own worker process (``benchmarks.peers``), is
checked (all items succeeded, and the S3 server holds exactly the expected
objects and bytes) and is repeated; tables show medians.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from benchmarks import report, scenarios
from benchmarks.measure import QUIET_WAIT_MAX_S, Bench, background_load
from benchmarks.peers import REPO_ROOT
from benchmarks.report import Section, Verdict


def scenario_names() -> list[str]:
    """Every module in ``benchmarks/scenarios``, in name order."""
    return sorted(m.name for m in pkgutil.iter_modules(scenarios.__path__) if not m.ispkg)


def load_scenario(name: str) -> Callable[[Bench], Section]:
    """The ``run`` function of ``benchmarks.scenarios.<name>``."""
    module = importlib.import_module(f"benchmarks.scenarios.{name}")
    run: Callable[[Bench], Section] = module.run
    return run


def _summary_line(name: str) -> str:
    module = importlib.import_module(f"benchmarks.scenarios.{name}")
    return (module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else ""


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    known = scenario_names()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="fewer items and one repeat")
    parser.add_argument(
        "--scenarios",
        default=",".join(known),
        help=f"comma-separated subset of {','.join(known)}",
    )
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument(
        "--s3",
        default="sink",
        help="sink (default), moto, or the URL of a running S3-compatible server; "
        "the memory scenario uses the sink instead of moto",
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--quiet-below",
        type=float,
        metavar="CORES",
        help=f"before each run, wait (up to {QUIET_WAIT_MAX_S} s) until other processes keep "
        "fewer than CORES cores busy; off by default",
    )
    args = parser.parse_args(argv)
    args.scenario_list = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(args.scenario_list) - set(known)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    return args


def _crashed(name: str, exc: BaseException) -> Section:
    detail = "".join(traceback.format_exception(exc))[-1500:]
    return Section(
        name,
        f"{name} (harness error)",
        f"The scenario crashed:\n\n```\n{detail}\n```",
        verdicts=[Verdict("-", f"{name} scenario", f"{type(exc).__name__}: {exc}"[:160], "N/A")],
    )


def main(argv: list[str] | None = None) -> int:
    """Run the chosen scenarios; exit 1 when a scenario itself crashed (not when a target fails)."""
    args = _parse_args(argv)
    if args.list:
        for name in scenario_names():
            print(f"{name:<12} {_summary_line(name)}")
        return 0
    bench = Bench(args)
    args.out.mkdir(parents=True, exist_ok=True)
    machine = report.machine_line()
    print(f"machine: {machine}\nworker and server logs: {bench.log_dir}", file=sys.stderr)
    started, sections, crashed = time.perf_counter(), [], False
    for name in args.scenario_list:
        bench.scenario = name
        load = background_load()
        print(f"[{name}] background load: {load:.2f} cores busy", file=sys.stderr, flush=True)
        scenario_started = time.perf_counter()
        try:
            sections.append(load_scenario(name)(bench))
            sections[-1].notes.append(
                f"Background CPU load just before this scenario: {load:.2f} of "
                f"{os.cpu_count()} cores busy with other processes (the machine is shared)."
            )
        except Exception as exc:  # report the crash in RESULTS.md; run the other scenarios
            traceback.print_exc()
            sections.append(_crashed(name, exc))
            crashed = True
        took = time.perf_counter() - scenario_started
        sections[-1].notes.append(f"Scenario wall time: {took:.0f} s.")
        print(f"[{name}] done in {took:.0f} s", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - started
    command = "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:])
    report.write_markdown(
        args.out / "RESULTS.md",
        sections,
        machine=machine,
        command=command.strip(),
        elapsed_s=elapsed,
    )
    report.write_json(args.out / "results.json", sections, machine=machine)
    for verdict in (v for s in sections for v in s.verdicts):
        print(f"{verdict.target:<3} {verdict.result:<12} {verdict.claim}: {verdict.measured}")
    print(f"wrote {args.out / 'RESULTS.md'} in {elapsed:.0f} s")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
