"""Run the handler in a fresh interpreter and read its peak RSS (VmHWM) back.

Memory tests measure a child process so the test process's own heap (pytest, moto's
client, earlier tests) is not counted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.servers import MotoS3

ROOT = Path(__file__).resolve().parents[2]
CHILD = """
import json, sys
from handler.app import lambda_handler
from tests.support.lambda_context import LocalContext
result = lambda_handler(json.loads(sys.argv[1]), LocalContext(float(sys.argv[2]), "mem"))
# VmHWM, not ru_maxrss: the latter keeps the forking parent's peak across exec.
status = open("/proc/self/status").read()
peak = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmHWM:")))
print("RESULT " + json.dumps({"status": result["status"], "bytes": result["bytes_written"],
                               "records": result["records_ingested"], "peak_kib": peak}))
"""


def run_child(event: dict[str, Any], s3: MotoS3, *, lambda_s: float) -> dict[str, Any]:
    """The child's status, bytes written, records and peak RSS in KiB.

    ``lambda_s`` is the child's Lambda budget; the subprocess gets 20 s more.
    """
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL_S3": s3.endpoint,
        "FANOUT_ALLOW_PRIVATE_NETWORKS": "true",
        "PYTHONPATH": str(ROOT),
    }
    out = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(event), str(lambda_s)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=lambda_s + 20,
        check=True,
    ).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
    return dict(json.loads(line.removeprefix("RESULT ")))
