"""No secret in any output, in any spelling (issue 20), checked generatively.

Hypothesis draws the secrets (a header token with or without ``Bearer``, basic
auth's user and password, or OAuth2's client id, client secret and the token its
endpoint hands out; and a secret query param) from an alphabet with
``+ / = % @ : space``, mixed case and non-ASCII; which answers a hostile local API
gives (``tests/support/hostile_api.py``: echoes into bodies, error bodies, headers,
``Location`` host/path/query, next links, totals, malformed answers, redirects to
a refused port and to one that times out); the pagination; and which way the run
goes out:

- ``fanout-ingest backfill --incremental`` (in-process), its summary or ``--json``:
  stdout, stderr, every log record, the manifest, the re-drive file and the state
  object are searched;
- the Lambda handler with ``fail_on_error``, against the hostile API, a refused
  port or one that times out: the result or ``PartialFailureError`` (text, chain,
  result), stdout (EMF metrics), every log record, every manifest and every
  object's metadata in S3 are searched.

Each is searched for every spelling of every secret (``tests/support/spellings.py``,
written independently of the scrubber). Zero found. Stored bodies are not searched:
a value the API chooses to write into the data it returns is data.

CI runs ``profiles.CI`` with ``CI_EXAMPLES`` (each is a whole run); ``make soak``
runs ``profiles.SOAK`` with a quarter of ``FANOUT_PROPERTY_EXAMPLES`` (100 by default).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handler.app import lambda_handler
from ingest_core import PartialFailureError
from ingest_core.cli import main
from tests.conftest import RAW_BUCKET
from tests.functional import test_secrets as secrets_suite
from tests.functional.conftest import fresh_secrets
from tests.functional.test_secrets import Capture, Vault, exception_texts
from tests.property import profiles
from tests.support.hostile_api import (
    ANSWER_NAMES,
    SECRET_PARAM,
    ConnectTimeoutPort,
    HostileAPI,
    closed_port,
    day,
)
from tests.support.lambda_context import LocalContext
from tests.support.reliability import event_for
from tests.support.servers import MotoS3
from tests.support.spellings import leaks

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.usefixtures("allow_private", "fresh_secrets"),
]

vault = secrets_suite.vault
capture = secrets_suite.capture
__all__ = ["fresh_secrets"]  # a fixture of tests/functional, used here

CI_EXAMPLES = 20  # each example is a whole run (2-5 s here): the module stays under 2 minutes
# A quarter of the pipeline test's soak count: each example here is one or two whole runs.
SOAK_EXAMPLES = max(1, profiles.soak_examples() // 4)
CONNECT_TIMEOUT_S = 0.3
SOURCE = "leaks"
PAGINATIONS: dict[str, dict[str, Any] | None] = {
    "none": None,
    "link_header": {"type": "link_header", "max_pages": 3},
    "json_link": {"type": "json_link", "next_path": "next", "max_pages": 3},
    "cursor": {"type": "cursor", "cursor_path": "next", "max_pages": 3},
    "page_number": {"type": "page_number", "total_path": "total", "max_pages": 3},
}
# What a secret is made of: URL-special characters, mixed case, non-ASCII letters and symbols.
SPECIAL = "+/=%@: -_.~"
CHARS = st.one_of(
    st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789" + SPECIAL),
    st.characters(min_codepoint=0xA0, max_codepoint=0x1F64F, categories=("Lu", "Ll", "Lo", "So")),
)


def _usable(secret: str) -> bool:
    """A credential-like value: no outer spaces (servers strip them), some letters.

    Letters and variety keep a drawn value from spelling text every run prints
    anyway (a port, a date, "00000000"), which would be no leak.
    """
    letters = sum(c.isalpha() for c in secret)
    return secret == secret.strip() and letters >= 3 and len(set(secret.casefold())) >= 5


SECRETS = st.text(CHARS, min_size=8, max_size=40).filter(_usable)


@dataclass(frozen=True)
class Case:
    """One drawn example."""

    auth: str  # "bearer", "raw" (a header value without a scheme), "basic" or "oauth2"
    token: str  # the header's token, or OAuth2's access token
    user: str  # basic auth's user, or OAuth2's client id
    password: str  # basic auth's password, or OAuth2's client secret
    key: str  # the secret query param
    answers: tuple[str, ...]
    pagination: str
    via: str  # "cli-json", "cli-summary" or "handler"
    target: str  # the handler's endpoint: "hostile", "blackhole" or "refused"

    def secrets(self) -> list[str]:
        if self.auth == "basic":
            basic = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            return [self.user, self.password, basic, self.key]
        if self.auth == "oauth2":
            return [self.token, self.user, self.password, self.key]
        return [self.header_value(), self.key]

    def header_value(self) -> str:
        return f"Bearer {self.token}" if self.auth == "bearer" else self.token


@st.composite
def cases(draw: st.DrawFn) -> Case:
    answers = draw(st.lists(st.sampled_from(ANSWER_NAMES), min_size=3, max_size=8, unique=True))
    return Case(
        auth=draw(st.sampled_from(["bearer", "raw", "basic", "oauth2"])),
        token=draw(SECRETS),
        user=draw(SECRETS),
        password=draw(SECRETS),
        key=draw(SECRETS),
        answers=("ok", *answers),  # a first day that lands: the state object is written
        pagination=draw(st.sampled_from(sorted(PAGINATIONS))),
        via=draw(st.sampled_from(["cli-json", "cli-summary", "handler"])),
        target=draw(st.sampled_from(["hostile", "hostile", "blackhole", "refused"])),
    )


@dataclass
class Servers:
    api: HostileAPI
    url: str
    blackhole: ConnectTimeoutPort
    refused: str


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    from tests.support.servers import ThreadedApp

    with ConnectTimeoutPort() as blackhole:
        refused = f"http://127.0.0.1:{closed_port()}"
        api = HostileAPI(["ok"], blackhole=blackhole.url, refused=refused)
        server = ThreadedApp(api.app).start()
        try:
            yield Servers(api, server.url, blackhole, refused)
        finally:
            server.stop()


# --------------------------------------------------------------------------- the runs


def _references(vault: Vault, case: Case) -> dict[str, str]:
    """Each secret stored in moto's Secrets Manager under a fresh name; name -> reference."""
    refs = {}
    values = {
        "token": case.header_value(),
        "user": case.user,
        "password": case.password,
        "key": case.key,
    }
    for name, value in values.items():
        secret_name = f"leaks/{name}-{uuid.uuid4().hex}"
        vault.put_secret(secret_name, value)
        refs[name] = f"secretsmanager:{secret_name}"
    return refs


