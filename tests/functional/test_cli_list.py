"""``fanout-ingest list``: one request per line of a JSONL/CSV list, as a subprocess.

Against the paginated test API and against Datasette, a real third-party API
(keyset pages with ``next``, ``next_url`` and a ``Link`` header): every row lands
exactly once, bad lines are refused before any request, and a run that looks
wrong (every item empty, a next page ignored) says so in its warnings.
"""

# The run_cli fixture is test_cli's, imported: its name reappears as a parameter.
# ruff: noqa: F811

from __future__ import annotations

import gzip
import json
import socket
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import StartServer
from tests.functional.test_cli import CLI, CLI_TIMEOUT_S, cli_env, run_cli  # noqa: F401
from tests.support.datasette_api import Datasette, start_datasette
from tests.support.paged_api import PagedAPI

pytestmark = pytest.mark.timeout(120)

SOURCE = "items"


def list_args(items: str, url: str, dest: Path, *extra: str) -> list[str]:
    return ["list", items, "--endpoint", url, "--source-id", SOURCE, "--dest", str(dest), *extra]


def bodies_under(folder: Path) -> Iterator[Any]:
    """Every stored body under ``folder`` (the manifests left out)."""
    for path in sorted(folder.rglob("*.json")):
        if "_manifests" not in path.parts:
            yield json.loads(path.read_bytes())


# ------------------------------------------------------------ the paged test API


def test_list_of_jsonl_lines_lands_every_record_of_every_page_exactly_once(
    api_server: StartServer, run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    # GIVEN an API paging each date's records 10 to a page, and a list of three dates
    api = PagedAPI(totals={"2025-01-01": 25, "2025-01-02": 7, "2025-01-03": 30})
    url = api_server(api.app).url
    items = tmp_path / "dates.jsonl"
    items.write_text("".join(json.dumps({"date": d}) + "\n" for d in api.totals))
    # WHEN the list is fetched following each item's next links
    done = run_cli(
        *list_args(str(items), f"{url}/json", tmp_path / "out", "--records-path", "items"),
        "--paginate",
        "json_link",
        "--next-path",
        "links.next",
        "--json",
    )
    # THEN every record of every date is stored once, in 3 + 1 + 3 pages
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["requested"], result["succeeded"], result["pages_written"]) == (3, 3, 7)
    assert result["records_ingested"] == 62 and result["warnings"] == []
    stored = Counter(
        (r["date"], r["n"]) for body in bodies_under(tmp_path / "out") for r in body["items"]
    )
    expected = Counter((r["date"], r["n"]) for d in api.totals for r in api.records_of(d))
    assert stored == expected
    # AND the keys name the list and each item's index and page
    rid = result["request_id"]
    assert rid.startswith("list-dates-")
    assert (tmp_path / "out" / SOURCE / f"{rid}-2-2.json").is_file()


