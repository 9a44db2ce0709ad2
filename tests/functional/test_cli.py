"""The ``fanout-ingest`` command, run as a subprocess against local servers.

Each test starts the real console script (``.venv/bin/fanout-ingest``, or
``python -m ingest_core.cli`` when the script is not installed) with an
environment that allows private networks and points S3 at moto, and judges it
by what a user sees: exit codes, stdout, stderr and the files and objects left.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from tests.conftest import RAW_BUCKET, StartServer
from tests.support.faults import RateLimitedAPI, expected_bytes
from tests.support.servers import MotoS3, Response, ScriptedAPI, default_body

pytestmark = pytest.mark.timeout(60)

SOURCE = "api-1"
TEMP_PREFIX = ".fanout-tmp-"
MiB = 1024 * 1024
CLI_TIMEOUT_S = 50.0
POLL_S = 0.05


def _cli_command() -> list[str]:
    script = Path(sys.executable).with_name("fanout-ingest")
    return [str(script)] if script.exists() else [sys.executable, "-m", "ingest_core.cli"]


CLI = _cli_command()


def days(n: int, start_day: int = 1) -> list[str]:
    return [f"2025-01-{d:02d}" for d in range(start_day, start_day + n)]


def key_of(request_id: str, index: int, prefix: str = "") -> str:
    return f"{prefix}{SOURCE}/{request_id}-{index}.json"


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """The subprocess environment: the test's clean one, private networks allowed."""
    env = dict(os.environ)
    env["FANOUT_ALLOW_PRIVATE_NETWORKS"] = "true"
    env["HOME"] = str(tmp_path)
    env.pop("AWS_ENDPOINT_URL_S3", None)
    return env