def _api_config(case: Case, refs: dict[str, str], token_url: str) -> dict[str, Any]:
    config: dict[str, Any] = {"secret_params": {SECRET_PARAM: refs["key"]}}
    if case.auth == "basic":
        config["auth"] = {"type": "basic", "username": refs["user"], "password": refs["password"]}
    elif case.auth == "oauth2":
        config["auth"] = {
            "type": "oauth2_client_credentials",
            "token_url": token_url,
            "client_id": refs["user"],
            "client_secret": refs["password"],
        }
    else:
        config["secret_headers"] = {"Authorization": refs["token"]}
    if PAGINATIONS[case.pagination] is not None:
        config["pagination"] = PAGINATIONS[case.pagination]
    return config


def run_cli(case: Case, servers: Servers, refs: dict[str, str], folder: Path) -> dict[str, str]:
    """``backfill --incremental`` into ``folder``; the files it left that are not data."""
    config = _api_config(case, refs, f"{servers.url}/token")
    argv = [
        "backfill",
        *("--endpoint", f"{servers.url}/v1/data", "--source-id", SOURCE),
        *("--dest", str(folder / "dest"), "--redrive-file", str(folder / "redrive.jsonl")),
        *("--start", day(0), "--end", day(len(case.answers) - 1), "--incremental"),
        *("--progress", "off", "--max-attempts", "1", "--allow-private-networks"),
        *("--connect-timeout", str(CONNECT_TIMEOUT_S), "--read-timeout", "5"),
        *("--secret-param", f"{SECRET_PARAM}={refs['key']}"),
        *(["--json"] if case.via == "cli-json" else []),
    ]
    if "auth" in config:
        argv += ["--auth", orjson.dumps(config["auth"]).decode()]
    else:
        argv += ["--secret-header", f"Authorization={refs['token']}"]
    if "pagination" in config:
        argv += ["--pagination", orjson.dumps(config["pagination"]).decode()]
    code = main(argv)
    assert code in (0, 1), f"backfill exited {code}"
    outputs = {}
    for path in folder.rglob("*"):
        is_metadata = "_manifests" in path.parts or "_state" in path.parts
        if path.is_file() and (is_metadata or path.name == "redrive.jsonl"):
            outputs[str(path.relative_to(folder))] = path.read_text(errors="replace")
    assert any("_manifests" in name for name in outputs), outputs.keys()
    return outputs


