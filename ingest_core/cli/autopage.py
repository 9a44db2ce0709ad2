"""``--paginate auto``: fetch page 0 of the first item, read it, choose the paginator.

The probe is one request shaped exactly like the run's (method, params or JSON
body, headers and secret headers, secret params, auth), under the same network
policy, retried like any attempt. ``hints.choose`` reads its Link header, body
fields and totals the way dlt's rest_api detector does; the choice (or the
reason there is none) is printed on stderr before the run starts, and two
readings that disagree stop the command with exit 2 rather than a guess. The
run then fetches the first item again, as page 0 of its chain: one extra request
buys a paginator chosen from evidence.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from ingest_core import loops
from ingest_core.cli.common import PROG, UsageError, usage_error_from
from ingest_core.errors import FetchError, InvalidEventError
from ingest_core.events import Job, parse_event
from ingest_core.hints import Ambiguous, Choice, choose
from ingest_core.netguard import NetPolicy
from ingest_core.pagination import PageView
from ingest_core.records import read_records

AUTO = "auto"
FLAG = "--paginate"
# parse_event must accept the probe's event whatever key template the run will use.
PROBE_KEY_TEMPLATE = "{source_id}/{params_hash}.json"
READ_CHUNK = 64 * 1024


def is_auto(event: dict[str, Any]) -> bool:
    """Whether the event asks for ``--paginate auto``."""
    pagination = event["api_config"].get("pagination")
    return isinstance(pagination, dict) and pagination.get("type") == AUTO


def resolve(
    args: argparse.Namespace,
    event: dict[str, Any],
    policy: NetPolicy,
    *,
    command: str,
    headers_for: Any,
) -> argparse.Namespace:
    """``args`` with ``--paginate auto`` replaced by the paginator page 0 shows.

    Args:
        args: the parsed flags (not changed; a copy is returned).
        event: the event the flags built, its pagination of type ``auto``.
        policy: the run's network policy.
        command: for the log line.
        headers_for: ``Job -> headers`` with secret headers resolved (or None).

    Raises:
        UsageError: on ``--paginate``: the probe failed, or the readings disagree.
    """
    given = {k: v for k, v in event["api_config"]["pagination"].items() if k != "type"}
    job = _probe_job(event, policy)
    page = loops.run(_probe(job, policy, headers_for(job)))
    try:
        choice = choose(page, given=given)
    except Ambiguous as exc:
        raise UsageError((FLAG, f"auto refuses to guess: {exc}")) from None
    print(_describe(choice, command), file=sys.stderr)
    return _with_choice(args, choice)


def _probe_job(event: dict[str, Any], policy: NetPolicy) -> Job:
    api_config = {**event["api_config"], "key_template": PROBE_KEY_TEMPLATE}
    api_config.pop("pagination")
    options = {k: v for k, v in event["options"].items() if k != "pack"}
    try:
        return parse_event({**event, "api_config": api_config, "options": options}, policy=policy)
    except InvalidEventError as exc:
        raise usage_error_from(exc) from None


async def _probe(job: Job, policy: NetPolicy, headers: dict[str, str] | None) -> PageView:
    from ingest_core.auth import make_auth
    from ingest_core.fetcher import RequestShape, make_http_session
    from ingest_core.redact import register_secret
    from ingest_core.secrets import resolve_secret, resolve_secret_params

    options = job.options
    secret_params = (
        await asyncio.to_thread(resolve_secret_params, job.api.secret_params)
        if job.api.secret_params
        else {}
    )
    for value in secret_params.values():  # a next link may echo them: scrubbed if printed
        register_secret(value)
    async with make_http_session(
        concurrency=1,
        policy=policy,
        connect_timeout_s=options.connect_timeout_s,
        read_timeout_s=options.read_timeout_s,
    ) as http:
        auth = make_auth(job.api.auth, http=http, policy=policy, resolve=resolve_secret)
        shape = RequestShape(
            endpoint=job.api.endpoint,
            headers=headers if headers is not None else job.api.headers,
            secret_header_names=frozenset(job.api.secret_headers)
            | (frozenset({"Authorization"}) if auth is not None else frozenset()),
            method=job.api.method,
            params_in=job.api.params_in,
            secret_params=secret_params,
            auth=auth,
        )
        first = next(job.items())
        return await _fetch_page0(http, shape.request(first.params), job, policy)


async def _fetch_page0(http: Any, request: Any, job: Job, policy: NetPolicy) -> PageView:
    from ingest_core.fetcher import open_response
    from ingest_core.retry import backoff_s

    attempts = job.options.max_attempts
    for attempt in range(1, attempts + 1):
        try:
            async with open_response(http, request, policy) as response:
                body = await _read_bounded(response, job.options.max_body_bytes)
                records, value = read_records(body, job.api.records_path)
                return PageView(0, response.url, response.headers, value, records)
        except FetchError as exc:
            if not exc.retryable or attempt == attempts:
                raise UsageError(
                    (FLAG, f"auto could not fetch page 0 of the first item to read it: {exc}")
                ) from None
            await asyncio.sleep(backoff_s(attempt))
    raise AssertionError("unreachable: the last attempt returns or raises")


async def _read_bounded(response: Any, limit: int) -> bytes:
    body = bytearray()
    async for chunk in response.content.iter_chunked(READ_CHUNK):
        body += chunk
        if len(body) > limit:
            raise UsageError((FLAG, f"auto: page 0 is larger than --max-body-bytes ({limit})"))
    return bytes(body)


def _describe(choice: Choice, command: str) -> str:
    if choice.pagination is None:
        return f"{PROG} {command}: --paginate auto: no pagination ({choice.reason})"
    fields = ", ".join(f"{k}={v!r}" for k, v in choice.pagination.items() if k != "type")
    text = f"{PROG} {command}: --paginate auto chose {choice.pagination['type']}"
    text += f" ({fields})" if fields else ""
    text += f" from {choice.reason}"
    if choice.assumed:
        text += f"; assumed {', '.join(choice.assumed)}"
    return text


def _with_choice(args: argparse.Namespace, choice: Choice) -> argparse.Namespace:
    import json

    from ingest_core.cli.request_flags import PAGINATION_FIELD_FLAGS

    chosen = argparse.Namespace(**vars(args))
    chosen.paginate = None
    chosen.no_parallel_pages = False
    for name in PAGINATION_FIELD_FLAGS:
        setattr(chosen, f"page_{name}", None)
    # The choice holds every field given beside auto: it is now the whole object.
    chosen.pagination = json.dumps(choice.pagination) if choice.pagination else None
    return chosen
