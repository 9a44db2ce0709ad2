"""The re-drive file: every item a run did not land, and what it takes to re-run them.

JSON Lines. The first line is the header, the context of the run::

    {"fanout_ingest_redrive": 1, "request_id": "...", "dest": "s3://bucket/prefix",
     "manifest_prefix": "prefix/", "api_config": {...}, "options": {...},
     "allow_private_networks": false}

and every further line is one item that failed or was not attempted::

    {"index": 7, "params": {"date": "2025-01-08"}, "status": "failed",
     "kind": "http_status", "http_status": 404, "error": "HTTP 404 after 1 attempt"}

It is built from the engine's ``on_item`` callback, not from ``result["failures"]``
(which is capped), and streamed to disk as items finish, so memory stays flat
however many fail. ``backfill --retry-from FILE`` runs exactly these items as an
``Items`` event with the same ``request_id``, so they land under the same keys.

The file holds ``api_config`` as given, ``--header`` values included, so it is
created with mode 0600; secrets belong in ``--secret-header`` references.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from ingest_core.cli.common import PACK_FLAGS, UsageError, option_flag, options_from_args
from ingest_core.redact import scrub_value
from ingest_core.results import ItemResult

# Options that decide what is stored or under which keys: a re-drive keeps the file's.
SHAPE_OPTIONS = frozenset({"pack", "compress"})
# Pagination fields that change how the run goes, not which requests are made.
RUN_PAGINATION_FIELDS = frozenset({"max_pages", "parallel"})
# api_config fields the request flags set, and their defaults when the file has none.
REQUEST_DEFAULTS: dict[str, Any] = {"method": "GET", "params_in": "query"}
KEEPS_KEYS = "re-driven items keep the keys and requests of the run that failed them"
REDRIVE_MARK = "fanout_ingest_redrive"
REDRIVE_VERSION = 1
RETRY_FLAG = "--retry-from"


@dataclass(frozen=True, slots=True)
class RedriveContext:
    """What a re-run needs besides the items."""

    request_id: str
    dest: str
    manifest_prefix: str
    api_config: dict[str, Any]
    options: dict[str, Any]
    allow_private_networks: bool = False  # --allow-private-networks, needed again to retry

    def header_line(self) -> bytes:
        """The first line of the file."""
        return orjson.dumps(scrub_value({REDRIVE_MARK: REDRIVE_VERSION, **asdict(self)})) + b"\n"

    @classmethod
    def from_header(cls, header: Any, path: Path) -> RedriveContext:
        """Parse the first line; raises ``UsageError`` on ``--retry-from``."""
        if not isinstance(header, dict) or header.get(REDRIVE_MARK) != REDRIVE_VERSION:
            raise UsageError((RETRY_FLAG, f"{path} is not a fanout-ingest re-drive file"))
        try:
            return cls(
                request_id=str(header["request_id"]),
                dest=str(header["dest"]),
                manifest_prefix=str(header.get("manifest_prefix", "")),
                api_config=dict(header["api_config"]),
                options=dict(header.get("options", {})),
                allow_private_networks=header.get("allow_private_networks") is True,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError((RETRY_FLAG, f"{path}: header lacks {exc}")) from None


def default_redrive_path(request_id: str) -> Path:
    """``./fanout-redrive-<request_id>.jsonl``."""
    return Path.cwd() / f"fanout-redrive-{request_id}.jsonl"


class RedriveWriter:
    """Streams every item that did not succeed into the re-drive file.

    The file is written under a hidden temporary name and renamed into place by
    ``finish``, so an interrupted write never leaves a half file under the name
    a user would retry from.
    """

    def __init__(self, path: Path, context: RedriveContext) -> None:
        """Open the temporary file now, so an unwritable place fails before any request.

        Raises:
            UsageError: on ``--redrive-file`` when the file cannot be created.
        """
        self.path = path
        self.context = context
        self.count = 0
        self.removed_stale = False
        self._temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self._file = _open_private(self._temp)
        self._file.write(context.header_line())

    def on_item(self, result: ItemResult) -> None:
        """The engine's ``on_item`` callback: keep the item unless it succeeded."""
        if result.succeeded:
            return
        line = {
            "index": result.index,
            "params": result.params,
            "status": result.status.value,
            "kind": result.kind.value if result.kind else None,
            "http_status": result.http_status,
            "error": result.error,
        }
        # The engine scrubbed the result already; the file is an edge of its own.
        self._file.write(orjson.dumps(scrub_value(line)) + b"\n")
        self.count += 1

    def finish(self) -> Path | None:
        """Put the file in place when some item did not succeed; return its path.

        With every item done, nothing is written, and an older re-drive file of
        the same request at ``path`` (say, the one just retried) is removed: the
        file always lists exactly what is still missing.
        """
        self._file.close()
        if self.count:
            os.replace(self._temp, self.path)
            return self.path
        self._temp.unlink(missing_ok=True)
        if _is_redrive_of(self.path, self.context.request_id):
            self.path.unlink()
            self.removed_stale = True
        return None

    def discard(self) -> None:
        """Drop the temporary file (the run never happened)."""
        self._file.close()
        self._temp.unlink(missing_ok=True)


