"""T5: fresh-process import time and warm one-item invocation overhead."""

from __future__ import annotations

import collections
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.measure import SMALL_BODY_BYTES, WORKER_BASE_TIMEOUT_S, Bench
from benchmarks.peers import REPO_ROOT, WorkerSpec, run_worker, worker_env
from benchmarks.report import Section, Table, Verdict
from benchmarks.servers import ApiOptions, start_servers

PACKAGE_MAX_MB = 55  # issue 13: the Lambda package stays under its size at the time, unzipped
PACKAGE_BUILD_TIMEOUT_S = 300
IMPORT_RUNS = 5  # fresh interpreters per import probe
QUICK_IMPORT_RUNS = 3
WARM_INVOCATIONS = 20
QUICK_WARM_INVOCATIONS = 10
# (label, statement, bytecode mode). "source": the project's own modules are
# compiled from source on every import, whatever .pyc files exist, as on Lambda
# (read-only /var/task) unless .pyc files are shipped; dependencies use the .pyc
# pip wrote. "cached": every module's .pyc in a private prefix, primed first.
IMPORT_PROBES = (
    ("fanout-ingest: import handler.app", "import handler.app", "source"),
    ("fanout-ingest: import handler.app, all .pyc cached", "import handler.app", "cached"),
    ("original: import requests, boto3", "import requests, boto3", "source"),
    ("interpreter only", "pass", "source"),
)
PROJECT_PACKAGES = ("handler", "ingest_core")
# Prepended to a "source" probe: bypasses .pyc files for the project's packages only.
COMPILE_PROJECT_FROM_SOURCE = f"""
import importlib.machinery as _m
_get_code = _m.SourceFileLoader.get_code
def _from_source(self, name):
    if name.partition(".")[0] in {PROJECT_PACKAGES!r}:
        return self.source_to_code(self.get_data(self.path), self.path)
    return _get_code(self, name)
_m.SourceFileLoader.get_code = _from_source
"""


def _probe_code(statement: str, mode: str, *, timed: bool = True) -> str:
    prelude = COMPILE_PROJECT_FROM_SOURCE if mode == "source" else ""
    if not timed:
        return f"{prelude}\n{statement}"
    timing = f"import time\nt = time.perf_counter()\n{statement}\nprint(time.perf_counter() - t)"
    return f"{prelude}\n{timing}"


def _probe_env(s3_url: str, mode: str, cache_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in worker_env(s3_url).items() if not k.startswith("PYTHONPYCACHE")}
    if mode == "cached":
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(cache_dir)  # keeps .pyc files out of the repository
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _import_once(code: str, env: dict[str, str]) -> tuple[float, float] | str:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    wall_ms = (time.perf_counter() - started) * 1000
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return lines[-1] if lines else f"exit {done.returncode}"
    return float(done.stdout.strip().splitlines()[-1]) * 1000, wall_ms


def _import_rows(runs: int, s3_url: str, cache_dir: Path) -> list[list[Any]]:
    rows = []
    for label, statement, mode in IMPORT_PROBES:
        env, code = _probe_env(s3_url, mode, cache_dir), _probe_code(statement, mode)
        _import_once(code, env)  # discarded: fills the page cache (and the .pyc prefix)
        samples = [_import_once(code, env) for _ in range(runs)]
        failures = [s for s in samples if isinstance(s, str)]
        if failures:
            rows.append([label, f"FAILED: {failures[0][:160]}", None, None])
            continue
        good = [s for s in samples if isinstance(s, tuple)]
        rows.append(
            [
                label,
                f"ok ({runs} fresh processes)",
                statistics.median(g[0] for g in good),
                statistics.median(g[1] for g in good),
            ]
        )
    return rows


def _importtime_breakdown(s3_url: str, cache_dir: Path, top: int = 10) -> Table | None:
    done = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-c",
            _probe_code("import handler.app", "source", timed=False),
        ],
        cwd=REPO_ROOT,
        env=_probe_env(s3_url, "source", cache_dir),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        return None
    by_package: dict[str, int] = collections.Counter()
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
        if match:
            by_package[match.group(2).split(".")[0]] += int(match.group(1))
    total = sum(by_package.values())
    rows = [
        [name, us / 1000, us / total * 100]
        for name, us in collections.Counter(by_package).most_common(top)
    ]
    return Table(
        f"`python -X importtime -c 'import handler.app'`: self time by top-level package "
        f"(total {total / 1000:.0f} ms, one run)",
        ["package", "ms", "% of total"],
        rows,
    )


