"""fanout-ingest engine."""