def _open_private(path: Path) -> IO[bytes]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        reason = f"cannot write {path}: {exc.strerror or exc}"
        raise UsageError(("--redrive-file", reason)) from None
    return os.fdopen(fd, "wb")


def _is_redrive_of(path: Path, request_id: str) -> bool:
    with contextlib.suppress(OSError, orjson.JSONDecodeError), path.open("rb") as handle:
        header = orjson.loads(handle.readline())
        return (
            isinstance(header, dict)
            and header.get(REDRIVE_MARK) == REDRIVE_VERSION
            and (header.get("request_id") == request_id)
        )
    return False


def read_redrive(path: Path) -> tuple[RedriveContext, list[dict[str, Any]]]:
    """The context and the ``{"index", "params"}`` items of a re-drive file.

    Raises:
        UsageError: on ``--retry-from``, naming the file and what is wrong.
    """
    try:
        with path.open("rb") as handle:
            context = RedriveContext.from_header(_json_line(handle.readline(), path, 1), path)
            items = [_item(line, path, n) for n, line in enumerate(handle, start=2) if line.strip()]
    except OSError as exc:
        raise UsageError((RETRY_FLAG, f"cannot read {path}: {exc.strerror or exc}")) from None
    if not items:
        raise UsageError((RETRY_FLAG, f"{path} lists no items"))
    return context, items


def _json_line(line: bytes, path: Path, number: int) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        raise UsageError((RETRY_FLAG, f"{path} line {number} is not JSON")) from None


def _item(line: bytes, path: Path, number: int) -> dict[str, Any]:
    item = _json_line(line, path, number)
    if not isinstance(item, dict) or not isinstance(item.get("index"), int) or "params" not in item:
        raise UsageError((RETRY_FLAG, f"{path} line {number} is not an item"))
    return {"index": item["index"], "params": item["params"]}


# ----------------------------------------------------------- flags on a re-drive


