"""Flags for the request shape (CONTRACT §11, §12), shared by ``backfill`` and ``bench``.

``--pagination FILE|JSON`` gives the whole ``api_config.pagination`` object;
``--paginate TYPE`` with one flag per field builds it from flags (the two mix:
flags override the object's fields). ``--method``, ``--params-in``,
``--secret-param K=REF`` and ``--auth FILE|JSON`` fill the rest of §12. Values
are only gathered here; ``parse_event`` validates them and names the field,
which ``common.flag_for_field`` turns back into the flag.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, get_args

from ingest_core.cli.common import UsageError, key_value, load_json_object
from ingest_core.pagination import PaginationType

PAGINATION_TYPES: tuple[str, ...] = get_args(PaginationType)
# Pagination field -> (flag, type, help); every field of CONTRACT §11's table but type.
PAGINATION_FIELD_FLAGS: dict[str, tuple[str, type, str]] = {
    "next_path": ("--next-path", str, "json_link: dotted path of the next URL in the body"),
    "cursor_path": ("--cursor-path", str, "cursor: dotted path of the next cursor in the body"),
    "cursor_param": ("--cursor-param", str, "cursor, header_cursor: its query param (cursor)"),
    "cursor_header": ("--cursor-header", str, "header_cursor: the header with the next cursor"),
    "offset_param": ("--offset-param", str, "offset: name of the offset param (offset)"),
    "limit_param": ("--limit-param", str, "offset: name of the limit param (limit)"),
    "limit": ("--limit", int, "offset: records per page (100)"),
    "page_param": ("--page-param", str, "page_number: name of the page param (page)"),
    "start_page": ("--start-page", int, "page_number: the first page's number (1)"),
    "total_path": ("--total-path", str, "offset, page_number: dotted path of the total records"),
    "total_pages_path": ("--total-pages-path", str, "page_number: dotted path of total pages"),
    "total_header": ("--total-header", str, "offset, page_number: header with the total records"),
    "max_pages": ("--max-pages", int, "pages per item before it fails, kind pagination (1000)"),
}
# How InvalidEventError names these fields -> the flag (see common.EVENT_FIELD_FLAGS).
REQUEST_FIELD_FLAGS: tuple[tuple[str, str], ...] = (
    *((f"api_config.pagination.{f}", flag) for f, (flag, _, _) in PAGINATION_FIELD_FLAGS.items()),
    ("api_config.pagination.type", "--paginate"),
    ("api_config.pagination.parallel", "--no-parallel-pages"),
    ("api_config.pagination", "--pagination"),
    ("api_config.secret_params", "--secret-param"),
    ("api_config.method", "--method"),
    ("api_config.params_in", "--params-in"),
    ("api_config.auth", "--auth"),
)


# Flags whose value is a whole object: errors name the part of it at fault.
OBJECT_FLAGS = frozenset({"--pagination", "--auth"})


def add_request_flags(parser: argparse.ArgumentParser) -> None:
    """Pagination, method, params_in, secret params and auth flags."""
    shape = parser.add_argument_group("request shape (docs/CONTRACT.md §12)")
    shape.add_argument("--method", choices=("GET", "POST"), help="HTTP method (default GET)")
    shape.add_argument(
        "--params-in",
        choices=("query", "json"),
        help="where each item's params go: the query string (default) or a JSON body (POST)",
    )
    shape.add_argument(
        "--secret-param",
        metavar="K=REF",
        type=key_value,
        action="append",
        help="a query (or body) parameter read at run time from secretsmanager:NAME[#key]"
        " or ssm:/name; never logged or stored (repeatable)",
    )
    shape.add_argument(
        "--auth",
        metavar="FILE|JSON",
        help='{"type": "oauth2_client_credentials", "token_url", "client_id": REF,'
        ' "client_secret": REF, "scope"} or {"type": "basic", "username": REF, "password": REF}',
    )
    pages = parser.add_argument_group("pagination (docs/CONTRACT.md §11)")
    pages.add_argument("--pagination", metavar="FILE|JSON", help="the api_config.pagination object")
    pages.add_argument(
        "--paginate",
        metavar="TYPE",
        choices=(*PAGINATION_TYPES, "auto"),
        help=" | ".join(PAGINATION_TYPES) + " | auto (read page 0 of the first item and choose;"
        " refuses when its next link, cursor and totals disagree)",
    )
    for field, (flag, kind, text) in PAGINATION_FIELD_FLAGS.items():
        pages.add_argument(flag, dest=f"page_{field}", type=kind, metavar="X", help=text)
    pages.add_argument(
        "--no-parallel-pages",
        action="store_true",
        help="offset, page_number: fetch pages one after another even when the total is known",
    )


def request_config(args: argparse.Namespace) -> dict[str, Any]:
    """The ``api_config`` fields the request flags set (only those given)."""
    config: dict[str, Any] = {}
    if args.method is not None:
        config["method"] = args.method
    if args.params_in is not None:
        config["params_in"] = args.params_in
    if args.secret_param:
        config["secret_params"] = dict(args.secret_param)
    if args.auth is not None:
        config["auth"] = object_arg(args.auth, "--auth")
    pagination = _pagination(args)
    if pagination is not None:
        config["pagination"] = pagination
    return config


def pagination_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The pagination fields the field flags and ``--paginate`` give (type not required)."""
    fields = {
        field: getattr(args, f"page_{field}")
        for field in PAGINATION_FIELD_FLAGS
        if getattr(args, f"page_{field}") is not None
    }
    if args.no_parallel_pages:
        fields["parallel"] = False
    if args.paginate is not None:
        fields["type"] = args.paginate
    return fields


def pagination_flag(field: str) -> str:
    """The flag that sets pagination field ``field``."""
    if field == "type":
        return "--paginate"
    if field == "parallel":
        return "--no-parallel-pages"
    return PAGINATION_FIELD_FLAGS[field][0] if field in PAGINATION_FIELD_FLAGS else "--pagination"


def _pagination(args: argparse.Namespace) -> dict[str, Any] | None:
    base = object_arg(args.pagination, "--pagination") if args.pagination else None
    fields = pagination_fields(args)
    if base is None and not fields:
        return None
    merged = {**(base or {}), **fields}
    if "type" not in merged:
        flags = [PAGINATION_FIELD_FLAGS[f][0] for f in fields if f in PAGINATION_FIELD_FLAGS]
        raise UsageError(
            ("--paginate", f"required with {', '.join(flags) or '--no-parallel-pages'}")
        )
    return merged


def object_arg(text: str, flag: str) -> dict[str, Any]:
    """A JSON object given inline (``{...}``) or as a file path (``-`` = stdin)."""
    if text.lstrip().startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError((flag, f"not valid JSON: {exc}")) from None
        if not isinstance(value, dict):
            raise UsageError((flag, "must be a JSON object"))
        return value
    if text != "-" and not Path(text).exists():
        raise UsageError((flag, f"{text} is neither a JSON object nor a file"))
    return load_json_object(text, flag)
