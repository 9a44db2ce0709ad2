"""``python -m ingest_core.cli``: the same as the ``fanout-ingest`` command."""

from ingest_core.cli import main

raise SystemExit(main())
