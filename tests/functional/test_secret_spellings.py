"""Other spellings of a secret reached the outputs (issue 20): one test per reported leak.

Each runs the real path (``fanout-ingest backfill`` in-process, secrets from moto's
Secrets Manager, a local destination) and looks for the secret in every spelling
(``tests/support/spellings.py``) in ``failures[].error``, the ``--json`` output,
the CLI summary, the manifest and the re-drive file. Each failed on main before
the fix (b82867e): the leaked form is named in its docstring.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingest_core import parse_event, run_job
from ingest_core.cli import main
from ingest_core.netguard import NetPolicy
from ingest_core.results import ItemResult
from ingest_core.settings import Settings
from ingest_core.writers import LocalDirWriter
from tests.functional import test_secrets as secrets_suite
from tests.functional.test_secrets import Vault
from tests.support.hostile_api import (
    SECRET_PARAM,
    ConnectTimeoutPort,
    HostileAPI,
    closed_port,
    day,
)
from tests.support.reliability import event_for
from tests.support.spellings import leaks

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.usefixtures("allow_private", "fresh_secrets"),
]

vault = secrets_suite.vault
KEY_NAME = "prod/api-key"
CONNECT_TIMEOUT_S = "0.3"
MESSAGE_CUT = 500  # where main cut error texts, before scrubbing them


@pytest.fixture
def blackhole() -> Iterator[ConnectTimeoutPort]:
    with ConnectTimeoutPort() as port:
        yield port


def backfill(
    endpoint: str, tmp_path: Path, days: int, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[str, dict[str, Path]]:
    """Run ``backfill`` into ``tmp_path/dest``; its stdout+stderr and the files it left."""
    dest = tmp_path / "dest"
    argv = [
        "backfill",
        *("--endpoint", endpoint, "--source-id", "src", "--dest", str(dest)),
        *("--start", day(0), "--end", day(days - 1), "--progress", "off"),
        *("--max-attempts", "1", "--connect-timeout", CONNECT_TIMEOUT_S),
        *("--redrive-file", str(tmp_path / "redrive.jsonl"), "--allow-private-networks"),
        *extra,
    ]
    capsys.readouterr()
    assert main(argv) == 1
    out, err = capsys.readouterr()
    files = {"redrive": tmp_path / "redrive.jsonl"}
    files |= {f"manifest {p.name}": p for p in dest.rglob("_manifests/*")}
    assert len(files) == 2, files
    return out + err, files


def outputs(text: str, files: dict[str, Path]) -> dict[str, str]:
    return {"stdout/stderr": text} | {name: path.read_text() for name, path in files.items()}


def assert_no_leak(secrets: list[str], texts: dict[str, str]) -> None:
    found = [(where, form) for where, text in texts.items() for form in leaks(secrets, text)]
    assert not found, f"secret spellings found: {found[:5]}"


def test_a_yarl_encoded_key_in_a_connect_timeout_reaches_no_output(
    vault: Vault, blackhole: ConnectTimeoutPort, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Main: ``k9/aB%2BZx%3D%3D`` in failures[].error, the manifest and the re-drive file."""
    # GIVEN a secret param whose base64 value yarl percent-encodes, and an endpoint
    # whose connections time out (aiohttp's message quotes the whole request URL)
    key = "k9/aB+Zx=="
    vault.put_secret(KEY_NAME, key)
    secret = ("--secret-param", f"{SECRET_PARAM}=secretsmanager:{KEY_NAME}")
    # WHEN backfill runs, once with --json and once with the summary
    for extra in (("--json",), ()):
        text, files = backfill(f"{blackhole.url}/v1/data", tmp_path, 2, capsys, *secret, *extra)
        # THEN each item failed as a timeout, and the key is in no output in any spelling
        assert text.count("timeout") >= 2, text
        assert_no_leak([key], outputs(text, files))


