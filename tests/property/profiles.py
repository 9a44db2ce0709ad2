"""Hypothesis settings for the generative pipeline test: CI's bounded run and the soak.

- ``ci`` (``make test``): a fixed number of derandomized examples, no example
  database: every CI run tries the same examples, so a red build is reproducible.
  CI_EXAMPLES keeps the module near two minutes on a 2-core machine.
- ``soak`` (``make soak``): ``FANOUT_PROPERTY_EXAMPLES`` examples (default
  SOAK_EXAMPLES), freshly random each run; a failure prints the seed and the
  ``@reproduce_failure`` blob, so the log alone replays it.
  ``FANOUT_PROPERTY_EXAMPLES=2000 make soak`` is the long run.

Both switch off the per-example deadline (a run under a tight invocation deadline
takes seconds by design) and the health checks that flag slow data generation and
the (deliberately) function-scoped environment fixture.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

CI_EXAMPLES = 60
SOAK_EXAMPLES = 400
EXAMPLES_VARIABLE = "FANOUT_PROPERTY_EXAMPLES"

_COMMON = settings(
    deadline=None,
    print_blob=True,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)

CI = settings(_COMMON, max_examples=CI_EXAMPLES, derandomize=True, database=None)
# Re-runs (tests/property/test_reruns.py): each step is a whole run over ~4 MB.
RERUNS = settings(_COMMON, max_examples=8, stateful_step_count=3, derandomize=True, database=None)


def soak_examples() -> int:
    """How many examples the soak runs (``FANOUT_PROPERTY_EXAMPLES``)."""
    value = os.environ.get(EXAMPLES_VARIABLE, "").strip()
    if not value:
        return SOAK_EXAMPLES
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{EXAMPLES_VARIABLE} must be a positive whole number, not {value!r}")
    return int(value)


# Read at import: the test environment fixture clears FANOUT_* variables per test.
SOAK = settings(
    _COMMON,
    max_examples=soak_examples(),
    database=None,
)
