"""Reusable test infrastructure: local servers (API, S3) and fault injection.

Everything here binds 127.0.0.1 on a free port and cleans up after itself, so
tests can run under ``filterwarnings = error::ResourceWarning``.
"""

from tests.support.faults import FaultyAPI, S3FaultProxy, expected_bytes
from tests.support.servers import MotoS3, Response, ScriptedAPI, ThreadedApp

__all__ = [
    "FaultyAPI",
    "MotoS3",
    "Response",
    "S3FaultProxy",
    "ScriptedAPI",
    "ThreadedApp",
    "expected_bytes",
]