@pytest.fixture
def run_cli(
    tmp_path: Path, cli_env: dict[str, str]
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_cli(*args, env=...)``: run to completion in ``tmp_path``, capture output."""

    def run(
        *args: str,
        env: dict[str, str] | None = None,
        timeout: float = CLI_TIMEOUT_S,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, *args],
            cwd=tmp_path,
            env=env or cli_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    return run


@pytest.fixture
def run_many(
    tmp_path: Path, cli_env: dict[str, str]
) -> Callable[..., list[subprocess.CompletedProcess[str]]]:
    """``run_many([args, ...], env=...)``: run several at once (each start costs ~0.6 s)."""

    def run(
        commands: Sequence[Sequence[str]],
        env: dict[str, str] | None = None,
    ) -> list[subprocess.CompletedProcess[str]]:
        processes = [
            subprocess.Popen(
                [*CLI, *args],
                cwd=tmp_path,
                env=env or cli_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for args in commands
        ]
        done = []
        for args, process in zip(commands, processes, strict=True):
            try:
                out, err = process.communicate(timeout=CLI_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                out, err = process.communicate()
            done.append(subprocess.CompletedProcess([*CLI, *args], process.returncode, out, err))
        return done

    return run


def backfill_args(url: str, dest: str | Path, start: str, end: str, *extra: str) -> list[str]:
    return [
        "backfill",
        "--endpoint",
        f"{url}/v1/data",
        "--source-id",
        SOURCE,
        "--start",
        start,
        "--end",
        end,
        "--dest",
        str(dest),
        *extra,
    ]


def files_under(folder: Path) -> dict[str, Path]:
    """Every file under ``folder`` by its path relative to it, hidden ones included."""
    return {str(p.relative_to(folder)): p for p in folder.rglob("*") if p.is_file()}


# ------------------------------------------------------------------ backfill: exit 0


def test_backfill_into_a_local_folder_writes_every_key_and_resumes(
    api_server: StartServer, run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    # GIVEN an API answering every date
    api = ScriptedAPI()
    url = api_server(api).url
    dest = tmp_path / "out"
    dates = days(10)

    # WHEN ten days are backfilled into a local folder, output not a terminal
    done = run_cli(*backfill_args(url, dest, dates[0], dates[-1], "--concurrency", "4"))

    # THEN it exits 0 and every key holds exactly the body served
    assert done.returncode == 0, done.stderr
    rid = "backfill-20250101-20250110-1d"
    for index, day in enumerate(dates):
        assert (dest / key_of(rid, index)).read_bytes() == default_body({"date": day})
    manifest = (dest / SOURCE / "_manifests" / f"{rid}.json").read_text().splitlines()
    assert len(manifest) == 10
    # AND the summary is on stdout, plain progress lines on stderr, and no re-drive file
    assert "succeeded" in done.stdout and "re-drive" not in done.stdout
    assert "backfill: 10/10 (100.0%), 0 failed" in done.stderr
    assert not list(tmp_path.glob("fanout-redrive-*"))

    # WHEN the same flags run again with --skip-existing and --json
    again = run_cli(*backfill_args(url, dest, dates[0], dates[-1], "--skip-existing", "--json"))

    # THEN the stable request id finds every key already there
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout)
    assert result["request_id"] == rid
    assert (result["succeeded"], result["skipped_existing"], result["bytes_written"]) == (10, 10, 0)
    # AND nothing was fetched again
    assert sum(api.hits.values()) == 10


def test_backfill_to_s3_with_a_prefix_puts_keys_and_manifest_under_it(
    api_server: StartServer, s3: MotoS3, run_cli: Callable[..., Any], cli_env: dict[str, str]
) -> None:
    # GIVEN an API and moto S3 (AWS_ENDPOINT_URL_S3 in the subprocess environment)
    api = ScriptedAPI()
    url = api_server(api).url
    env = {**cli_env, "AWS_ENDPOINT_URL_S3": s3.endpoint}
    dates = days(5)

    # WHEN five days are backfilled to s3://bucket/landing/zone
    done = run_cli(
        *backfill_args(
            url,
            f"s3://{RAW_BUCKET}/landing/zone",
            dates[0],
            dates[-1],
            "--query",
            "region=eu",
            "--request-id",
            "run-1",
            "--json",
        ),
        env=env,
    )

    # THEN every object and the manifest are under the prefix, with the exact bytes
    assert done.returncode == 0, done.stderr
    prefix = "landing/zone/"
    expected = [key_of("run-1", i, prefix) for i in range(5)]
    manifest = f"{prefix}{SOURCE}/_manifests/run-1.json"
    assert s3.list_keys(RAW_BUCKET) == sorted([*expected, manifest])
    for index, day in enumerate(dates):
        body = s3.get_bytes(RAW_BUCKET, expected[index])
        assert body == default_body({"region": "eu", "date": day})
    result = json.loads(done.stdout)
    assert result["manifest_key"] == manifest
    assert result["manifest_uri"] == f"s3://{RAW_BUCKET}/{manifest}"


# ------------------------------------------------------------- backfill: exit 2


BAD_BACKFILL_FLAGS: list[tuple[dict[str, str | None], str, str]] = [
    ({"--start": "2025-02-30"}, "--start", "day is out of range"),
    ({"--end": "2024-12-31"}, "--end", "is before start"),
    ({"--step": "1y"}, "--step", "not of the form"),
    ({"--format": ""}, "--format", "empty string"),
    ({"--dest": "ftp://host/path"}, "--dest", "unknown scheme 'ftp://'"),
    ({"--source-id": "../up"}, "--source-id", "'..' segment"),
    ({"--concurrency": "0"}, "--concurrency", "greater than or equal to 1"),
    ({"--memory-budget-mb": "4"}, "--memory-budget-mb/--part-size-mb", "at least part_size_mb"),
    ({"--key-template": "{nope}"}, "--key-template", "nope"),
    ({"--request-id": "a b"}, "--request-id", "must be 1-128"),
    ({"--endpoint": None}, "--endpoint", "required"),
]


def test_backfill_bad_usage_exits_2_naming_the_flag(
    run_many: Callable[..., Any], cli_env: dict[str, str], tmp_path: Path
) -> None:
    # GIVEN valid flags with one made wrong per run (no server: nothing may be fetched)
    good: dict[str, str | None] = {
        "--endpoint": "http://127.0.0.1:9/v1/data",
        "--source-id": SOURCE,
        "--start": "2025-01-01",
        "--end": "2025-01-31",
        "--dest": str(tmp_path / "out"),
    }
    commands = []
    for change, _, _ in BAD_BACKFILL_FLAGS:
        flags = {**good, **change}
        given = [(name, value) for name, value in flags.items() if value is not None]
        commands.append(["backfill", *[part for pair in given for part in pair]])

    # WHEN each runs
    runs = run_many(commands)

    # THEN each exits 2 with a message naming the flag and the reason
    for (change, flag, words), done in zip(BAD_BACKFILL_FLAGS, runs, strict=True):
        assert done.returncode == 2, (change, done.stderr)
        assert f"error: {flag}: " in done.stderr and words in done.stderr, (change, done.stderr)
    assert not (tmp_path / "out").exists()


def test_http_endpoint_is_bad_usage_unless_private_networks_are_allowed(
    run_many: Callable[..., Any], cli_env: dict[str, str], tmp_path: Path
) -> None:
    # GIVEN no FANOUT_ALLOW_PRIVATE_NETWORKS in the environment
    env = {k: v for k, v in cli_env.items() if k != "FANOUT_ALLOW_PRIVATE_NETWORKS"}
    args = [
        "backfill",
        "--endpoint",
        "http://127.0.0.1:9/v1/data",
        "--source-id",
        SOURCE,
        "--start",
        "2025-01-01",
        "--end",
        "2025-01-01",
        "--dest",
        str(tmp_path / "out"),
    ]

    # WHEN an http endpoint is given, then the same with --allow-private-networks
    refused, allowed = run_many(
        [args, [*args, "--allow-private-networks", "--max-attempts", "1"]], env=env
    )

    # THEN the first is bad usage naming --endpoint; the second runs (and fails to connect)
    assert refused.returncode == 2
    assert "error: --endpoint: scheme 'http' is not allowed" in refused.stderr
    assert "--allow-private-networks" in refused.stderr
    assert allowed.returncode == 1, allowed.stderr
    assert "connection" in allowed.stdout

    # WHEN its re-drive file is retried, without the flag
    redrive = tmp_path / "fanout-redrive-backfill-20250101-20250101-1d.jsonl"
    (retried,) = run_many(
        [["backfill", "--retry-from", str(redrive), "--max-attempts", "1"]], env=env
    )

    # THEN the file carried the permission: it runs again rather than being refused
    assert retried.returncode == 1, retried.stderr
    assert "connection" in retried.stdout


# ------------------------------------------------------- exit 1 and the re-drive file


def test_redrive_file_round_trip_lands_every_key_under_the_same_names(
    api_server: StartServer, run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    # GIVEN day 3 permanently 404 and day 5 failing only on its first three hits
    dates = days(8)
    api = ScriptedAPI(
        {
            dates[2]: Response(status=404),
            dates[4]: [Response(status=503)] * 3 + [Response()],
        }
    )
    url = api_server(api).url
    dest = tmp_path / "out"

    # WHEN the range is backfilled with two attempts per item
    first = run_cli(*backfill_args(url, dest, dates[0], dates[-1], "--max-attempts", "2"))

    # THEN it exits 1 and names a re-drive file listing exactly the two failed items
    assert first.returncode == 1, first.stderr
    rid = "backfill-20250101-20250108-1d"
    redrive = tmp_path / f"fanout-redrive-{rid}.jsonl"
    assert f"re-drive file: {redrive}" in first.stdout
    header, *lines = [json.loads(line) for line in redrive.read_text().splitlines()]
    assert header["request_id"] == rid and header["dest"] == str(dest)
    assert [(item["index"], item["params"]) for item in lines] == [
        (2, {"date": dates[2]}),
        (4, {"date": dates[4]}),
    ]
    assert {item["kind"] for item in lines} == {"http_status"}
    written = {key_of(rid, i) for i in range(8) if i not in (2, 4)}
    assert {k for k in files_under(dest) if "_manifests" not in k} == written

    # WHEN the API is fixed and only those items are retried from the file
    api.set_script(dates[2], Response())
    second = run_cli("backfill", "--retry-from", str(redrive), "--max-attempts", "2")

    # THEN it exits 0, every key is present under the very same names, with the right bytes
    assert second.returncode == 0, second.stderr
    for index, day in enumerate(dates):
        assert (dest / key_of(rid, index)).read_bytes() == default_body({"date": day})
    # AND only the two items were fetched again, and the spent re-drive file is gone
    assert api.hits[dates[0]] == 1 and api.hits[dates[2]] == 2
    assert not redrive.exists()
    assert (dest / SOURCE / "_manifests" / f"{rid}-2-4.json").exists()


# -------------------------------------------- local-folder atomicity, SIGKILL, SIGINT

BIG = 12 * MiB
SLOW_BYTES_PER_S = 4 * MiB
FAST_DAYS = 3
SLOW_RUN_DAYS = 8


def _slow_api(body: bytes) -> ScriptedAPI:
    """The first FAST_DAYS days answer at once; the others drip their 12 MiB over ~3 s."""
    binary = {"Content-Type": "application/octet-stream"}
    fast = {day: Response(body=body, headers=binary) for day in days(FAST_DAYS)}
    slow = Response(body=body, headers=binary, drip_bytes_per_s=SLOW_BYTES_PER_S)
    return ScriptedAPI(fast, default=slow)


def _start_slow_backfill(
    url: str, dest: Path, cwd: Path, env: dict[str, str]
) -> subprocess.Popen[str]:
    dates = days(SLOW_RUN_DAYS)
    args = backfill_args(
        url,
        dest,
        dates[0],
        dates[-1],
        "--no-expect-json",
        "--part-size-mb",
        "5",
        "--memory-budget-mb",
        "64",
        "--concurrency",
        "4",
    )
    return subprocess.Popen(
        [*CLI, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_partial_state(dest: Path, process: subprocess.Popen[str]) -> None:
    """Until FAST_DAYS files are complete and some slow body has a part on disk."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        files = files_under(dest) if dest.exists() else {}
        complete = [p for name, p in files.items() if not Path(name).name.startswith(".")]
        partial = [p for name, p in files.items() if Path(name).name.startswith(TEMP_PREFIX)]
        if len(complete) >= FAST_DAYS and any(_size(p) >= 5 * MiB for p in partial):
            return
        time.sleep(POLL_S)
    process.kill()
    out, err = process.communicate()
    pytest.fail(f"never reached a partial state: rc={process.returncode}\n{out}\n{err}")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


@pytest.fixture
def big_body() -> bytes:
    return expected_bytes(BIG, seed="cli")


def test_sigkill_mid_run_leaves_only_complete_files_or_hidden_temp_files(
    api_server: StartServer, cli_env: dict[str, str], tmp_path: Path, big_body: bytes
) -> None:
    # GIVEN a backfill of large bodies, some still streaming to disk
    api = _slow_api(big_body)
    url = api_server(api).url
    dest = tmp_path / "out"
    process = _start_slow_backfill(url, dest, tmp_path, cli_env)
    _wait_for_partial_state(dest, process)

    # WHEN the process is killed outright
    process.kill()
    process.communicate(timeout=10)

    # THEN every file under a key is complete, and partial bodies exist only as hidden temps
    files = files_under(dest)
    keyed = {name: p for name, p in files.items() if not Path(name).name.startswith(".")}
    temps = [name for name in files if Path(name).name.startswith(TEMP_PREFIX)]
    assert len(keyed) >= FAST_DAYS and temps
    for name, path in keyed.items():
        assert path.read_bytes() == big_body, f"{name} is not the complete body"


def test_sigint_mid_run_stops_cleanly_and_the_redrive_file_completes_it(
    api_server: StartServer,
    cli_env: dict[str, str],
    tmp_path: Path,
    big_body: bytes,
    run_cli: Callable[..., Any],
) -> None:
    # GIVEN a backfill of large bodies, some still streaming to disk
    api = _slow_api(big_body)
    url = api_server(api).url
    dest = tmp_path / "out"
    process = _start_slow_backfill(url, dest, tmp_path, cli_env)
    _wait_for_partial_state(dest, process)

    # WHEN it gets Ctrl-C
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=20)

    # THEN it exits 130 with its summary and a re-drive file of exactly the missing items
    assert process.returncode == 130, err
    assert "stopping" in err and "requested" in out
    rid = "backfill-20250101-20250108-1d"
    redrive = tmp_path / f"fanout-redrive-{rid}.jsonl"
    assert f"re-drive file: {redrive}" in out
    listed = {json.loads(line)["index"] for line in redrive.read_text().splitlines()[1:]}
    present = {i for i in range(SLOW_RUN_DAYS) if (dest / key_of(rid, i)).exists()}
    assert listed == set(range(SLOW_RUN_DAYS)) - present and listed
    # AND uploads in flight were aborted: no temp file is left behind
    assert not [name for name in files_under(dest) if TEMP_PREFIX in name]

    # WHEN the rest is retried, now at full speed
    api_fast = {day: Response(body=big_body) for day in days(SLOW_RUN_DAYS)}
    for day, spec in api_fast.items():
        api.set_script(day, spec)
    done = run_cli("backfill", "--retry-from", str(redrive))

    # THEN every key holds the complete body
    assert done.returncode == 0, done.stderr
    for index in range(SLOW_RUN_DAYS):
        assert (dest / key_of(rid, index)).read_bytes() == big_body


