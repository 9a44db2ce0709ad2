"""The whole configuration space, generatively (CONTRACT §16; issue 17 item 5).

Hypothesis draws a configuration (pagination none or each of the six types; totals
0, 1, exact fits, many; parallel pages on or off; ``max_pages``; pack off, response
or record, gzip or not; sink S3 lean PUT, S3 SDK or a local folder; concurrency;
memory budget; deadline) and a fault schedule (API: 429 with Retry-After, 5xx, a
reset, a truncated body, a 404, a next link to another origin; S3: SlowDown, 500,
a dropped connection, 403, a Complete answering 200 with an error, a held or hung
request; a local folder whose first object's path is taken; a stop, as Ctrl-C gives),
runs it against the paged API and moto behind the fault proxy, and checks:

- the counts add up, every failure has a kind from the closed set;
- items the model says must fail failed, with a kind it allows; the others succeeded;
- every succeeded item's bytes are stored exactly once where the manifest says
  (unpacked: object bytes == the served page; packed: the span's lines decode to the
  served body or records), and no pack holds a line of a failed item;
- no object under the run's prefix that the manifest does not name; no open
  multipart upload (local folder: no temporary file);
- the run returns before its deadline; no exception escapes;
- nothing reaches another origin; RSS growth within the budget + 32 MiB (local sink).

CI runs a bounded, derandomized number of examples; ``make soak`` runs many more
(tests/property/profiles.py). Examples that found a bug stay as ``@example``s.
"""

from __future__ import annotations

import pytest
from hypothesis import given

from tests.property import profiles
from tests.property.harness import Servers
from tests.property.invariants import check_world
from tests.property.model import World, worlds

pytestmark = [pytest.mark.usefixtures("allow_private")]


@pytest.mark.timeout(600)
@profiles.CI
@given(world=worlds())
def test_every_configuration_keeps_the_invariants(servers: Servers, world: World) -> None:
    check_world(world, servers)


@pytest.mark.soak
@pytest.mark.timeout(0)
@profiles.SOAK
@given(world=worlds())
def test_soak_every_configuration_keeps_the_invariants(servers: Servers, world: World) -> None:
    check_world(world, servers)
