"""Is ``nullserver.py``'s null sink as lean, for the client, as nginx's ``return 200``?

A one-off cross-check, not a scenario (it needs nginx on the PATH: ``apt-get install
nginx-light``): the lean floor and fanout-ingest unpacked, each to the null sink and to
an nginx whose only location answers ``return 200;``, 2,000 items at c=64, 5
interleaved repeats, medians of pairs.

    python -m benchmarks.nginx_check
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import subprocess
import tempfile
from pathlib import Path

from benchmarks.floors import Series, lean_servers, pair_ratios, pairs_text, run_interleaved
from benchmarks.measure import Bench
from benchmarks.servers import HOST, _wait_listening, free_port

NGINX_CONF = """user www-data; worker_processes 1; daemon off; pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 1024; }}
http {{ access_log off; client_body_buffer_size 64k; keepalive_requests 100000;
  server {{ listen {host}:{port}; location / {{ return 200; }} }} }}
"""


def main() -> None:
    """Start nginx and the lean servers, run the four series, print the ratios."""
    work = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
    bench = Bench(argparse.Namespace(quick=False, out=work, s3="sink", quiet_below=None))
    bench.scenario = "nginx-check"
    port = free_port()
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=work, host=HOST, port=port))
    log = work / "nginx.out"
    nginx = subprocess.Popen(
        ["nginx", "-c", str(conf)], stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    try:
        _wait_listening(nginx, port, log)
        with lean_servers(bench.log_dir / "servers-nginx-check", packs=False) as lean:
            ngx = dataclasses.replace(
                lean.null, s3_url=f"http://{HOST}:{port}", s3_kind="nginx", s3_pid=None
            )
            records = run_interleaved(
                bench,
                [
                    Series("lean floor null", "lean_floor", lean.null),
                    Series("ours null", "fanout_ingest", lean.null),
                    Series("lean floor nginx", "lean_floor", ngx, verify=False),
                    Series("ours nginx", "fanout_ingest", ngx, verify=False),
                ],
            )
    finally:
        nginx.terminate()
        nginx.wait(10)
    for a, b in (
        ("ours null", "lean floor null"),
        ("ours nginx", "lean floor nginx"),
        ("lean floor nginx", "lean floor null"),
        ("ours nginx", "ours null"),
    ):
        print(f"{a} / {b}: {pairs_text(*pair_ratios(records, a, b))}")
    for label, runs in records.items():
        ok = [r["cpu_s"] / r["items"] * 1e6 for r in runs if r["status"] == "ok"]
        print(f"{label}: {len(ok)} ok, median {statistics.median(ok):.0f} µs/item" if ok else label)


if __name__ == "__main__":
    main()