def run(bench: Bench) -> Section:
    """T5: import time in fresh processes and warm one-item invocation overhead."""
    import_runs = bench.size(full=IMPORT_RUNS, quick=QUICK_IMPORT_RUNS)
    warm_invocations = bench.size(full=WARM_INVOCATIONS, quick=QUICK_WARM_INVOCATIONS)
    with start_servers(
        api=ApiOptions(body_bytes=SMALL_BODY_BYTES),
        s3=bench.s3(),
        log_dir=bench.log_dir / "servers-startup",
    ) as servers:
        import_rows = _import_rows(import_runs, servers.s3_url, bench.log_dir / "pycache")
        breakdown = _importtime_breakdown(servers.s3_url, bench.log_dir / "pycache")
        spec = WorkerSpec(
            impl="fanout_warm",
            api_url=servers.api_url,
            s3_url=servers.s3_url,
            bucket=servers.bucket,
            items=1,
            concurrency=1,
            run_id=f"bench-{bench.stamp}-warm",
            repeats=warm_invocations,
        )
        warm = run_worker(spec, timeout_s=WORKER_BASE_TIMEOUT_S * 3, log_dir=bench.log_dir)
        print(f"[startup] imports and warm invocations: {warm.get('status')}", file=sys.stderr)
        s3_kind = servers.s3_kind
    section = Section(
        "startup",
        "Start-up (T5)",
        f"Import: `import <modules>` timed inside {import_runs} fresh interpreters "
        f"(after one discarded run), and the whole process wall time. The first row compiles "
        f"the project's own modules from source whatever .pyc files exist, as on Lambda "
        f"(read-only /var/task) unless .pyc files are shipped; dependencies use pip's .pyc. "
        f"The `-X importtime` breakdown is of that first case. Warm invocation: "
        f"one cold one-item invocation, then {warm_invocations} warm one-item "
        f"invocations in the same process, each paired with a raw one-item fetch+write "
        f"(new aiohttp session, GET, unsigned PUT); overhead = median handler wall "
        f"time - median raw fetch+write time. S3: {s3_kind}.",
    )
    section.tables.append(
        Table(
            "Import time (medians)", ["what", "runs", "import ms", "process wall ms"], import_rows
        )
    )
    if breakdown:
        section.tables.append(breakdown)
    section.tables.append(_warm_table(warm))
    section.verdicts += _startup_verdicts(import_rows, warm)
    if not bench.quick:
        section.verdicts.append(_package_verdict(bench.log_dir / "lambda-package"))
    section.raw = {"imports": import_rows, "warm": warm}
    return section


def _warm_table(warm: dict[str, Any]) -> Table:
    if warm.get("status") != "ok":
        return Table(
            "Warm invocations",
            ["status"],
            [
                [
                    f"{warm.get('status', 'failed').upper()}: "
                    + "; ".join(warm.get("errors", []))[:200]
                ]
            ],
        )
    m = warm["medians"]
    return Table(
        "Warm invocations (one item, medians)",
        [
            "import in worker ms",
            "cold first invocation ms",
            "warm handler ms",
            "raw fetch+write ms",
            "overhead ms",
            "handler-reported duration ms",
            "handler - reported ms",
        ],
        [
            [
                warm["import_ms"],
                warm["cold_ms"],
                m["handler_ms"],
                m["raw_ms"],
                warm["overhead_ms"],
                m["duration_ms"],
                m["handler_ms"] - m["duration_ms"],
            ]
        ],
    )


def _startup_verdicts(import_rows: list[list[Any]], warm: dict[str, Any]) -> list[Verdict]:
    ours, cached, original = import_rows[0], import_rows[1], import_rows[2]
    imported = (
        f"{ours[2]:.0f} ms in a fresh process, {cached[2]:.0f} ms with all .pyc cached "
        f"(original's imports: {original[2]:.0f} ms)"
        if None not in (ours[2], cached[2], original[2])
        else str(ours[1])
    )
    verdicts = [
        Verdict("T5", "handler import time", imported, "REPORT" if ours[2] is not None else "N/A")
    ]
    if warm.get("status") == "ok":
        text = (
            f"{warm['overhead_ms']:.1f} ms over a raw one-item fetch+write "
            f"({warm['medians']['handler_ms']:.1f} vs {warm['medians']['raw_ms']:.1f} ms)"
        )
        verdicts.append(Verdict("T5", "warm one-item invocation overhead", text, "REPORT"))
    else:
        verdicts.append(
            Verdict(
                "T5",
                "warm one-item invocation overhead",
                f"{warm.get('status')}: {'; '.join(warm.get('errors', []))[:120]}",
                "N/A",
            )
        )
    return verdicts


def _package_verdict(artifacts: Path) -> Verdict:
    """Build the function as ``sam build`` does (the Makefile recipe) and weigh it unzipped."""
    claim = f"Lambda package <= {PACKAGE_MAX_MB} MB unzipped (make build-IngestFunction)"
    try:
        done = subprocess.run(
            ["make", "build-IngestFunction", f"ARTIFACTS_DIR={artifacts}"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=PACKAGE_BUILD_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Verdict("T5", claim, f"build did not run: {exc}"[:160], "N/A")
    if done.returncode != 0:  # offline: pip cannot fetch the arm64 wheels
        return Verdict("T5", claim, f"build failed: {done.stderr.strip()[-160:]}", "N/A")
    size = sum(f.stat().st_size for f in artifacts.rglob("*") if f.is_file()) / 1e6
    return Verdict(
        "T5",
        claim,
        f"{size:.1f} MB in {artifacts.name}",
        "PASS" if size <= PACKAGE_MAX_MB else "FAIL",
    )
