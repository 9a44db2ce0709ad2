"""One module per benchmark scenario; ``benchmarks.run`` finds them by name.

A scenario module has a docstring whose first line says what it measures, and

    def run(bench: benchmarks.measure.Bench) -> benchmarks.report.Section

which starts its servers (``benchmarks.servers.start_servers``), runs its workers
through ``bench.run(...)`` ``bench.repeats`` times, sized with
``bench.size(full=..., quick=...)``, and returns its tables and verdicts.
Keep a scenario's full size to about 3 minutes of wall time and ``--quick`` to
about 20 seconds.
"""