# ------------------------------------------------------------------------------ plan


def test_plan_json_array_gets_leap_days_and_month_ends_right(run_cli: Callable[..., Any]) -> None:
    # WHEN a monthly plan starts on a 31st in a leap year
    done = run_cli("plan", "--start", "2024-01-31", "--end", "2024-06-30", "--step", "1mo")

    # THEN it is one JSON array with each month clamped to its end
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [
        {"index": i, "params": {"date": d}}
        for i, d in enumerate(
            ["2024-01-31", "2024-02-29", "2024-03-31", "2024-04-30", "2024-05-31", "2024-06-30"]
        )
    ]


def test_plan_jsonl_with_offset_query_and_format_to_a_file(
    run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    # WHEN a daily plan over a leap day is written as JSON Lines to a file
    out = tmp_path / "plan.jsonl"
    done = run_cli(
        "plan",
        "--start",
        "2024-02-27",
        "--end",
        "2024-03-01",
        "--param",
        "day",
        "--format",
        "%Y%m%d",
        "--query",
        "region=eu",
        "--index-offset",
        "100",
        "--jsonl",
        "--out",
        str(out),
    )

    # THEN each line is one item, inclusive of both ends, with the fixed parameter
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert [json.loads(line) for line in out.read_text().splitlines()] == [
        {"index": 100 + i, "params": {"region": "eu", "day": d}}
        for i, d in enumerate(["20240227", "20240228", "20240229", "20240301"])
    ]


def test_plan_of_100000_items_streams_quickly(run_many: Callable[..., Any]) -> None:
    # WHEN a 100,000-day plan is written as JSON Lines and as a JSON array
    end = "2173-10-15"  # 1900-01-01 + 99,999 days
    started = time.monotonic()
    lines, array = run_many(
        [
            ["plan", "--start", "1900-01-01", "--end", end, "--jsonl"],
            ["plan", "--start", "1900-01-01", "--end", end],
        ]
    )
    elapsed = time.monotonic() - started

    # THEN both hold every item, first to last, and came out fast
    assert lines.returncode == 0 and array.returncode == 0
    rows = lines.stdout.splitlines()
    assert len(rows) == 100_000
    assert json.loads(rows[-1]) == {"index": 99_999, "params": {"date": end}}
    items = json.loads(array.stdout)
    assert len(items) == 100_000 and items[59]["params"]["date"] == "1900-03-01"  # 1900: no leap
    assert elapsed < 20


BAD_PLAN_FLAGS: list[tuple[list[str], str]] = [
    (["--start", "2024-01-01", "--end", "2023-01-01"], "--end"),
    (["--start", "2024-13-01", "--end", "2024-12-01"], "--start"),
    (["--start", "2024-01-01", "--end", "2024-12-01", "--step", "0d"], "--step"),
    (["--start", "2024-01-01", "--end", "2024-12-01", "--step", "6h"], "--start"),
    (
        ["--start", "2024-01-01", "--end", "2024-12-01", "--jsonl", "--upload", "s3://b/p.json"],
        "--upload",
    ),
    (["--start", "2024-01-01", "--end", "2024-12-01", "--upload", "s3://b/"], "--upload"),
]


def test_plan_bad_usage_exits_2_naming_the_flag(run_many: Callable[..., Any]) -> None:
    runs = run_many([["plan", *args] for args, _ in BAD_PLAN_FLAGS])
    for (args, flag), done in zip(BAD_PLAN_FLAGS, runs, strict=True):
        assert done.returncode == 2, (args, done.stderr)
        assert f"error: {flag}: " in done.stderr, (args, done.stderr)


def test_plan_upload_and_launch_against_moto(
    s3: MotoS3, run_cli: Callable[..., Any], cli_env: dict[str, str], tmp_path: Path
) -> None:
    # GIVEN moto serving S3 and Step Functions, and a state machine
    env = {**cli_env, "AWS_ENDPOINT_URL": s3.endpoint}
    sfn = boto3.client(
        "stepfunctions",
        endpoint_url=s3.endpoint,
        region_name="us-east-1",
        config=Config(proxies={}),
    )
    try:
        _moto_config(s3, execute=True)  # moto runs the (Pass) state machine, for --wait
        arn = sfn.create_state_machine(
            name="bf",
            roleArn="arn:aws:iam::123456789012:role/bf",
            definition=json.dumps({"StartAt": "W", "States": {"W": {"Type": "Pass", "End": True}}}),
        )["stateMachineArn"]

        # WHEN a plan is uploaded (format from the key) and a backfill launched over it
        plan = run_cli(
            "plan",
            "--start",
            "2024-02-28",
            "--end",
            "2024-03-01",
            "--upload",
            f"s3://{RAW_BUCKET}/plans/p.jsonl",
            env=env,
        )
        api_config = tmp_path / "api.json"
        config = {
            "endpoint": "https://api.example.com/v1",
            "raw_bucket": RAW_BUCKET,
            "source_id": SOURCE,
        }
        api_config.write_text(json.dumps(config))
        launch = run_cli(
            "launch",
            "--state-machine",
            arn,
            "--plan",
            f"s3://{RAW_BUCKET}/plans/p.jsonl",
            "--api-config",
            str(api_config),
            "--name",
            "bf-2024",
            "--wait",
            "--poll-interval",
            "0.1",
            env=env,
        )

        # THEN the plan object is JSON Lines, and the execution got the plan and config
        assert plan.returncode == 0, plan.stderr
        uploaded = s3.get_bytes(RAW_BUCKET, "plans/p.jsonl").decode().splitlines()
        assert [json.loads(x)["params"]["date"] for x in uploaded] == [
            "2024-02-28",
            "2024-02-29",
            "2024-03-01",
        ]
        assert launch.returncode == 0, launch.stderr
        execution_arn = launch.stdout.strip()
        described = sfn.describe_execution(executionArn=execution_arn)
        assert described["name"] == "bf-2024"
        execution_input = json.loads(described["input"])
        assert execution_input["plan"] == {"bucket": RAW_BUCKET, "key": "plans/p.jsonl"}
        assert execution_input["api_config"] == config
        # AND --wait followed it to its end
        assert "SUCCEEDED" in launch.stderr
    finally:
        _moto_config(s3, execute=False)
        sfn.close()


def _moto_config(s3: MotoS3, *, execute: bool) -> None:
    body = json.dumps({"stepfunctions": {"execute_state_machine": execute}}).encode()
    request = urllib.request.Request(f"{s3.endpoint}/moto-api/config", data=body, method="POST")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as response:
        response.read()


def test_launch_refuses_a_bad_api_config_before_calling_aws(
    run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    # GIVEN an api_config file without a raw_bucket
    api_config = tmp_path / "api.json"
    api_config.write_text(json.dumps({"endpoint": "https://x.example", "source_id": SOURCE}))

    # WHEN a launch is attempted
    arn = "arn:aws:states:us-east-1:123456789012:stateMachine:bf"
    done = run_cli(
        "launch", "--state-machine", arn, "--plan", "s3://b/p.json", "--api-config", str(api_config)
    )

    # THEN exit 2 naming the file's flag and the missing field
    assert done.returncode == 2
    assert "error: --api-config: api_config.raw_bucket: Field required" in done.stderr


# ------------------------------------------------------------------------------- run


def _event(url: str, dates: Sequence[str], **options: Any) -> dict[str, Any]:
    return {
        "api_config": {"endpoint": f"{url}/v1/data", "raw_bucket": RAW_BUCKET, "source_id": SOURCE},
        "batch": [{"date": d} for d in dates],
        "options": {"concurrency": 4, "max_attempts": 1, **options},
        "request_id": "local-run",
    }


def test_run_invokes_the_handler_on_an_event_file(
    api_server: StartServer,
    s3: MotoS3,
    run_many: Callable[..., Any],
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    # GIVEN an API with one failing date, moto S3, and event files
    dates = days(3)
    url = api_server(ScriptedAPI({dates[1]: Response(status=500)})).url
    env = {**cli_env, "AWS_ENDPOINT_URL_S3": s3.endpoint}
    good, partial, bad = (tmp_path / name for name in ("good.json", "partial.json", "bad.json"))
    good.write_text(json.dumps(_event(url, [dates[0]])))
    partial.write_text(json.dumps(_event(url, dates)))
    bad.write_text(json.dumps({"api_config": {"endpoint": f"{url}/v1/data"}, "batch": []}))

    # WHEN each is run locally
    ok, some, invalid = run_many(
        [["run", str(p), "--timeout", "30"] for p in (good, partial, bad)], env=env
    )

    # THEN exit 0 with the result JSON alone on stdout; 1 when an item failed; 2 for a bad event
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["status"] == "SUCCESS"
    assert s3.get_bytes(RAW_BUCKET, key_of("local-run", 0)) == default_body({"date": dates[0]})
    assert some.returncode == 1
    assert json.loads(some.stdout)["failures"][0]["index"] == 1
    assert invalid.returncode == 2
    assert "api_config.raw_bucket" in invalid.stderr and invalid.stdout == ""


# ------------------------------------------------------------------------------ demo


@pytest.fixture
def demo_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A bare environment, as on a fresh machine: no AWS or FANOUT settings at all."""
    keep = ("PATH", "LANG", "LC_ALL", "SYSTEMROOT", "TMPDIR")
    yield {name: os.environ[name] for name in keep if name in os.environ} | {"HOME": str(tmp_path)}


def test_demo_runs_offline_and_checks_its_outcome(
    run_cli: Callable[..., Any], demo_env: dict[str, str], tmp_path: Path
) -> None:
    # WHEN the demo runs with no configuration
    started = time.monotonic()
    done = run_cli("demo", env=demo_env, timeout=60)

    # THEN it exits 0 well within a minute, having shown the summary and a few keys
    assert done.returncode == 0, done.stdout + done.stderr
    assert time.monotonic() - started < 60
    assert "exactly the expected one" in done.stdout
    assert "s3://fanout-demo-raw/demo-weather/demo-20240101-20240330-1d-0.json" in done.stdout
    assert "demo backfill: 90/90 (100.0%), 1 failed" in done.stderr


def test_demo_into_a_folder_leaves_the_objects_to_look_at(
    run_cli: Callable[..., Any], demo_env: dict[str, str], tmp_path: Path
) -> None:
    # WHEN the demo writes into a local folder
    done = run_cli("demo", "--dest", str(tmp_path / "demo"), "--progress", "off", env=demo_env)

    # THEN 89 objects and the manifest are there, the 404 day missing
    assert done.returncode == 0, done.stdout + done.stderr
    folder = tmp_path / "demo" / "demo-weather"
    objects = sorted(p.name for p in folder.glob("*.json"))
    assert len(objects) == 89 and "demo-20240101-20240330-1d-44.json" not in objects
    assert (folder / "_manifests" / "demo-20240101-20240330-1d.json").exists()


def test_backfill_progress_shows_the_adaptive_limit_and_throttles(
    api_server: StartServer, run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    # GIVEN an API admitting 10 requests a second, 429 with Retry-After: 1 beyond
    api = RateLimitedAPI(10, delay_s=0.05)
    url = api_server(api).url
    dates = days(30)
    # WHEN 30 days are backfilled at concurrency 24 (14 of the first 24 refused: the
    # API is over its limit), output not a terminal
    done = run_cli(
        *backfill_args(url, tmp_path / "out", dates[0], dates[-1], "--concurrency", "24")
    )
    # THEN every day landed, and the last progress line shows the limit, how low the
    # 429s brought it and the pace they taught, and how many there were
    assert done.returncode == 0, done.stderr
    assert api.rejected > 0
    last = [line for line in done.stderr.splitlines() if line.startswith("backfill: 30/30")][-1]
    assert f", {api.rejected} throttled" in last, last
    assert re.search(r", limit \d+/24( at \d+/s)? \(lowest \d+, pace lowest \d+/s\)", last), last
    # AND the summary table has a throttled row saying how low the limit and pace went
    row = re.search(
        rf"throttled +{api.rejected} \(API limit down to \d+, paced down to ", done.stdout
    )
    assert row, done.stdout
