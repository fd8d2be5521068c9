"""Outbound pool benchmark: what one call costs as the pool fills with idle connections.

    PYTHONPATH=. python bench/outbound_pool.py [--samples 400]

A worker keeps a connection open to a vendor for every call it had running at its busiest moment (the proxy holds
one per stream; they stay for the pool's 5 s keep-alive), and every request and every release walks the pool. This
fills the pool with 0, 40 and 200 idle connections to a local upstream (tests/support/stream_upstream.py, in this
process) and then times one small GET at a time (median of ``--samples``), with:

* **app.net** — the app's :class:`app.net.OutboundClient`, as the proxy calls it (``open_stream``): the guarded
  transport over httpcore2's pool (app/net_transport.py);
* **httpcore 1.0** — a plain ``httpx.Client`` with the same pool limits, whose pool is httpcore 1.0's, which
  app.net used before: it compares every pooled connection with every other on each request and release.

Each line is measured against its own 0-connection figure in the same run (the ratio); nothing is asserted.
"""

from __future__ import annotations

import argparse
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
    for _ in range(20):
        call()
    times = []
    for _ in range(samples):
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
    rows: list[tuple[str, list[float]]] = []
    with running_upstream() as upstream:
        upstream.add_key(KEY)
        models, completions = f"{upstream.url}/v1/models", f"{upstream.url}/v1/chat/completions"

        def app_net(idle: int) -> float:
            with OutboundClient(allow=("127.0.0.1",), retries=0, pool_size=POOL) as client:

                def open_and_read(url: str, content: bytes | None = None) -> None:
                    method = "POST" if content is not None else "GET"
                    call = client.open_stream(
                        method, url, headers=headers, params={}, content=content, read_timeout=30, pool_timeout=30
                    )
                    for _ in call.chunks():
                        pass
                    call.close()

                def stream(barrier: threading.Barrier) -> None:
                    body = httpx.Request("POST", completions, json=chat).read()
                    call = client.open_stream(
                        "POST", completions, headers=[*headers, ("Content-Type", "application/json")], params={},
                        content=body, read_timeout=30, pool_timeout=30,
                    )  # fmt: skip
                    barrier.wait()
                    for _ in call.chunks():
                        pass
                    call.close()

                fill(stream, idle)
                return median_ms(lambda: open_and_read(models), args.samples)

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
