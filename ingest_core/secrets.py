"""``secret_headers``, ``secret_params`` and auth credentials: references, never secrets.

A reference is ``secretsmanager:NAME``, ``secretsmanager:NAME#json_key`` or
``ssm:/param/name``. Values are fetched with Powertools Parameters, which caches
them for ``SECRET_CACHE_S`` across warm invocations. No value is ever logged or
put in an exception message; messages name the header and the reference only.
Every resolved value is registered with ``ingest_core.redact``, which scrubs it
from any text the run produces (parser errors that quote a response, tracebacks).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import orjson

from ingest_core.errors import SecretResolutionError
from ingest_core.redact import register_secret

SECRET_CACHE_S = 300
# botocore logs whole request params and response bodies at DEBUG ("Response body:
# b'{... "SecretString": ...}'"), so a DEBUG root logger would print every secret
# fetched. Their records are dropped while this thread fetches a secret.
BOTOCORE_BODY_LOGGERS = ("botocore.parsers", "botocore.endpoint")
_fetching = threading.local()


class _DropWhileFetching(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_fetching, "active", False)


_DROP_WHILE_FETCHING = _DropWhileFetching()
for _name in BOTOCORE_BODY_LOGGERS:
    logging.getLogger(_name).addFilter(_DROP_WHILE_FETCHING)


@contextmanager
def _botocore_quiet() -> Iterator[None]:
    _fetching.active = True
    try:
        yield
    finally:
        _fetching.active = False


def resolve_secret_headers(secret_headers: Mapping[str, str]) -> dict[str, str]:
    """Resolve every reference to its value.

    Raises:
        SecretResolutionError: naming the header and reference, never a value.
    """
    return {
        name: resolve_secret(f"secret_headers.{name}", ref) for name, ref in secret_headers.items()
    }


def resolve_secret_params(secret_params: Mapping[str, str]) -> dict[str, str]:
    """Resolve ``secret_params`` (CONTRACT §12) like ``secret_headers``.

    Raises:
        SecretResolutionError: naming the parameter and reference, never a value.
    """
    return {
        name: resolve_secret(f"secret_params.{name}", ref) for name, ref in secret_params.items()
    }


def resolve_secret(label: str, ref: str) -> str:
    """Resolve one reference; ``label`` names where it came from in error messages.

    Raises:
        SecretResolutionError: naming ``label`` and the reference, never a value.
    """
    value = _fetch(label, ref)
    register_secret(value)  # scrubbed from every log, result and message from now on
    return value


def _fetch(label: str, ref: str) -> str:
    try:
        with _botocore_quiet():
            if ref.startswith("ssm:"):
                return _ssm(ref.removeprefix("ssm:"))
            name, _, json_key = ref.removeprefix("secretsmanager:").partition("#")
            return _secret(name, json_key or None)
    except SecretResolutionError as exc:
        raise SecretResolutionError(f"{label} ({ref}): {exc}") from None
    except Exception as exc:
        # The exception text of a provider may quote what it fetched: name the type only.
        raise SecretResolutionError(
            f"{label} ({ref}): could not be resolved ({type(exc).__name__})"
        ) from None


def _ssm(name: str) -> str:
    from aws_lambda_powertools.utilities import parameters

    value = parameters.get_parameter(name, decrypt=True, max_age=SECRET_CACHE_S)
    return _text(value)


def _secret(name: str, json_key: str | None) -> str:
    from aws_lambda_powertools.utilities import parameters

    value = _text(parameters.get_secret(name, max_age=SECRET_CACHE_S))
    if json_key is None:
        return value
    try:
        document: Any = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise SecretResolutionError("the secret is not a JSON object") from None
    if not isinstance(document, dict) or json_key not in document:
        raise SecretResolutionError(f"the secret has no key {json_key!r}")
    return _text(document[json_key])


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode()
    if not isinstance(value, str) or "\r" in value or "\n" in value:
        raise SecretResolutionError("the value is not a single-line string")
    return value
