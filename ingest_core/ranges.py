"""``date_range`` (CONTRACT §3) and what an incremental range requires (CONTRACT §15).

A range's ``start`` and ``end`` may be relative (``today``, ``now-6h``): they are
resolved when the event is parsed. An incremental range is one run of a schedule,
so its keys must not depend on the run: a step fetched again by a later run then
overwrites its object instead of landing beside it. ``{request_id}`` (each run's
own) and ``{index}`` (which moves with the first step a run fetches) are refused
in its key templates, and its default keys name the step
(``{source_id}/{param.date}.json``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import islice
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator

from ingest_core.keys import INCREMENTAL_PACK_KEY_TEMPLATES, KeyTemplate, incremental_key_template
from ingest_core.planner import (
    count_date_range,
    expand_date_range,
    parse_value,
    resolve_relative,
)

STATE_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Placeholders whose value changes from one run to the next (CONTRACT §15).
RUN_DEPENDENT_FIELDS = {
    "request_id": "each run has its own request id",
    "index": "a step's index moves with the first step a run fetches",
    "first_index": "a step's index moves with the first step a run fetches",
    "part": "objects are numbered in the order a run fills them",
}


def _check_param_value(value: Any) -> Any:
    """Accept strings, finite numbers, booleans, or flat lists of those."""
    if isinstance(value, list):
        for element in value:
            _check_scalar(element)
        return value
    return _check_scalar(value)


def _check_scalar(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("numbers must be finite")
    if value is None or not isinstance(value, str | int | float | bool):
        raise ValueError(
            f"must be a string, number, boolean or list of those, not {type(value).__name__}"
        )
    return value


ParamValue = Annotated[Any, BeforeValidator(_check_param_value)]
ParamsModel = dict[str, ParamValue]


class DateRange(BaseModel):
    """``date_range``: one request per step, inclusive of both ends.

    ``start`` and ``end`` may be relative (``today``, ``now-6h``, ...): they are
    resolved here, against the clock reading in the validation context, so the
    model only ever holds ISO text.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # step before start and end: their validators read it (fields validate in order).
    step: str = "1d"
    start: str
    end: str
    param: str = "date"
    format: str = "%Y-%m-%d"
    extra_params: ParamsModel = Field(default_factory=dict)
    incremental: bool = False
    state_key: str | None = None

    @field_validator("start", "end")
    @classmethod
    def _resolve_relative(cls, value: str, info: ValidationInfo) -> str:
        now = (info.context or {}).get("now") or datetime.now(UTC)
        return resolve_relative(value, step=info.data.get("step", "1d"), now=now)

    @field_validator("state_key")
    @classmethod
    def _state_key_safe(cls, value: str | None) -> str | None:
        if value is not None and not STATE_KEY_RE.match(value):
            raise ValueError("must be 1-64 letters, digits and ._- starting with a letter or digit")
        return value

    def expand(self) -> Iterator[dict[str, Any]]:
        """The params of every step, lazily."""
        return expand_date_range(
            self.start,
            self.end,
            param=self.param,
            step=self.step,
            fmt=self.format,
            extra_params=self.extra_params,
        )

    def count(self) -> int:
        """How many items the range expands to."""
        return count_date_range(self.start, self.end, step=self.step)


def format_problems(date_range: DateRange) -> list[tuple[str, str]]:
    """An incremental range's format must read its dates back, in order."""
    # A watermark is stored as the range renders it and must be read back, in order.
    firsts = [str(p[date_range.param]) for p in islice(date_range.expand(), 2)]
    try:
        values = [parse_value(text, date_range.format) for text in firsts]
    except ValueError:
        values = []
    if not values or (len(values) == 2 and values[1] <= values[0]):
        reason = (
            "an incremental range needs a format its dates can be read back from, in order"
            f" ({', '.join(map(repr, firsts))} cannot)"
        )
        return [("date_range.format", reason)]
    return []


def with_incremental_defaults(flat: dict[str, Any]) -> dict[str, Any]:
    """The event with an incremental range's default key templates filled in.

    Done on the raw event, before validation, because the defaults depend on
    other sections (``date_range.param``, ``api_config.pagination``, ``options.pack``).
    """
    date_range = flat.get("date_range")
    if not isinstance(date_range, dict) or date_range.get("incremental") is not True:
        return flat
    flat = _with_pack_default(flat)
    api = flat.get("api_config")
    if not isinstance(api, dict) or "key_template" in api:
        return flat
    param = date_range.get("param", "date")
    template = incremental_key_template(
        param if isinstance(param, str) else "date", paged=bool(api.get("pagination"))
    )
    return {**flat, "api_config": {**api, "key_template": template}}


def _with_pack_default(flat: dict[str, Any]) -> dict[str, Any]:
    """Packed, an incremental range's default is one object per step, named by it."""
    options = flat.get("options")
    if not isinstance(options, dict):
        return flat
    pack = options.get("pack")
    if not isinstance(pack, dict) or "key_template" in pack:
        return flat
    template = INCREMENTAL_PACK_KEY_TEMPLATES.get(pack.get("compression", "gzip"))
    if template is None:
        return flat  # a bad compression: reported where options are validated
    return {**flat, "options": {**options, "pack": {**pack, "key_template": template}}}


def pack_problems(template: str) -> list[tuple[str, str]]:
    """An incremental range's pack objects must each hold one step, named by it."""
    field = "options.pack.key_template"
    problems = run_dependent_problems(field, template)
    if "step" not in KeyTemplate.field_names(template):
        reason = (
            "must contain {step} in an incremental range: one object per step, so a step"
            " packed again overwrites its object (the default is {source_id}/{step}.ndjson.gz)"
        )
        problems.append((field, reason))
    return problems


def run_dependent_problems(field: str, template: str) -> list[tuple[str, str]]:
    """``template`` (an item or pack key template) may not name the run."""
    names = KeyTemplate.field_names(template)
    return [
        (
            field,
            f"{{{name}}} is refused in an incremental range: {why}, so a step fetched"
            " again would land twice; name the step instead ({param.date} in"
            " key_template, {step} in pack.key_template: the defaults)",
        )
        for name, why in RUN_DEPENDENT_FIELDS.items()
        if name in names
    ]