def test_list_of_csv_rows_from_stdin_with_fixed_query_params(
    api_server: StartServer, cli_env: dict[str, str], tmp_path: Path
) -> None:
    # GIVEN a CSV list on stdin (an empty cell leaves its param out)
    api = PagedAPI(total=3)
    url = api_server(api.app).url
    csv_text = "date,region\n2025-01-01,eu\n2025-01-02,\n"
    # WHEN it is fetched with a fixed --query param added to every item
    done = subprocess.run(
        [*CLI, *list_args("-", f"{url}/cursor", tmp_path / "out", "--query", "limit=5")],
        input=csv_text,
        cwd=tmp_path,
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    # THEN both items went out with their own params and the fixed one
    assert done.returncode == 0, done.stderr
    assert sorted(
        (s.query.get("date"), s.query.get("region"), s.query["limit"]) for s in api.seen
    ) == [
        ("2025-01-01", "eu", "5"),
        ("2025-01-02", None, "5"),
    ]
    assert "list stdin list-stdin-" in done.stdout


def test_a_bad_line_is_refused_before_any_request_naming_its_number(
    api_server: StartServer, run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    # GIVEN a list whose third line is an array, and a CSV row with a missing field
    api = PagedAPI()
    url = api_server(api.app).url
    jsonl = tmp_path / "ids.jsonl"
    jsonl.write_text('{"date": "2025-01-01"}\n{"date": "2025-01-02"}\n["2025-01-03"]\n')
    csv_file = tmp_path / "ids.csv"
    csv_file.write_text("date,region\n2025-01-01,eu\n2025-01-02\n")
    for path, reason in (
        (jsonl, "line 3: a JSON list, not an object"),
        (csv_file, "line 3: 1 fields, the header has 2"),
    ):
        # WHEN each is listed
        done = run_cli(*list_args(str(path), f"{url}/cursor", tmp_path / "out"))
        # THEN it is bad usage naming the line and why, and nothing was requested
        assert done.returncode == 2, done.stderr
        assert f"error: ITEMS: {path} {reason}" in done.stderr
    assert api.seen == []


def test_list_retry_from_runs_only_the_items_that_failed(
    api_server: StartServer, run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    # GIVEN an API whose first answer is a 503, and one attempt per item
    api = PagedAPI(total=4, faults={("/cursor", 0): [503]})
    url = api_server(api.app).url
    items = tmp_path / "dates.jsonl"
    items.write_text('{"date": "2025-01-01"}\n{"date": "2025-01-02"}\n')
    first = run_cli(
        *list_args(str(items), f"{url}/cursor", tmp_path / "out"),
        "--max-attempts",
        "1",
        "--concurrency",
        "1",
    )
    assert first.returncode == 1, first.stderr
    redrive = next(tmp_path.glob("fanout-redrive-list-dates-*.jsonl"))
    assert len(redrive.read_text().splitlines()) == 2  # the header and the one item
    assert f"fanout-ingest list --retry-from {redrive}" in first.stdout
    # WHEN the re-drive file is retried with the same list named again, and then alone
    both = run_cli("list", str(items), "--retry-from", str(redrive))
    retried = run_cli("list", "--retry-from", str(redrive), "--concurrency", "2")
    # THEN naming the list is refused, and the re-drive lands what was missing
    assert both.returncode == 2 and "ITEMS: cannot be combined with --retry-from" in both.stderr
    assert retried.returncode == 0, retried.stderr
    assert "applied on top of the re-drive file: --concurrency 2" in retried.stderr
    assert len(list(bodies_under(tmp_path / "out"))) == 2
    assert len(api.seen) == 3  # the failed answer, the item that went through, the retry


# ------------------------------------------------------------- a million lines

MEASURE = textwrap.dedent(
    """
    import resource, sys
    from ingest_core.cli import build_parser
    from ingest_core.cli.listing import _prepare
    from ingest_core.cli.params_input import open_params

    args = build_parser().parse_args(
        ["list", sys.argv[1], "--endpoint", "https://api.example.com/v1/items",
         "--source-id", "ids", "--dest", sys.argv[2]]
    )
    with open_params(args.items, None, flag="ITEMS") as params:
        job = _prepare(args, params).job
        seen = sum(1 for _ in job.items())
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(job.requested, seen, round(peak_mib, 1))
    """
)


def _peak_rss(items: Path, tmp_path: Path) -> tuple[int, int, float]:
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(items), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    requested, seen, peak = done.stdout.split()
    return int(requested), int(seen), float(peak)


@pytest.mark.timeout(400)
def test_a_million_line_list_is_checked_and_planned_in_bounded_memory(tmp_path: Path) -> None:
    # GIVEN a list of 1,000 lines and one of 1,000,000 (about 30 MB)
    small, large = tmp_path / "small.jsonl", tmp_path / "large.jsonl"
    for path, count in ((small, 1_000), (large, 1_000_000)):
        with path.open("w") as out:
            for i in range(count):
                out.write(f'{{"id": {i}, "kind": "item-{i % 7}"}}\n')
    # WHEN each is checked, turned into a job and every item planned
    small_run = _peak_rss(small, tmp_path)
    large_run = _peak_rss(large, tmp_path)
    # THEN every line became an item, and the peak memory hardly grew with the list
    assert small_run[:2] == (1_000, 1_000)
    assert large_run[:2] == (1_000_000, 1_000_000)
    growth_mib = large_run[2] - small_run[2]
    assert growth_mib < 16, f"peak RSS grew {growth_mib:.1f} MiB for 999,000 more lines"


# ------------------------------------------------------------ Datasette, for real


@pytest.fixture
def datasette(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Datasette]:
    """Datasette over a generated 3,000-row table: 1,000 rows per group, 100 to a page."""
    pytest.importorskip("datasette", reason="the dev extra installs Datasette")
    with start_datasette(tmp_path_factory.mktemp("datasette"), rows=3_000) as server:
        yield server


def stored_rows(folder: Path) -> Counter[int]:
    return Counter(row["id"] for body in bodies_under(folder) for row in body["rows"])


def test_list_against_datasette_lands_every_row_once_and_warns_when_it_looks_wrong(
    datasette: Datasette, run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    # GIVEN a CSV list of Datasette filters, one per group of 1,000 rows
    groups = tmp_path / "groups.csv"
    groups.write_text("grp\na\nb\nc\n")
    common = ["--query", "_shape=objects", "--records-path", "rows", "--json"]

    # WHEN it is listed with --paginate auto
    auto = run_cli(
        *list_args(str(groups), datasette.table, tmp_path / "auto", *common), "--paginate", "auto"
    )
    # THEN the Link header is chosen (agreeing with next_url and the next cursor), and
    # every row of the table lands exactly once, with no warning
    assert auto.returncode == 0, auto.stderr
    assert "--paginate auto chose link_header from Link header" in auto.stderr
    assert "agrees with body field next" in auto.stderr
    result = json.loads(auto.stdout)
    assert (result["records_ingested"], result["pages_written"]) == (3_000, 30)
    assert result["warnings"] == []
    assert stored_rows(tmp_path / "auto") == Counter(range(1, 3_001))

    # WHEN it is listed again, packed one line per record
    packed = run_cli(
        *list_args(str(groups), datasette.table, tmp_path / "packed", *common),
        "--paginate",
        "link_header",
        "--pack",
        "record",
    )
    # THEN the pack objects hold every row exactly once too
    assert packed.returncode == 0, packed.stderr
    lines = [
        json.loads(line)
        for path in (tmp_path / "packed").rglob("*.ndjson.gz")
        for line in gzip.decompress(path.read_bytes()).splitlines()
    ]
    assert Counter(line["id"] for line in lines) == Counter(range(1, 3_001))

    # WHEN the same list runs without pagination
    plain = run_cli(*list_args(str(groups), datasette.table, tmp_path / "plain", *common))
    # THEN it succeeds with page 0 of each group only, and says so, naming the flags
    assert plain.returncode == 0, plain.stderr
    result = json.loads(plain.stdout)
    assert (result["status"], result["records_ingested"]) == ("SUCCESS", 300)
    (warning,) = result["warnings"]
    assert warning["code"] == "next_page_ignored" and warning["responses"] == 3
    assert warning["flags"] == "--paginate link_header"
    assert "--paginate link_header, or --paginate auto" in warning["message"]

    # WHEN a list names groups that do not exist (Datasette answers 200 with 0 rows)
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text('{"grp": "A"}\n{"grp": "B"}\n')
    empty = run_cli(*list_args(str(wrong), datasette.table, tmp_path / "empty", *common[:-1]))
    # THEN the run still succeeds, and the summary warns that every item was empty
    assert empty.returncode == 0, empty.stderr
    assert "warning: all 2 items returned 0 records at rows" in empty.stdout


def test_paginate_auto_refuses_to_guess_when_page_0_disagrees_with_itself(
    api_server: StartServer, run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    # GIVEN an API whose page 0 has a Link header and a body next link to different pages
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(
            {"items": [1, 2], "next": f"/v1/items?page=9&id={request.query['id']}"},
            headers={"Link": '</v1/items?page=2>; rel="next"'},
        )

    app = web.Application()
    app.router.add_get("/v1/items", handler)
    url = api_server(app).url
    items = tmp_path / "ids.jsonl"
    items.write_text('{"id": 1}\n')
    # WHEN it is listed with --paginate auto
    done = run_cli(
        *list_args(str(items), f"{url}/v1/items", tmp_path / "out"), "--paginate", "auto"
    )
    # THEN it is bad usage naming both readings, and nothing is stored
    assert done.returncode == 2, done.stderr
    assert "--paginate: auto refuses to guess: page 0's next links disagree" in done.stderr
    assert "page=2" in done.stderr and "page=9" in done.stderr
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------- the documented example


def _doc_block(path: Path, marker: str) -> str:
    """The fenced bash block of ``path`` whose text contains ``marker``."""
    blocks = path.read_text().split("```bash\n")[1:]
    (block,) = [b.split("```")[0] for b in blocks if marker in b]
    return block


def test_the_documented_list_examples_run_as_written(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    # GIVEN the demo's sample API, as docs/CLI.md starts it (on a free port, not 8765)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    api = subprocess.Popen(
        [sys.executable, "-m", "ingest_core.cli.sample_api", "--port", str(port), "--no-latency"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {**cli_env, "PATH": f"{Path(CLI[0]).parent}:{cli_env['PATH']}"}
    env.pop("FANOUT_ALLOW_PRIVATE_NETWORKS")  # the examples pass --allow-private-networks
    docs = Path(__file__).parents[2] / "docs" / "CLI.md"
    try:
        _wait_for_port(port)
        # WHEN the two list examples of docs/CLI.md run as written
        outcomes = [
            subprocess.run(
                [
                    "bash",
                    "-euo",
                    "pipefail",
                    "-c",
                    _doc_block(docs, marker).replace("8765", str(port)),
                ],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=CLI_TIMEOUT_S,
                check=False,
            )
            for marker in ("--paginate auto --dest ./lake-list", "printf 'date\\n")
        ]
    finally:
        api.terminate()
        api.wait(timeout=10)
    # THEN they print what the page says they print
    auto, plain = outcomes
    assert auto.returncode == 0, auto.stderr
    assert '--paginate auto chose link_header from Link header rel="next"' in auto.stderr
    assert "72 (elements of data.items)" in auto.stdout and "pages          9" in auto.stdout
    assert plain.returncode == 0, plain.stderr
    assert "warning: 2 responses say more pages follow" in plain.stdout


def _wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"the sample API did not listen on {port}")
