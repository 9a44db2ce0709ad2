"""Where the client CPU of one item goes: a sampling profile of the handler, by stage.

    python -m benchmarks.hotpath [--items 2000] [--concurrency 64] [--body-bytes 9000]
                                 [--s3 sink|moto] [--top 25] [--stages-only]
                                 [--pack | --lean] [--calls] [--vs-floor]

First, each per-item step of ours that the raw floor does not do (JSON check,
MD5, signing, key, params hash, manifest line) is timed alone with ``timeit``:
exact figures, independent of load. Then, needing pyinstrument (the ``bench``
extra), it starts the fake API and S3 servers
(their own processes), then in this process runs the handler once unprofiled
(CPU per item, the reference) and once under pyinstrument's sampler (1 ms),
each after a warm-up invocation. Every sampled frame's own time goes to one
stage (``STAGES``: the first matching rule wins); time the loop spent waiting in
``select`` is idle, not CPU, and is left out. The stages are shown in µs per
item, scaled so they add up to the unprofiled CPU per item: the sampler barely
slows the run, so its shares are close to the real ones (cProfile's are not: its
per-call cost inflates Python code far more than C calls).

``--lean`` runs ours unpacked against the lean floor (GET + unsigned PUT) on the
lean API and null sink (``benchmarks/nullserver.py``), P3's setup; ``--pack`` runs
ours packed against the GET-only floor, P1's. ``--vs-floor`` samples the floor the
same way and prints both by stage, side by side: where ours spends more.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks.floors import PACK, lean_servers
from benchmarks.peers import LocalContext, WorkerSpec, fanout_event, worker_env
from benchmarks.servers import ApiOptions, Servers, start_servers
from ingest_core.loops import LOOPS

WARMUP_ITEMS = 200

# (stage, substrings of "file:function"); the first rule that matches a function wins.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("idle: waiting in select (not CPU)", ("selectors.py:select", "epoll.poll")),
    ("JSON check + record count", ("ingest_core/records.py",)),
    ("MD5 of the body (Content-MD5)", ("writers.py:of_bytes",)),
    ("SigV4 signing", ("ingest_core/sigv4.py", "writers.py:_signed_headers", "hmac.py")),
    ("key rendering + params hash", ("ingest_core/keys.py",)),
    ("manifest line + tally", ("ingest_core/results.py", "ingest_core/settle.py")),
    (
        "packing: staging, pack lines",
        ("ingest_core/packing/staging.py", "ingest_core/packing/units.py"),
    ),
    ("packing: packer task, gzip", ("ingest_core/packing/",)),
    ("Powertools, logging, metrics", ("aws_lambda_powertools", "ingest_core/observability.py")),
    ("transfer (buffering, budget)", ("ingest_core/transfer.py", "ingest_core/limits.py")),
    (
        "engine (per-item bookkeeping, attempt loop, chain, sink, timeouts)",
        (
            "ingest_core/engine.py",
            "ingest_core/attempt.py",
            "ingest_core/chain.py",
            "ingest_core/sink.py",
            "ingest_core/clock.py",
        ),
    ),
    ("fetcher (GET, redirects, errors)", ("ingest_core/fetcher.py", "ingest_core/netguard.py")),
    ("writer (lean PUT request, S3 retries)", ("ingest_core/writers.py", "ingest_core/s3retry.py")),
    ("aiohttp client (requests, responses, parsing)", ("aiohttp/", "yarl/", "multidict/")),
    (
        "socket system calls (wall time: the kernel's loopback work, inflated under load)",
        ("<built-in>:socket.",),
    ),
    ("event loop, tasks, transports", ("asyncio/", "selectors.py", "socket.py")),
    ("benchmark harness (building the event)", ("benchmarks/",)),
)
OTHER = "other (stdlib, botocore, interpreter)"
IDLE = STAGES[0][0]
KERNEL_CALLS = frozenset({"socket.send", "socket.recv", "socket.connect", "epoll.poll"})


def stage_of(where: str) -> str:
    """The stage of a frame named ``path/to/file.py:function``."""
    for stage, needles in STAGES:
        if any(needle in where for needle in needles):
            return stage
    return OTHER


def self_times(root: Any) -> dict[str, float]:
    """Seconds sampled in each frame itself (not its children), by ``file:function``."""
    out: dict[str, float] = defaultdict(float)
    stack = [(root, "")]
    while stack:
        frame, parent = stack.pop()
        where = f"{frame.file_path or ''}:{frame.function}"
        if frame.is_synthetic:  # "[self]", "[await]" and the like: the parent's own time
            where = parent
        elif where.startswith("<built-in>") and frame.function not in KERNEL_CALLS:
            where = f"{parent} -> {frame.function}"  # a C function: its caller's stage
        children = frame.children
        out[where] += max(0.0, frame.time - sum(child.time for child in children))
        stack.extend((child, where) for child in children)
    return out


def stage_costs(body_bytes: int, repeat: int = 5, number: int = 5_000) -> list[tuple[str, float]]:
    """µs per call of each per-item step of ours that the raw floor does not do, in isolation."""
    import base64
    import hashlib
    import timeit

    from benchmarks.servers import body_layout
    from ingest_core.keys import KeyTemplate, params_hash
    from ingest_core.records import count_records
    from ingest_core.results import ItemResult, ItemStatus
    from ingest_core.sigv4 import Credentials, sign_put

    layout = body_layout(body_bytes, "0123456789abcdef")
    body = b"[" + b",".join([layout.record] * (layout.count - 1) + [layout.last]) + b"]"
    params = {"date": "2020-01-05", "i": 5}
    template = KeyTemplate.parse("{source_id}/{request_id}-{index}.json")
    headers = {
        "Content-Type": "application/json",
        "Content-MD5": "1B2M2Y8AsgTpgAmY7PhCfg==",
        "Content-Length": str(body_bytes),
        "x-amz-meta-source-id": "bench",
        "x-amz-meta-request-id": "bench-run-001",
        "x-amz-meta-index": "5",
        "x-amz-meta-params-hash": "0123456789abcdef",
    }
    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    result = ItemResult(5, params, "bench/r-5.json", ItemStatus.WRITTEN, 1, 9000, 9000, 49, 12)
    steps: list[tuple[str, Callable[[], object]]] = [
        ("JSON check + record count (orjson.loads)", lambda: count_records(body)),
        (
            "MD5 of the body, base64 (Content-MD5)",
            lambda: base64.b64encode(hashlib.md5(body).digest()),
        ),
        (
            "SHA-256 of the body (no longer done: UNSIGNED-PAYLOAD)",
            lambda: hashlib.sha256(body).hexdigest(),
        ),
        (
            "SigV4 signature of the PUT",
            lambda: sign_put(
                host="127.0.0.1:9000",
                path="/bench-bucket/bench/r-5.json",
                region="us-east-1",
                credentials=credentials,
                headers=headers,
            ),
        ),
        (
            "key rendering and validation",
            lambda: template.render(
                source_id="bench", request_id="bench-run-001", index=5, params=params
            ),
        ),
        ("params hash (object metadata)", lambda: params_hash(params)),
        ("manifest line (orjson)", result.manifest_line),
        ("copy of the body out of the part buffer", lambda: bytes(memoryview(bytearray(body)))),
    ]
    return [
        (name, min(timeit.repeat(step, number=number, repeat=repeat)) / number * 1e6)
        for name, step in steps
    ]


def varied_costs(body_bytes: int, repeat: int = 5, number: int = 50) -> list[tuple[str, float]]:
    """µs per body of the work no packed or unpacked ingester can skip, on the lean API's
    64 varied JSON bodies (``nullserver.varied_body``, served in turn): what bounds P1-P3."""
    import base64
    import hashlib
    import timeit
    import zlib

    import orjson

    from benchmarks.nullserver import BODY_VARIANTS, varied_body

    bodies = [varied_body(body_bytes, seed) for seed in range(BODY_VARIANTS)]
    stream = zlib.compressobj(1, zlib.DEFLATED, 31)  # one stream over every body, as a pack

    def gzip_1() -> None:
        for body in bodies:
            stream.compress(body)

    def parse() -> None:
        for body in bodies:
            orjson.loads(body)

    def md5() -> None:
        for body in bodies:
            base64.b64encode(hashlib.md5(body).digest())

    steps = [
        ("gzip level 1 of the body, one stream (a pack's compression)", gzip_1),
        ("orjson.loads of the body (the JSON check and record count)", parse),
        ("MD5 of the body, base64 (Content-MD5 of an unpacked PUT)", md5),
    ]
    return [
        (name, min(timeit.repeat(step, number=number, repeat=repeat)) / number / len(bodies) * 1e6)
        for name, step in steps
    ]


def call_counts(
    invoke: Callable[[str, int], Any], floor: Callable[[str, int], Any], items: int, top: int
) -> None:
    """Function calls per item, ours against the raw floor: a measure no other load can skew."""
    import cProfile
    import pstats

    counts: dict[str, dict[str, int]] = {}
    for name, call in (("raw floor", floor), ("fanout-ingest", invoke)):
        profiler = cProfile.Profile()
        profiler.runcall(call, "calls", items)
        stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
        counts[name] = {
            f"{os.path.basename(func[0])}:{func[2]}": ncalls
            for func, (_cc, ncalls, _tt, _ct, _callers) in stats.items()
        }
    ours, floor_counts = counts["fanout-ingest"], counts["raw floor"]
    print(
        f"\nfunction calls per item (cProfile, {items} items): fanout-ingest "
        f"{sum(ours.values()) / items:.0f}, raw floor {sum(floor_counts.values()) / items:.0f}; "
        f"the {top} largest differences:\n"
    )
    print("| function | ours | floor | extra |\n| --- | --- | --- | --- |")
    names = sorted(
        set(ours) | set(floor_counts), key=lambda n: floor_counts.get(n, 0) - ours.get(n, 0)
    )
    for name in names[:top]:
        a, b = ours.get(name, 0) / items, floor_counts.get(name, 0) / items
        print(f"| `{name}` | {a:.1f} | {b:.1f} | {a - b:+.1f} |")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    """Profile the handler and print the per-stage table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hotpath", description=__doc__)
    parser.add_argument("--items", type=int, default=2_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--body-bytes", type=int, default=9_000)
    parser.add_argument("--s3", default="sink")
    parser.add_argument("--top", type=int, default=25, help="also list the top N functions")
    parser.add_argument("--html", help="also write pyinstrument's HTML report here")
    parser.add_argument(
        "--stages-only", action="store_true", help="only time the per-item steps in isolation"
    )
    parser.add_argument(
        "--calls", action="store_true", help="also count function calls per item, ours vs floor"
    )
    parser.add_argument(
        "--pack",
        action="store_true",
        help="the packed path (unit response, gzip 1) on the lean API (benchmarks/nullserver.py), "
        "against the GET-only floor",
    )
    parser.add_argument(
        "--lean",
        action="store_true",
        help="unpacked, on the lean API and the null sink, against the lean floor (P3's setup)",
    )
    parser.add_argument(
        "--vs-floor",
        action="store_true",
        help="also sample the floor and show both by stage, side by side",
    )
    parser.add_argument(
        "--loop",
        choices=LOOPS,
        default="asyncio",
        help="the event loop of both ours and the floor (default asyncio)",
    )
    args = parser.parse_args(argv)
    if args.pack and args.lean:
        parser.error("--pack and --lean are two setups: pick one")
    print(f"\nPer-item steps in isolation ({args.body_bytes}-byte body, best of 5):\n")
    print("| step | µs |\n| --- | --- |")
    for name, micros in stage_costs(args.body_bytes):
        print(f"| {name} | {micros:.1f} |")
    if args.pack or args.lean:
        print(f"\nOn the lean API's varied {args.body_bytes}-byte bodies (best of 5):\n")
        print("| step | µs |\n| --- | --- |")
        for name, micros in varied_costs(args.body_bytes):
            print(f"| {name} | {micros:.1f} |")
    if args.stages_only:
        return 0

    with _servers(args) as servers:
        os.environ.clear()
        os.environ.update(worker_env(servers.s3_url))
        os.environ["FANOUT_EVENT_LOOP"] = args.loop  # the handler's loop (ingest_core/loops.py)
        from handler.app import lambda_handler

        spec = WorkerSpec(
            impl="fanout_ingest",
            api_url=servers.api_url,
            s3_url=servers.s3_url,
            bucket=servers.bucket,
            items=args.items,
            concurrency=args.concurrency,
            run_id="hotpath",
            body_bytes=args.body_bytes,
            options={"pack": PACK} if args.pack else {},
        )
        stamp = time.strftime("%H%M%S")

        def invoke(tag: str, count: int) -> dict[str, Any]:
            run_id = f"hotpath-{stamp}-{tag}"
            return lambda_handler(fanout_event(spec, run_id, count), LocalContext(run_id))

        def floor(tag: str, count: int) -> Any:
            import asyncio

            from benchmarks.peers import (
                _get_only_item,
                _lean_item,
                _lean_pool,
                _pool,
                _raw_item,
                loop_factory,
            )

            run_id = f"hotpath-{stamp}-floor-{tag}"
            if args.pack:  # fetching alone: what packing is measured against (P1)
                main = _lean_pool(spec, count, lambda s, i: _get_only_item(s, spec, i))
            elif args.lean:  # GET + unsigned PUT, nothing else (P3)
                main = _lean_pool(spec, count, lambda s, i: _lean_item(s, spec, run_id, i))
            else:
                main = _pool(spec, count, lambda s, i, o: _raw_item(s, spec, run_id, i, o))
            with asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner:
                return runner.run(main)

        invoke("warm1", WARMUP_ITEMS)
        before = _cpu()
        plain = invoke("plain", args.items)
        plain_us = (_cpu() - before) / args.items * 1e6
        invoke("warm2", WARMUP_ITEMS)
        floor("warm", WARMUP_ITEMS)
        before = _cpu()
        floor("plain", args.items)
        floor_us = (_cpu() - before) / args.items * 1e6
        if args.calls:
            call_counts(invoke, floor, args.items, args.top)
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.001, async_mode="disabled")
        profiler.start()
        profiled = invoke("profiled", args.items)
        session = profiler.stop()
        floor_session = None
        if args.vs_floor:
            floor_profiler = Profiler(interval=0.001, async_mode="disabled")
            floor_profiler.start()
            floor("profiled", args.items)
            floor_session = floor_profiler.stop()
    for result in (plain, profiled):
        if result["succeeded"] != args.items:
            print(f"run failed: {result.get('failures', [])[:2]}", file=sys.stderr)
            return 1
    if args.html:
        profiler.write_html(args.html)
    frames = self_times(session.root_frame())
    ours = _scaled_stages(frames, plain_us)
    floor_stages = (
        _scaled_stages(self_times(floor_session.root_frame()), floor_us)
        if floor_session is not None
        else {}
    )
    busy = sum(s for where, s in frames.items() if stage_of(where) != IDLE)
    print(
        f"{args.items} items of {args.body_bytes} bytes at c={args.concurrency}, "
        f"{'lean API + null sink' if args.lean else 'S3 ' + args.s3}: {plain_us:.0f} µs/item "
        f"CPU unprofiled (the floor: {floor_us:.0f}, {plain_us / floor_us:.2f}x); sampled "
        f"{busy / args.items * 1e6:.0f} µs/item busy; stages scaled to the unprofiled figures"
    )
    if floor_session is None:
        print("\n| stage | µs/item | share |\n| --- | --- | --- |")
        for stage, micros in sorted(ours.items(), key=lambda kv: -kv[1]):
            print(f"| {stage} | {micros:.0f} | {micros / plain_us:.0%} |")
    else:
        print("\n| stage | ours µs/item | floor µs/item | extra |\n| --- | --- | --- | --- |")
        for stage in sorted(set(ours) | set(floor_stages), key=lambda n: -ours.get(n, 0.0)):
            a, b = ours.get(stage, 0.0), floor_stages.get(stage, 0.0)
            print(f"| {stage} | {a:.0f} | {b:.0f} | {a - b:+.0f} |")
        print(f"| **total** | {plain_us:.0f} | {floor_us:.0f} | {plain_us - floor_us:+.0f} |")
    if args.top:
        print(f"\ntop {args.top} frames by own time (sampled µs/item):")
        ranked = sorted(frames.items(), key=lambda kv: -kv[1])[: args.top]
        for where, seconds in ranked:
            short = where.split("site-packages/")[-1].split("lib/python3")[-1]
            print(f"  {seconds / args.items * 1e6:7.1f}  {short}  [{stage_of(where)}]")
    return 0


def _scaled_stages(frames: dict[str, float], cpu_us: float) -> dict[str, float]:
    """µs per item by stage: the sampled shares (idle left out) of the unprofiled CPU."""
    by_stage: dict[str, float] = defaultdict(float)
    for where, seconds in frames.items():
        by_stage[stage_of(where)] += seconds
    by_stage.pop(IDLE, None)
    total = sum(by_stage.values()) or 1.0
    return {stage: seconds / total * cpu_us for stage, seconds in by_stage.items()}


@contextlib.contextmanager
def _servers(args: argparse.Namespace) -> Iterator[Servers]:
    """The setup ``args`` asks for: the fake API and S3, or the lean servers (floors.py)."""
    if not (args.pack or args.lean):
        with start_servers(api=ApiOptions(body_bytes=args.body_bytes), s3=args.s3) as servers:
            yield servers
        return
    with (
        tempfile.TemporaryDirectory(prefix="hotpath-") as logs,
        lean_servers(Path(logs), packs=args.pack, s3=args.s3) as lean,
    ):
        servers = lean.packs if args.pack else lean.null
        assert servers is not None
        yield servers


if __name__ == "__main__":
    sys.exit(main())