def run_handler(case: Case, servers: Servers, refs: dict[str, str], s3: MotoS3) -> dict[str, str]:
    """The Lambda handler with fail_on_error; its result or exception, and what S3 holds."""
    base = {"hostile": servers.url, "blackhole": servers.blackhole.url}
    endpoint = base.get(case.target, servers.refused) + "/v1/data"
    request_id = f"leaks-{uuid.uuid4().hex[:8]}"
    event = event_for(
        endpoint,
        batch=[{"date": day(i)} for i in range(len(case.answers))],
        options={
            "fail_on_error": True,
            "max_attempts": 1,
            "connect_timeout_s": CONNECT_TIMEOUT_S,
            "read_timeout_s": 5,
        },
        request_id=request_id,
        **_api_config(case, refs, f"{servers.url}/token"),
    )
    outputs = {}
    try:
        result = lambda_handler(event, LocalContext(timeout_s=30))
    except PartialFailureError as exc:
        result = exc.result
        outputs["exception"] = exception_texts(exc)
    outputs["result"] = orjson.dumps(result).decode()
    for key in s3.list_keys(RAW_BUCKET):
        if request_id in key or "_manifests" in key:
            outputs[f"s3 head {key}"] = orjson.dumps(s3.head(RAW_BUCKET, key), default=str).decode()
        if "_manifests" in key and request_id in key:
            outputs[f"s3 {key}"] = s3.get_bytes(RAW_BUCKET, key).decode(errors="replace")
    return outputs


def check(
    case: Case, servers: Servers, vault: Vault, capture: Capture, s3: MotoS3, tmp: Path
) -> None:
    servers.api.answers = list(case.answers)
    servers.api.access_token = case.token
    refs = _references(vault, case)
    capture.reset()  # the test's own calls that planted the secrets
    if case.via == "handler":
        outputs = run_handler(case, servers, refs, s3)
    else:
        outputs = run_cli(case, servers, refs, tmp / uuid.uuid4().hex)
    texts = capture.texts()
    outputs |= {f"stdio/log {i}": text for i, text in enumerate(texts)}
    found = [
        (where, form) for where, text in outputs.items() for form in leaks(case.secrets(), text)
    ]
    assert not found, f"secret spellings found: {found[:5]}"


# --------------------------------------------------------------------------- the tests


@settings(profiles.CI, max_examples=CI_EXAMPLES)
@given(case=cases())
def test_no_spelling_of_any_secret_reaches_any_output(
    servers: Servers,
    vault: Vault,
    capture: Capture,
    s3: MotoS3,
    tmp_path: Path,
    case: Case,
) -> None:
    check(case, servers, vault, capture, s3, tmp_path)


@pytest.mark.soak
@settings(profiles.SOAK, max_examples=SOAK_EXAMPLES)
@given(case=cases())
def test_soak_no_spelling_of_any_secret_reaches_any_output(
    servers: Servers,
    vault: Vault,
    capture: Capture,
    s3: MotoS3,
    tmp_path: Path,
    case: Case,
) -> None:
    check(case, servers, vault, capture, s3, tmp_path)