def test_a_secret_straddling_the_message_cut_reaches_no_output(
    vault: Vault, blackhole: ConnectTimeoutPort, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Main: the first 36 of 40 characters, cut at 500 before scrubbing, in the manifest."""
    # GIVEN a 40-character key that ends 4 characters past main's 500-character cut
    key = f"sk-live-{uuid.uuid4().hex}"
    vault.put_secret(KEY_NAME, key)
    prefix = f"ConnectionTimeoutError: Connection timeout to host {blackhole.url}/v1/data?date="
    prefix += f"{day(0)}&pad=&{SECRET_PARAM}="
    pad = "p" * (MESSAGE_CUT - (len(key) - 4) - len(prefix))
    # WHEN backfill runs against an endpoint whose connections time out
    text, files = backfill(
        f"{blackhole.url}/v1/data",
        tmp_path,
        1,
        capsys,
        *("--json", "--query", f"pad={pad}"),
        *("--secret-param", f"{SECRET_PARAM}=secretsmanager:{KEY_NAME}"),
    )
    # THEN neither the key nor its first 36 characters are anywhere
    assert_no_leak([key, key[:36]], outputs(text, files))


@pytest.mark.parametrize("output", ["--json", "summary"])
def test_a_case_folded_token_without_its_scheme_in_a_host_reaches_no_output(
    vault: Vault,
    api_server: Any,
    blackhole: ConnectTimeoutPort,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    output: str,
) -> None:
    """Main: the token, lower-cased and without ``Bearer``, named as a refused host."""
    # GIVEN a mixed-case token, and an API that writes it (without "Bearer ") into the
    # host of a redirect Location and of a next link, which yarl lower-cases
    token = f"Bearer Sk-LIVE-{uuid.uuid4().hex.upper()}aBc"
    vault.client("secretsmanager").update_secret(SecretId="prod/api-token", SecretString=token)
    monkeypatch.setenv("FANOUT_ALLOWED_HOSTS", "127.0.0.1")
    answers = ["redirect-host", "next-link-host", "ok"]
    api = api_server(HostileAPI(answers, blackhole=blackhole.url, refused=""))
    # WHEN backfill runs with link_header pagination
    text, files = backfill(
        f"{api.url}/v1/data",
        tmp_path,
        len(answers),
        capsys,
        *("--secret-header", "Authorization=secretsmanager:prod/api-token"),
        *("--pagination", '{"type": "link_header"}'),
        *((output,) if output == "--json" else ()),
    )
    # THEN both items failed as blocked, and the token is in no output in any spelling
    assert text.count("blocked") >= 2, text
    assert_no_leak([token], outputs(text, files))


async def test_per_item_callbacks_get_the_scrubbed_error(
    api_server: Any, blackhole: ConnectTimeoutPort, tmp_path: Path
) -> None:
    """Main: the tally scrubbed its copy; ``on_item`` (the CLI, the re-drive file) got raw text."""
    # GIVEN a lower-case token, and an API that writes it into a redirect's host, which
    # the allow-list refuses (main's message named the host)
    token = f"Bearer sk-live-{uuid.uuid4().hex}"
    api = api_server(HostileAPI(["redirect-host"], blackhole=blackhole.url, refused=""))
    event = event_for(
        f"{api.url}/v1/data", batch=[{"date": day(0)}], options={"max_attempts": 1}, request_id="cb"
    )
    policy = NetPolicy(allow_private_networks=True, allowed_hosts=("127.0.0.1",))
    seen: list[ItemResult] = []
    # WHEN the engine runs with a per-item callback
    outcome = await run_job(
        parse_event(event, policy=policy),
        writer=LocalDirWriter(tmp_path),
        settings=Settings(policy=policy),
        headers={"Authorization": token},
        on_item=seen.append,
    )
    # THEN the callback got the failed item, and neither its error nor the result
    # holds any spelling of the token
    [result] = seen
    assert result.kind is not None and result.kind.value == "blocked", result
    assert_no_leak([token], {"on_item error": result.error or "", "result": _dump(outcome.result)})


def test_a_refused_connection_names_the_endpoint_and_the_os_error(
    vault: Vault, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a closed port WHEN backfill runs against it with a secret param
    key = f"sk-live-{uuid.uuid4().hex}"
    vault.put_secret(KEY_NAME, key)
    endpoint = f"http://127.0.0.1:{closed_port()}/v1/data"
    text, files = backfill(
        endpoint,
        tmp_path,
        1,
        capsys,
        *("--json", "--secret-param", f"{SECRET_PARAM}=secretsmanager:{KEY_NAME}"),
    )
    # THEN the error says what happened and where, built from what we know, and no more
    [failure] = orjson.loads(text[: text.rindex("}") + 1])["failures"]
    assert failure["error"] == (
        f"ClientConnectorError: cannot connect: Connection refused ({endpoint})"
    )
    assert_no_leak([key], outputs(text, files))


def _dump(value: Any) -> str:
    return orjson.dumps(value).decode()
