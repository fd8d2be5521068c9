"""Outbound pool benchmark: what one call costs as the pool fills with idle connections.

    PYTHONPATH=. python bench/outbound_pool.py [--samples 400]

A worker keeps a connection open to a vendor for every call it had running at its busiest moment (the proxy holds
one per stream; they stay for the pool's 5 s keep-alive), and every request and every release walks the pool. This
fills the pool with 0, 40 and 200 idle connections to a local upstream (tests/support/stream_upstream.py, in this
process) and then times one small GET at a time (median of ``--samples``, or of those made in the 3 s before the
pools' 5 s keep-alive closes the idle connections), with:

* **app.net** — the app's :class:`app.net.OutboundClient`, as the proxy calls it (``open_stream``): the guarded
  transport over httpcore2's pool (app/net_transport.py);
* **httpcore 1.0** — a plain ``httpx.Client`` with the same pool limits, whose pool is httpcore 1.0's, which
  app.net used before: it compares every pooled connection with every other on each request and release.

Each line is measured against its own 0-connection figure in the same run (the ratio); nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python bench/outbound_pool.py` from anywhere

from app.net import OutboundClient
from tests.support.stream_upstream import running_upstream

KEY = "sk-bench-pool"
POOL = 512
IDLE = (0, 40, 200)
# Both pools close a connection idle for 5 s (app.net_transport, httpx's default): the calls are timed before that,
# or a slow pool's later calls would find it emptied and the median would measure a small pool.
WINDOW_SECONDS = 3.0


def fill(stream: Callable[[threading.Barrier], None], count: int) -> None:
    """``count`` streams open at once, then all closed: their connections stay in the pool, idle."""
    if not count:
        return
    barrier = threading.Barrier(count)
    threads = [threading.Thread(target=stream, args=(barrier,)) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def median_ms(call: Callable[[], object], samples: int) -> float:
    """Median of ``samples`` calls, or of those made within :data:`WINDOW_SECONDS` of the pool being filled."""
    until = time.monotonic() + WINDOW_SECONDS
    for _ in range(20):
        call()
    times: list[float] = []
    while len(times) < samples and time.monotonic() < until:
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=400)
    args = parser.parse_args()
    headers = [("Authorization", f"Bearer {KEY}")]
    chat = {"stream": True, "n_events": 2, "delay": 0.05}
    chat_body = json.dumps(chat).encode()
    rows: list[tuple[str, list[float]]] = []
    with running_upstream() as upstream:
        upstream.add_key(KEY)
        models, completions = f"{upstream.url}/v1/models", f"{upstream.url}/v1/chat/completions"

        def app_net(idle: int) -> float:
            with OutboundClient(allow=("127.0.0.1",), retries=0, pool_size=POOL) as client:

                def call(method: str, url: str, body: bytes | None, barrier: threading.Barrier | None = None) -> None:
                    """One call as the proxy makes it: opened, (held open at ``barrier``,) read to the end, closed."""
                    sent = [*headers, ("Content-Type", "application/json")] if body is not None else headers
                    upstream_call = client.open_stream(
                        method, url, headers=sent, params={}, content=body, read_timeout=30, pool_timeout=30
                    )
                    if barrier is not None:
                        barrier.wait()
                    for _ in upstream_call.chunks():
                        pass
                    upstream_call.close()

                fill(lambda barrier: call("POST", completions, chat_body, barrier), idle)
                return median_ms(lambda: call("GET", models, None), args.samples)

        def httpcore_1(idle: int) -> float:
            limits = httpx.Limits(max_connections=POOL, max_keepalive_connections=POOL)
            with httpx.Client(limits=limits, trust_env=False) as client:

                def stream(barrier: threading.Barrier) -> None:
                    with client.stream("POST", completions, json=chat, headers=headers) as response:
                        barrier.wait()
                        response.read()

                fill(stream, idle)
                return median_ms(lambda: client.get(models, headers=headers).raise_for_status(), args.samples)

        for name, measure in (("app.net (httpcore2)", app_net), ("httpx + httpcore 1.0", httpcore_1)):
            rows.append((name, [measure(idle) for idle in IDLE]))
    print(f"{'client':<22}" + "".join(f"{f'{n} idle':>18}" for n in IDLE))
    for name, figures in rows:
        cells = [f"{ms:.2f} ms ({ms / figures[0]:.2f}x)" for ms in figures]
        print(f"{name:<22}" + "".join(f"{cell:>18}" for cell in cells))


if __name__ == "__main__":
    main()