def redrive_event(
    args: argparse.Namespace,
    context: RedriveContext,
    items: list[dict[str, Any]],
    event_flags: tuple[str, ...],
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The ``Items`` event of a re-drive, with every flag either applied or refused.

    The file carries the whole request shape (endpoint, params, headers, keys,
    method, pagination, packing). A flag that would change it is refused with the
    reason; a flag that only changes how the run goes (concurrency, timeouts,
    retries, a higher ``--max-pages``, ``--no-parallel-pages``) is applied.

    Returns:
        The event and, for the log, each applied flag with its value.

    Raises:
        UsageError: naming every refused flag and why.
    """
    problems = _event_flag_problems(args, event_flags)
    api_config, applied_api, api_problems = _request_shape(args, context.api_config)
    options, applied_options, option_problems = _run_options(args, context.options)
    problems += api_problems + option_problems
    if problems:
        raise UsageError(*problems)
    event = {
        "api_config": api_config,
        "options": options,
        "request_id": context.request_id,
        "Items": items,
    }
    return event, tuple(applied_api + applied_options)


def _given(value: Any) -> bool:
    return value is not None and value is not False  # store_true flags default to False


def _event_flag_problems(
    args: argparse.Namespace, event_flags: tuple[str, ...]
) -> list[tuple[str, str]]:
    reason = f"cannot be combined with {RETRY_FLAG}: the re-drive file carries it ({KEEPS_KEYS})"
    given = [name for name in event_flags if _given(getattr(args, name, None))]
    return [("--" + name.replace("_", "-"), reason) for name in given]


def _request_shape(
    args: argparse.Namespace, config: dict[str, Any]
) -> tuple[dict[str, Any], list[str], list[tuple[str, str]]]:
    from ingest_core.cli.request_flags import object_arg

    config = dict(config)
    problems: list[tuple[str, str]] = []
    given: dict[str, tuple[str, Any]] = {}
    if args.method is not None:
        given["method"] = ("--method", args.method)
    if args.params_in is not None:
        given["params_in"] = ("--params-in", args.params_in)
    if args.secret_param:
        given["secret_params"] = ("--secret-param", dict(args.secret_param))
    if args.auth is not None:
        given["auth"] = ("--auth", object_arg(args.auth, "--auth"))
    for name, (flag, value) in given.items():
        carried = config.get(name, REQUEST_DEFAULTS.get(name))
        if value != carried:
            problems.append((flag, _changes(f"api_config.{name}", carried)))
    pagination, applied, more = _pagination(args, config.get("pagination"))
    if pagination is not None:
        config["pagination"] = pagination
    return config, applied, problems + more


def _pagination(
    args: argparse.Namespace, carried: dict[str, Any] | None
) -> tuple[dict[str, Any] | None, list[str], list[tuple[str, str]]]:
    from ingest_core.cli.request_flags import object_arg, pagination_fields, pagination_flag
    from ingest_core.pagination import PaginationConfig

    given = object_arg(args.pagination, "--pagination") if args.pagination else {}
    flags = {name: "--pagination" for name in given}
    fields = pagination_fields(args)
    given.update(fields)
    flags.update({name: pagination_flag(name) for name in fields})
    if not given:
        return carried, [], []
    if carried is None:
        reason = (
            "the run that wrote the re-drive file was not paginated: paginating its items"
            f" would write other keys ({KEEPS_KEYS})"
        )
        return None, [], [(flag, reason) for flag in dict.fromkeys(flags.values())]
    merged, applied, problems = dict(carried), [], []
    for name, value in given.items():
        default = PaginationConfig.model_fields[name].default if name != "type" else None
        was = carried.get(name, default)
        if value == was:
            continue
        if name == "max_pages" and isinstance(value, int) and isinstance(was, int) and value < was:
            reason = (
                f"lower than the re-drive file's max_pages ({was}): a re-drive only raises"
                " the limit, so items stopped by it can be run to the end"
            )
            problems.append((flags[name], reason))
        elif name in RUN_PAGINATION_FIELDS:
            merged[name] = value
            applied.append(f"{flags[name]} {value}" if name == "max_pages" else flags[name])
        else:
            problems.append((flags[name], _changes(f"api_config.pagination.{name}", was)))
    return merged, applied, problems


def _run_options(
    args: argparse.Namespace, carried: dict[str, Any]
) -> tuple[dict[str, Any], list[str], list[tuple[str, str]]]:
    from ingest_core.cli.common import load_json_object

    from_file = load_json_object(args.options, "--options") if args.options else {}
    given = options_from_args(args, from_file)
    options, applied, problems = dict(carried), [], []
    for name, value in given.items():
        was = carried.get(name)
        if value == was:
            continue
        if name in SHAPE_OPTIONS:
            problems.extend(_shape_option_problems(name, value, was, from_file))
            continue
        options[name] = value
        applied.append(_option_text(name, value, from_file))
    return options, applied, problems


def _shape_option_problems(
    name: str, value: Any, was: Any, from_file: dict[str, Any]
) -> list[tuple[str, str]]:
    if name == "compress":
        flag = "--options (compress)" if "compress" in from_file else option_flag(name)
        return [(flag, _changes("options.compress", was or False))]
    carried = was if isinstance(was, dict) else {}
    changed = [field for field, v in value.items() if carried.get(field) != v]
    if "pack" in from_file:
        return [("--options (pack)", _changes("options.pack", was))]
    return [
        (PACK_FLAGS.get(field, "--pack"), _changes(f"options.pack.{field}", carried.get(field)))
        for field in changed
    ]


def _option_text(name: str, value: Any, from_file: dict[str, Any]) -> str:
    if name in from_file:
        return f"--options ({name}: {value!r})"
    flag = option_flag(name)
    return flag if isinstance(value, bool) else f"{flag} {value}"


def _changes(field: str, carried: Any) -> str:
    shown = "not set" if carried is None else orjson.dumps(carried).decode()
    return f"would change {field}, which the re-drive file carries ({shown}); {KEEPS_KEYS}"
