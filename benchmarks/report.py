"""RESULTS.md and the PNG plots, from the sections the scenarios return."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on a build machine
import matplotlib.pyplot as plt

PLOT_DPI = 110
LINE_COLORS = {
    "raw_floor": "tab:blue",
    "fanout_ingest": "tab:green",
    "fanout_ingest_sdk": "tab:purple",
}
MIB = 1 << 20
STATUS_MARK = {
    "PASS": "PASS",
    "FAIL": "**FAIL**",
    "N/A": "n/a",
    "INCONCLUSIVE": "inconclusive",
    "REPORT": "reported",
}


@dataclasses.dataclass(slots=True)
class Table:
    """One Markdown table."""

    caption: str
    headers: list[str]
    rows: list[list[Any]]


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    """One issue target against what this run measured."""

    target: str  # "T1"
    claim: str
    measured: str
    result: str  # PASS, FAIL, N/A, INCONCLUSIVE or REPORT


@dataclasses.dataclass(slots=True)
class Section:
    """What a scenario hands to the report."""

    key: str
    title: str
    setup: str
    tables: list[Table] = dataclasses.field(default_factory=list)
    verdicts: list[Verdict] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    plots: list[str] = dataclasses.field(default_factory=list)
    raw: dict[str, Any] = dataclasses.field(default_factory=dict)


# ------------------------------------------------------------------ machine


def machine_line() -> str:
    """CPU model, cores, RAM, Python, library versions, date and commit."""
    import aiohttp
    import psutil

    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = psutil.virtual_memory().total / 2**30
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{model}, {os.cpu_count()} cores, {ram:.1f} GiB RAM, Linux {platform.release()}, "
        f"Python {platform.python_version()}, aiohttp {aiohttp.__version__}, {now}, "
        f"commit {_git_commit()}"
    )


def _git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            text=True,
            capture_output=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "ingest_core", "handler"],
            cwd=root,
            text=True,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}{' + uncommitted changes to ingest_core/handler' if dirty.strip() else ''}"


# ----------------------------------------------------------------- markdown


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table_md(table: Table) -> list[str]:
    lines = [
        f"**{table.caption}**",
        "",
        "| " + " | ".join(table.headers) + " |",
        "|" + "|".join(" --- " for _ in table.headers) + "|",
    ]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.rows]
    return [*lines, ""]


def _verdicts_md(verdicts: list[Verdict]) -> list[str]:
    if not verdicts:
        return []
    table = Table(
        "Targets",
        ["target", "claim", "measured", "result"],
        [[v.target, v.claim, v.measured, STATUS_MARK[v.result]] for v in verdicts],
    )
    return _table_md(table)


def write_markdown(
    path: Path, sections: list[Section], *, machine: str, command: str, elapsed_s: float
) -> None:
    """Write RESULTS.md: machine, a summary of every target, then one part per scenario."""
    lines = [
        "# fanout-ingest benchmark results",
        "",
        f"Machine: {machine}.",
        "",
        f"Command: `{command}` ({elapsed_s:.0f} s).",
        "",
        "CPU is the client process's own `getrusage` user+sys time over the measured "
        "items only (after a warm-up); the API and S3 servers run in other processes. "
        "Figures are medians of the repeats; every run is checked (all items succeeded, "
        "and the S3 server holds exactly the expected objects and bytes).",
        "",
    ]
    every = [v for section in sections for v in section.verdicts]
    lines += ["## Summary", "", *_verdicts_md(every)]
    for section in sections:
        lines += [f"## {section.title}", "", section.setup, ""]
        lines += _verdicts_md(section.verdicts)
        for table in section.tables:
            lines += _table_md(table)
        lines += [f"![{name}]({name})" for name in section.plots] + ([""] if section.plots else [])
        lines += [f"- {note}" for note in section.notes] + ([""] if section.notes else [])
    path.write_text("\n".join(lines))


def write_json(path: Path, sections: list[Section], *, machine: str) -> None:
    """All raw run records, for later analysis."""
    payload = {"machine": machine, "sections": [_plain(s) for s in sections]}
    path.write_text(json.dumps(payload, indent=1, default=_plain))


def _plain(value: Any) -> Any:
    # Not dataclasses.asdict: it cannot rebuild the defaultdicts the scenarios keep.
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return str(value)


# -------------------------------------------------------------------- plots


def plot_cpu(out: Path, series: dict[str, dict[int, dict[str, Any]]]) -> list[str]:
    """items/s and CPU µs/item against concurrency; one line or level per implementation."""
    names = []
    for metric, label, filename, log in (
        ("items_per_s", "items/s (median)", "cpu_throughput.png", False),
        ("cpu_us_per_item", "client CPU µs per item (median)", "cpu_per_item.png", True),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for impl, by_conc in series.items():
            points = sorted((c, s[metric]) for c, s in by_conc.items() if s.get(metric) is not None)
            if not points:
                continue
            if impl.startswith("original"):
                ax.axhline(
                    points[0][1],
                    linestyle="--",
                    linewidth=1,
                    label=f"{impl} ({points[0][0]} thread{'s' if points[0][0] > 1 else ''})",
                    color="tab:red" if "sequential" in impl else "tab:orange",
                )
            else:
                ax.plot(
                    [p[0] for p in points],
                    [p[1] for p in points],
                    marker="o",
                    label=impl,
                    color=LINE_COLORS.get(impl),
                )
        ax.set_xlabel("concurrency")
        ax.set_ylabel(label)
        if log:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title("9 KB bodies, " + label)
        fig.tight_layout()
        fig.savefig(out / filename, dpi=PLOT_DPI)
        plt.close(fig)
        names.append(filename)
    return names


def plot_rss(
    out: Path,
    panels: list[tuple[str, list[tuple[str, dict[str, Any]]], float | None]],
    filename: str = "memory_rss.png",
) -> str:
    """RSS over time, one panel per group of runs; the measured window drawn solid."""
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 3.6 * len(panels)), squeeze=False)
    for ax, (title, runs, limit) in zip(axes[:, 0], panels, strict=True):
        for label, record in runs:
            samples = record.get("rss_samples") or []
            if not samples:
                continue
            t0 = samples[0][0]
            ax.plot(
                [t - t0 for t, _ in samples], [m for _, m in samples], label=label, linewidth=1.2
            )
            if record.get("t_start"):
                ax.axvspan(record["t_start"] - t0, record["t_end"] - t0, alpha=0.07)
        if limit is not None:
            ax.axhline(limit, color="tab:red", linestyle="--", linewidth=1, label="T4 limit")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("seconds since worker start (shaded: measured items)")
        ax.set_ylabel("RSS MiB")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / filename, dpi=PLOT_DPI)
    plt.close(fig)
    return filename


def median_or_none(values: list[float]) -> float | None:
    """The median, or None for no values."""
    return statistics.median(values) if values else None
