"""Load test for nmt-serve on the loopback interface: throughput and latency percentiles.

    .venv/bin/python scripts/load_test.py runs/default/best.pt --src data/lo.de-en/test.de \\
        --clients 1,8,32 --batching on,off --quantize none,int8 --requests 96 --seconds 20

It starts one ``python -m nmt.serve`` on 127.0.0.1 (ephemeral port) per configuration (dynamic
batching on/off x fp32/int8) and warms each up. Then, for each number of concurrent clients,
the servers take turns for ``--rounds`` rounds (so that load changes on a shared machine hit
them alike): clients send single sentences (the source file's lines in turn, each client
waiting for its answer before sending the next) until ``--requests`` requests have been sent
or ``--seconds`` have passed. Reported per server and level: the median requests/s of the
rounds, p50/p95/p99 latency over all rounds, sentences per decoded batch (from ``/health``).
Every request must be answered 200: errors and lost requests are counted and reported. Finally
every server gets SIGTERM and must exit 0. Loopback only: the script starts
its own servers and talks to nothing else. Prints a Markdown table; ``--json FILE`` keeps the
numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]


def start_server(ckpt: str, args: argparse.Namespace, batching: bool, quantize: str) -> Any:
    log = tempfile.NamedTemporaryFile("w+", prefix="nmt-serve-", suffix=".log", delete=False)
    cmd = [sys.executable, "-m", "nmt.serve", f"ckpt={ckpt}", "host=127.0.0.1", "port=0"]
    cmd += [f"batching={str(batching).lower()}", f"quantize={quantize}", "device=cpu"]
    cmd += [f"threads={args.threads}", f"decode.beam_size={args.beam}", *args.override]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 300
    while True:
        m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", Path(log.name).read_text())
        if m:
            return proc, m.group(1), log.name
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            sys.exit(f"error: the server did not start:\n{Path(log.name).read_text()}")
        time.sleep(0.2)


async def run_level(
    url: str, lines: list[str], clients: int, max_requests: int, max_seconds: float
) -> dict[str, Any]:
    """``clients`` concurrent clients, one sentence per request, until a bound is reached."""
    latencies: list[float] = []
    errors: list[str] = []
    next_line = 0
    sent = 0

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal next_line, sent
        while sent < max_requests and time.perf_counter() < stop_at:
            sent += 1
            line = lines[next_line % len(lines)]
            next_line += 1
            t0 = time.perf_counter()
            try:
                async with session.post(url + "/translate", json={"text": [line]}) as res:
                    body = await res.json()
                    if res.status != 200 or len(body.get("translations", [])) != 1:
                        errors.append(f"{res.status} {body}")
                        continue
            except aiohttp.ClientError as e:
                errors.append(repr(e))
                continue
            latencies.append(time.perf_counter() - t0)

    timeout = aiohttp.ClientTimeout(total=max_seconds + 120)
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        batches = await batch_count(session, url)
        start = time.perf_counter()
        stop_at = start + max_seconds
        await asyncio.gather(*(client(session) for _ in range(clients)))
        elapsed = time.perf_counter() - start
        batches = await batch_count(session, url) - batches
    return {
        "requests": sent,
        "latencies": latencies,
        "errors": errors,
        "seconds": elapsed,
        "requests_per_s": len(latencies) / elapsed,
        "batches": batches,
    }


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one level on one server -> median throughput, pooled latency percentiles."""
    latencies = [x for r in rounds for x in r["latencies"]]
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else []
    ms = [round(1000 * x, 1) for x in q]
    answered, batches = len(latencies), sum(r["batches"] for r in rounds)
    return {
        "requests_per_s": round(statistics.median(r["requests_per_s"] for r in rounds), 2),
        "rounds_requests_per_s": [round(r["requests_per_s"], 2) for r in rounds],
        "p50_ms": ms[49] if ms else None,
        "p95_ms": ms[94] if ms else None,
        "p99_ms": ms[98] if ms else None,
        "requests": sum(r["requests"] for r in rounds),
        "answered": answered,
        "errors": sum(len(r["errors"]) for r in rounds),
        "first_errors": [e for r in rounds for e in r["errors"]][:3],
        "sentences_per_batch": round(answered / batches, 1) if batches else None,
    }


async def batch_count(session: aiohttp.ClientSession, url: str) -> int:
    """Batches the server has decoded so far (``GET /health``)."""
    async with session.get(url + "/health") as res:
        return int((await res.json())["batches"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("ckpt")
    p.add_argument("--src", default="data/lo.de-en/test.de")
    p.add_argument("--clients", default="1,8,32")
    p.add_argument("--batching", default="on,off")
    p.add_argument("--quantize", default="none,int8")
    p.add_argument("--requests", type=int, default=256, help="at most this many per level")
    p.add_argument("--seconds", type=float, default=60, help="at most this long per level")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--threads", type=int, default=2, help="the server's torch threads")
    p.add_argument("--rounds", type=int, default=3, help="measurements per level and server")
    p.add_argument("--warmup", type=int, default=8, help="requests before measuring")
    p.add_argument("--override", action="append", default=[], help="more server key=value")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    with open(args.src, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f if line.strip()]
    configs = [
        (quantize, batching == "on")
        for quantize in args.quantize.split(",")
        for batching in args.batching.split(",")
    ]
    servers = {}
    results = []
    try:
        for quantize, batching in configs:
            servers[quantize, batching] = start_server(args.ckpt, args, batching, quantize)
            url = servers[quantize, batching][1]
            asyncio.run(run_level(url, lines, 1, args.warmup, args.seconds))
        for clients in [int(c) for c in args.clients.split(",")]:
            rounds: dict[Any, list[dict[str, Any]]] = {config: [] for config in configs}
            for _ in range(args.rounds):  # the servers take turns: load changes hit all alike
                for config in configs:
                    url = servers[config][1]
                    r = asyncio.run(run_level(url, lines, clients, args.requests, args.seconds))
                    rounds[config].append(r)
            for (quantize, batching), rs in rounds.items():
                row = {"model": "int8" if quantize == "int8" else "fp32", "batching": batching}
                row.update({"clients": clients, **summarize(rs)})
                results.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        for proc, _, _ in servers.values():
            proc.send_signal(signal.SIGTERM)
        for proc, _, log in servers.values():
            code = proc.wait(timeout=300)
            if code != 0:
                print(f"error: a server exited {code}; log: {log}", file=sys.stderr)
                sys.exit(1)
            Path(log).unlink()
    print(
        f"single sentences from {args.src}, beam {args.beam}, server threads {args.threads}, "
        f"{args.rounds} rounds of at most {args.requests} requests or {args.seconds:g} s per "
        "level, the servers taking turns; requests/s: median of the rounds; latency "
        "percentiles: all rounds pooled\n"
    )
    print(
        "| model | batching | clients | requests/s | p50 ms | p95 ms | p99 ms "
        "| sentences/batch | answered | errors |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(
            f"| {r['model']} | {'on' if r['batching'] else 'off'} | {r['clients']} | "
            f"{r['requests_per_s']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | "
            f"{r['sentences_per_batch']} | {r['answered']}/{r['requests']} | {r['errors']} |"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
