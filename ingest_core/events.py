"""Events (CONTRACT §3) -> one validated ``Job``.

Four shapes say what to fetch: ``query_params`` (the original single request),
``batch``, ``date_range`` and the Distributed Map ``{"BatchInput", "Items"}``.
``parse_event`` checks everything before any request is made and raises one
``InvalidEventError`` that names every offending field and why.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from itertools import count
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ingest_core.auth import AuthConfig
from ingest_core.config import Options
from ingest_core.errors import BlockedError, InvalidEventError
from ingest_core.keys import (
    DEFAULT_KEY_TEMPLATE,
    PAGINATED_KEY_TEMPLATE,
    KeyTemplate,
    PackKeys,
    manifest_key,
    validate_key,
)
from ingest_core.netguard import NetPolicy, check_bucket, check_url
from ingest_core.pagination import PaginationConfig
from ingest_core.ranges import (
    DateRange,
    ParamsModel,
    format_problems,
    pack_problems,
    run_dependent_problems,
    with_incremental_defaults,
)

MAX_DATE_RANGE_ITEMS = 1_000_000
SOURCE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=/-]{0,254}$")
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:=+@-]{0,127}$")
HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
SECRET_REF_RE = re.compile(r"^(secretsmanager:[^#\s]+(#[^#\s]+)?|ssm:/[^\s]+)$")
PARAM_NAME_RE = re.compile(r"^[^\s\x00-\x1f\x7f]{1,256}$")
SOURCES = ("query_params", "batch", "date_range", "Items")
# Headers that steer where a request is routed or how its message is framed: set
# by hand they reach virtual hosts the allow-list never approved (Host, and the
# X-Forwarded-Host family that proxies honour), smuggle requests (Content-Length,
# Transfer-Encoding, TE, Trailer, Expect), or change the connection (Connection,
# Keep-Alive, Upgrade, Proxy-*). aiohttp sets the ones a GET needs.
REFUSED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "expect",
        "forwarded",
        "x-forwarded-host",
        "x-forwarded-server",
        "x-host",
        "x-original-host",
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    }
)
REFUSED_HEADER_PREFIXES = ("proxy-",)


class ApiConfig(BaseModel):
    """Where to fetch from and where to write to."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoint: str
    headers: dict[str, str] = Field(default_factory=dict)
    secret_headers: dict[str, str] = Field(default_factory=dict)
    raw_bucket: str
    source_id: str
    key_template: str = DEFAULT_KEY_TEMPLATE
    records_path: str | None = None
    method: Literal["GET", "POST"] = "GET"
    params_in: Literal["query", "json"] = "query"
    secret_params: dict[str, str] = Field(default_factory=dict)
    auth: AuthConfig | None = Field(None, discriminator="type")
    pagination: PaginationConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _paginated_default_key(cls, data: Any) -> Any:
        # With pagination on, the default key names the page (CONTRACT §11).
        if isinstance(data, dict) and data.get("pagination") and "key_template" not in data:
            return {**data, "key_template": PAGINATED_KEY_TEMPLATE}
        return data

    @field_validator("endpoint")
    @classmethod
    def _endpoint_allowed(cls, value: str, info: ValidationInfo) -> str:
        try:
            check_url(value, _policy(info))
        except BlockedError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("raw_bucket")
    @classmethod
    def _bucket_allowed(cls, value: str, info: ValidationInfo) -> str:
        try:
            check_bucket(value, _policy(info))
        except InvalidEventError as exc:
            raise ValueError("; ".join(reason for _, reason in exc.problems)) from None
        return value

    @field_validator("source_id")
    @classmethod
    def _source_id_safe(cls, value: str) -> str:
        if not SOURCE_ID_RE.match(value) or ".." in value.split("/"):
            raise ValueError(
                "must be 1-255 characters of letters, digits and ._=/- starting with a"
                " letter or digit, with no '..' segment"
            )
        return value

    @field_validator("key_template")
    @classmethod
    def _template_parses(cls, value: str) -> str:
        KeyTemplate.parse(value)
        return value

    @field_validator("headers", "secret_headers")
    @classmethod
    def _header_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name, header_value in value.items():
            if not HEADER_NAME_RE.match(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if _steers_routing(name):
                raise ValueError(
                    f"{name!r} may not be set: it steers where the request goes or how it"
                    " is framed (see docs/RELIABILITY.md, refused headers)"
                )
            if "\r" in header_value or "\n" in header_value:
                # The value itself is never echoed: it may be a credential.
                raise ValueError(f"value of {name!r} contains a line break")
        return value

    @field_validator("secret_headers", "secret_params")
    @classmethod
    def _secret_refs(cls, value: dict[str, str]) -> dict[str, str]:
        for name, ref in value.items():
            if not SECRET_REF_RE.match(ref):
                raise ValueError(
                    f"{name!r} must be a reference (secretsmanager:NAME,"
                    " secretsmanager:NAME#json_key or ssm:/param/name), never a secret"
                )
        return value

    @field_validator("secret_params")
    @classmethod
    def _secret_param_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not PARAM_NAME_RE.match(name):
                raise ValueError(f"{name!r} is not a usable parameter name")
        return value

    def shape_problems(self, *, packed: bool = False) -> list[tuple[str, str]]:
        """Checks across fields (method, params_in, pagination, key template).

        ``packed``: ``options.pack`` is on, so pages would share objects, not keys.
        """
        problems: list[tuple[str, str]] = []
        if self.params_in == "json" and self.method == "GET":
            problems.append(
                ("api_config.params_in", "'json' needs method POST (a GET has no body)")
            )
        if self.pagination is None:
            if self.template.uses_page:
                problems.append(("api_config.key_template", "{page} needs pagination"))
            return problems
        problems.extend(self.pagination.problems())
        if not packed and not self.template.uses_page:
            problems.append(
                (
                    "api_config.key_template",
                    "must use {page} when pagination is on, or the pages of an item"
                    " would overwrite each other",
                )
            )
        return problems

    @field_validator("records_path")
    @classmethod
    def _records_path_shape(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(not part for part in value.split("."))):
            raise ValueError("must be dot-separated names, e.g. 'data.items'")
        return value

    @property
    def template(self) -> KeyTemplate:
        """The parsed key template."""
        return KeyTemplate.parse(self.key_template)


class MapItem(BaseModel):
    """One Distributed Map item: ``{"index": 17, "params": {...}}``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int | None = Field(None, ge=0)
    params: ParamsModel


class Event(BaseModel):
    """The flat event after ``BatchInput`` has been merged in."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    api_config: ApiConfig
    options: Options = Field(default_factory=Options)
    request_id: str | None = None
    index_offset: int = Field(0, ge=0)
    query_params: ParamsModel | None = None
    batch: list[ParamsModel] | None = None
    date_range: DateRange | None = None
    Items: list[MapItem] | None = None

    @field_validator("request_id")
    @classmethod
    def _request_id_safe(cls, value: str | None) -> str | None:
        if value is not None and not REQUEST_ID_RE.match(value):
            raise ValueError(
                "must be 1-128 ASCII letters, digits and ._:=+@- starting with a letter or digit"
            )
        return value

    @field_validator("Items", mode="before")
    @classmethod
    def _wrap_bare_items(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        return [item if _is_wrapped(item) else {"params": item} for item in value]


def _steers_routing(name: str) -> bool:
    lowered = name.lower()
    return lowered in REFUSED_HEADERS or lowered.startswith(REFUSED_HEADER_PREFIXES)


def _is_wrapped(item: Any) -> bool:
    return isinstance(item, dict) and "params" in item and set(item) <= {"index", "params"}


def _policy(info: ValidationInfo) -> NetPolicy:
    context = info.context or {}
    policy = context.get("policy")
    return policy if isinstance(policy, NetPolicy) else NetPolicy.from_env()


@dataclass(frozen=True, slots=True)
class PlannedItem:
    """One request of a job: its global index and its query parameters."""

    index: int
    params: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Job:
    """A validated event: what to fetch, where to write it and how."""

    api: ApiConfig
    options: Options
    request_id: str
    requested: int
    plan: Callable[[], Iterator[PlannedItem]]
    is_map_batch: bool = False
    date_range: DateRange | None = None  # the event's range, for incremental runs
    index_offset: int = 0

    def items(self) -> Iterator[PlannedItem]:
        """The planned items, lazily and in index order of the event."""
        return self.plan()


def parse_event(
    event: Any,
    *,
    default_request_id: str | None = None,
    policy: NetPolicy | None = None,
    now: datetime | None = None,
) -> Job:
    """Validate an event of any shape and turn it into a ``Job``.

    Args:
        event: the decoded event.
        default_request_id: used when the event has no ``request_id``
            (the Lambda context's ``aws_request_id``).
        policy: network policy; defaults to the environment's.
        now: the clock reading relative dates resolve against (default: now, UTC).

    Raises:
        InvalidEventError: naming every offending field and why.
    """
    if not isinstance(event, dict):
        raise InvalidEventError([("event", f"must be a JSON object, not {type(event).__name__}")])
    flat, prefix = _flatten(event)
    flat = with_incremental_defaults(flat)
    model = _validate(flat, prefix, policy or NetPolicy.from_env(), now or datetime.now(UTC))
    request_id = model.request_id or default_request_id
    packed = model.options.pack is not None
    problems = [(prefix + f, r) for f, r in model.api_config.shape_problems(packed=packed)]
    if model.api_config.pagination is not None:
        problems += _paginated_option_problems(model.options, prefix)
    problems += _source_problems(model)
    if request_id is None:
        problems.append((f"{prefix}request_id", "missing, and no Lambda context to default to"))
    elif not REQUEST_ID_RE.match(request_id):
        problems.append((f"{prefix}request_id", f"{request_id!r} is not a safe request id"))
    if problems or request_id is None:
        raise InvalidEventError(problems)
    job = _build_job(model, request_id)
    _check_pack(job, prefix)
    _check_keys(job)
    return job


def _paginated_option_problems(options: Options, prefix: str) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    if options.skip_existing:
        # A chain cut short leaves its first pages behind: their presence proves nothing.
        reason = "not supported with pagination (a page being there does not mean all are)"
        problems.append((f"{prefix}options.skip_existing", reason))
    return problems


def _check_pack(job: Job, prefix: str) -> None:
    """``options.pack`` against the rest of the event (CONTRACT §13)."""
    pack, options = job.options.pack, job.options
    if pack is None:
        return
    where = f"{prefix}options"
    problems: list[tuple[str, str]] = []
    if pack.unit == "record" and not options.expect_json:
        problems.append((f"{where}.pack.unit", "record needs expect_json: records come from JSON"))
    if options.skip_existing:
        problems.append(
            (f"{where}.skip_existing", "cannot be combined with pack (no per-item key)")
        )
    if options.compress:
        problems.append((f"{where}.compress", "use pack.compression with pack"))
    if options.memory_budget_mb < 2 * options.part_size_mb:
        problems.append(
            (
                f"{where}.memory_budget_mb",
                f"must be at least twice part_size_mb ({options.part_size_mb}) with pack:"
                " one part for the object being filled, the rest for bodies",
            )
        )
    if job.is_map_batch and "{first_index}" not in pack.template:
        problems.append(
            (
                f"{where}.pack.key_template",
                "must contain {first_index} in a Distributed Map batch, or batches of one"
                " execution would overwrite each other's objects",
            )
        )
    if not problems:
        try:
            _sample_pack_key(job, pack.template)
        except ValueError as exc:
            problems.append((f"{where}.pack.key_template", str(exc)))
    if problems:
        raise InvalidEventError(problems)


def _sample_pack_key(job: Job, template: str) -> str:
    """The first object's key; ``{step}`` takes the first step's value (CONTRACT §15)."""
    step_param = job.date_range.param if job.date_range is not None else None
    first = next(job.items(), None)
    keys = PackKeys(template, job.api.source_id, job.request_id, 0, step_param)
    return keys.key(0, first.params if first is not None else None)


def _flatten(event: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Merge a Distributed Map ``BatchInput`` into the top level."""
    if "BatchInput" not in event:
        return event, ""
    batch_input = event["BatchInput"]
    if not isinstance(batch_input, dict):
        raise InvalidEventError([("BatchInput", "must be a JSON object")])
    rest = {k: v for k, v in event.items() if k != "BatchInput"}
    clash = sorted(set(batch_input) & set(rest))
    if clash:
        raise InvalidEventError([(f"BatchInput.{k}", "also given at top level") for k in clash])
    return {**batch_input, **rest}, "BatchInput."


BATCH_INPUT_FIELDS = frozenset({"api_config", "options", "request_id", "index_offset"})


def _validate(flat: dict[str, Any], prefix: str, policy: NetPolicy, now: datetime) -> Event:
    try:
        return Event.model_validate(flat, context={"policy": policy, "now": now})
    except ValidationError as exc:
        raise InvalidEventError(_problems(exc, prefix)) from None


def _problems(exc: ValidationError, prefix: str) -> list[tuple[str, str]]:
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = error["loc"]
        path = _path(loc)
        if prefix and loc and loc[0] in BATCH_INPUT_FIELDS:
            path = prefix + path
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        problems.append((path or "event", message))
    return problems


def _path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _source_problems(model: Event) -> list[tuple[str, str]]:
    given = [name for name in SOURCES if getattr(model, name) is not None]
    if len(given) == 1:
        return _range_problems(model)
    if not given:
        return [("event", "needs exactly one of query_params, batch, date_range, Items")]
    return [(name, f"only one of {', '.join(given)} may be given") for name in given]


def _range_problems(model: Event) -> list[tuple[str, str]]:
    if model.date_range is None:
        return []
    try:
        total = model.date_range.count()
        next(model.date_range.expand())  # surfaces a bad format before any request
    except ValueError as exc:
        return [("date_range", str(exc))]
    if total > MAX_DATE_RANGE_ITEMS:
        return [("date_range", f"expands to {total} items; at most {MAX_DATE_RANGE_ITEMS}")]
    if model.date_range.incremental:
        return _incremental_problems(model)
    return []


def _incremental_problems(model: Event) -> list[tuple[str, str]]:
    assert model.date_range is not None
    problems = format_problems(model.date_range)
    problems += run_dependent_problems("api_config.key_template", model.api_config.key_template)
    if model.options.pack is not None:
        problems += pack_problems(model.options.pack.template)
    return problems


def _build_job(model: Event, request_id: str) -> Job:
    offset = model.index_offset
    plan: Callable[[], Iterator[PlannedItem]]
    if model.query_params is not None:
        params = model.query_params
        plan, requested = (lambda: iter([PlannedItem(offset, params)])), 1
    elif model.batch is not None:
        batch = model.batch
        plan, requested = (lambda: _numbered(batch, offset)), len(batch)
    elif model.date_range is not None:
        date_range = model.date_range
        return range_job(model.api_config, model.options, request_id, date_range, offset)
    else:
        items = model.Items or []
        plan, requested = (lambda: _map_items(items, offset)), len(items)
    return Job(
        api=model.api_config,
        options=model.options,
        request_id=request_id,
        requested=requested,
        plan=plan,
        is_map_batch=model.Items is not None,
    )


def range_job(
    api: ApiConfig, options: Options, request_id: str, date_range: DateRange, offset: int
) -> Job:
    """The job of a ``date_range`` whose first item has index ``offset``."""
    return Job(
        api=api,
        options=options,
        request_id=request_id,
        requested=date_range.count(),
        plan=lambda: _numbered(date_range.expand(), offset),
        date_range=date_range,
        index_offset=offset,
    )


def with_plan(job: Job, plan: Callable[[], Iterator[PlannedItem]], requested: int) -> Job:
    """``job`` fetching ``plan`` instead: items no event can carry (a file read lazily).

    Raises:
        InvalidEventError: when a key of the new plan is invalid or two collide.
    """
    replaced = replace(job, plan=plan, requested=requested)
    _check_keys(replaced)
    return replaced


def _numbered(params: Any, offset: int) -> Iterator[PlannedItem]:
    for index, item in zip(count(offset), params, strict=False):
        yield PlannedItem(index, item)


def _map_items(items: list[MapItem], offset: int) -> Iterator[PlannedItem]:
    for position, item in enumerate(items):
        index = item.index if item.index is not None else offset + position
        yield PlannedItem(index, item.params)


def _check_keys(job: Job) -> None:
    """Render every key once: a bad or colliding key fails the event, not an item."""
    template = job.api.template
    # The same suffix the engine adds: a key valid without ".gz" may be over 1,024 bytes with it.
    suffix = ".gz" if job.options.compress else ""
    # Generated indexes are unique, so a template using {index} cannot collide
    # there; remembering a million keys to prove it would cost memory for nothing.
    remember = job.is_map_batch or "{index}" not in job.api.key_template
    seen: dict[str, int] = {}
    problems: list[tuple[str, str]] = []
    for item in job.items():
        try:
            # Page 0 stands for every page: {page} is required with pagination,
            # so the pages of one item cannot collide with each other.
            key = template.render(
                source_id=job.api.source_id,
                request_id=job.request_id,
                index=item.index,
                params=item.params,
                suffix=suffix,
            )
        except ValueError as exc:
            problems.append((f"api_config.key_template (item {item.index})", str(exc)))
            break
        if key in seen:
            problems.append(
                (
                    "api_config.key_template",
                    f"items {seen[key]} and {item.index} map to the same key {key!r}",
                )
            )
            break
        if remember:
            seen[key] = item.index
    problems.extend(_manifest_key_problems(job))
    if problems:
        raise InvalidEventError(problems)


def _manifest_key_problems(job: Job) -> list[tuple[str, str]]:
    """The manifest's key obeys the rules of item keys (``a/.`` would make ``a/./``)."""
    try:
        validate_key(manifest_key(job.api.source_id, job.request_id))
    except ValueError as exc:
        return [("api_config.source_id", f"the manifest key is invalid: {exc}")]
    return []
