"""Proxy benchmark: the credential-injecting proxy against direct httpx calls to the same local upstream.

    PYTHONPATH=. python bench/proxy.py [--seconds 8] [--rounds 4] [--concurrency 40]
        [--postgres postgresql+psycopg://user@host/db] [--redis redis://host:6379/0]

The upstream is tests/support/stream_upstream.py (an OpenAI-shaped API that streams server-sent events) in a
process of its own. The app runs under gunicorn as deployed (app/gunicorn_conf.py: 2 gthread workers), on a
fresh database (SQLite, or a temporary PostgreSQL database with ``--postgres``) and, with ``--redis``, with its
rate-limit counters in Redis (production runs both), with an OpenAI account whose base URL is the upstream and a
token with ``accounts:proxy``.
Measured in this run, each against its own baseline:

1. **Throughput** (goal >= 0.8x): ``--concurrency`` callers each doing streaming chat completions (5 events
   20 ms apart, about 100 ms a call, like a short model answer) for ``--seconds`` each way, directly, through
   the bare relay (below) and through the proxy, in ``--rounds`` rounds in which the three take turns. Each
   caller has one kept-alive client per side, made and connected before the first round, and every round is
   timed from one start signal: a new httpx client costs tens of milliseconds of CPU (its TLS context), which
   the timed rounds would otherwise also measure. Printed with it: the CPU time the gunicorn serving each side
   (its master and workers) spent per call (``/proc``), the figure that says how many calls a core serves.
2. **Added median latency** (goal <= 2 ms): one caller, ``GET /v1/models`` (a small JSON answer), one call at a
   time, a direct, a relayed and a proxied call in turn: the proxy's median minus the direct median.
3. **Added time to first streamed byte**: one caller, a streaming completion whose first event is sent at once,
   in turn as in 2: the median time to the first ``data:`` line through the proxy minus the direct one.

Each figure is also measured through a **bare relay** (bench/bare_relay.py: one Flask route and one httpx client
under the same gunicorn configuration, and nothing else), printed in its own column: what the relay adds over a
direct call is what gunicorn, Flask and httpx cost by themselves on this machine at this moment (the floor of any
proxy on this stack); what the proxy adds over the relay is AMI Auth's own work (the token, the account, the
credential, the guard, the audit event, the hooks).

Each figure is measured against its baseline alternately, not one after the other: on a shared machine whose
speed drifts from one second to the next, a slow patch then falls on both sides rather than on whichever ran
during it.

Every proxied call is a service-token check (the token's row kept 1 s per process), a catalog check, the
account's row (kept 1 s per process), the key from the per-process cache and one audit event when it ends (a
hash-chained row, handed to the worker's audit writer thread, which commits the events of concurrent calls in one
transaction: ``app.audit_batch.append(..., wait=False)``): the numbers include all of it. The load generator
shares the machine's cores with gunicorn and the upstream, so absolute numbers are low on a small box; the
ratios are what compare. Prints a table, asserts nothing, stops every process it started by PID.

``--profile N`` measures instead what one call costs the app: N proxied ``GET /v1/models`` in this process
(Flask's test client; the upstream in its own process), printing CPU and wall milliseconds per call, the
database round trips per call (statements, transaction starts, commits, pool checkouts: each checkout pings),
and the top of a cProfile of the same calls. On a shared machine the round trips and the CPU time are the
figures to compare; wall times move with the load.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import io
import multiprocessing
import pstats
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any, Final

import httpx
from sqlalchemy import Engine, event

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python bench/proxy.py` from anywhere

from app import audit_batch, create_app
from app.api import tokens
from app.audit import AuditContext
from app.connectors import accounts
from app.extensions import get_cipher, get_database
from app.migrate import upgrade
from app.providers import configs
from app.providers.registry import entry
from app.providers.validation import validate_submission
from app.settings import load_settings
from app.vault import put_secret
from bench.gunicorn_server import gunicorn_process, process_cpu_seconds
from bench.headers import environment as headers_environment
from bench.headers import temporary_database
from tests.support.stream_upstream import running_upstream

_SORT = "cumulative"
KEY = "sk-proj-bench-" + "p" * 40
CHAT = {"model": "gpt-4o", "stream": True, "n_events": 5, "delay": 0.02}
FIRST_BYTE = {"model": "gpt-4o", "stream": True, "n_events": 1, "delay": 0.0}


def _serve_upstream(port_out: Queue[str], stop: EventType) -> None:
    with running_upstream() as upstream:
        upstream.add_key(KEY)
        port_out.put(upstream.url)
        stop.wait()


def environment(database_url: str, instance: Path) -> dict[str, str]:
    """The headers bench's settings (no API rate limit, quiet logs), with the local upstream allowed."""
    return {**headers_environment(database_url, instance), "AMI_AUTH_OUTBOUND_ALLOW": "127.0.0.1"}


def seed(env: dict[str, str], upstream_url: str) -> tuple[int, str]:
    """An active OpenAI account on the upstream and a service token with ``accounts:proxy``."""
    app = create_app(load_settings(env))
    settings = app.extensions["ami_settings"]
    ctx = AuditContext(actor="bench")
    with app.app_context():
        db = get_database(app).session()
        provider = entry("openai")
        clean, _ = validate_submission(provider, "config", {})
        cfg = configs.create_config(db, get_cipher(app), settings, ctx, provider, "OpenAI", clean, enabled=True)
        account_clean, _ = validate_submission(provider, "account", {"base_url": upstream_url}, secrets_set=["api_key"])
        account = accounts.create_account(db, ctx, cfg, "bench", account_clean)
        put_secret(db, get_cipher(app), "connected_account", account.id, "api_key", KEY, grace=None)
        account.status = "active"
        token = tokens.create_token(db, ctx, name="bench CMS", scopes=["accounts:proxy"], created_by=None).raw
        db.commit()
        account_id = account.id
    get_database(app).engine.dispose()
    return account_id, token


def _stream_call(client: httpx.Client, url: str, headers: dict[str, str], body: dict[str, object]) -> int:
    with client.stream("POST", url, json=body, headers=headers) as response:
        lines = sum(1 for line in response.iter_lines() if line.startswith("data: "))
    if response.status_code != 200:
        raise RuntimeError(f"{url} answered {response.status_code}")
    return lines


def throughput(side: _Side, seconds: float) -> tuple[int, float]:
    """Each of the side's callers doing streaming completions for ``seconds``, from one start signal: (calls
    done, seconds taken). The callers' clients are made and connected before (:class:`_Side`): making an httpx
    client (its TLS context) costs tens of milliseconds of CPU, which would otherwise fall inside the timed window."""
    done = [0] * len(side.clients)
    failures: list[str] = []
    start = threading.Barrier(len(side.clients) + 1)
    stop_at = [0.0]

    def caller(i: int) -> None:
        start.wait()
        while time.monotonic() < stop_at[0]:
            try:
                _stream_call(side.clients[i], side.url, side.headers, CHAT)
                done[i] += 1
            except (httpx.HTTPError, RuntimeError) as exc:
                failures.append(repr(exc))
                return

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(len(side.clients))]
    for thread in threads:
        thread.start()
    started = time.monotonic()
    stop_at[0] = started + seconds
    start.wait()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"{len(failures)} calls failed, e.g. {failures[0]}")
    return sum(done), time.monotonic() - started


@dataclass
class _Side:
    """One side of the throughput comparison: its URL, headers and one kept-alive client per caller."""

    url: str
    headers: dict[str, str]
    clients: list[httpx.Client]

    @classmethod
    def connected(cls, url: str, headers: dict[str, str], callers: int) -> _Side:
        clients = [httpx.Client(timeout=30) for _ in range(callers)]
        for client in clients:
            _stream_call(client, url, headers, CHAT)  # connected, and the path warmed
        return cls(url, headers, clients)

    def close(self) -> None:
        for client in self.clients:
            client.close()


def alternated_throughput(
    sides: dict[str, tuple[str, dict[str, str]]], args: argparse.Namespace, cpu_of: dict[str, int]
) -> dict[str, tuple[float, float]]:
    """Calls per second of each side (name: URL and headers), measured in ``args.rounds`` rounds in which the
    sides take turns, sharing ``args.seconds`` between them, so that a busy moment of a shared machine falls on
    every side alike; and for the sides named in ``cpu_of`` (name: the PID of the gunicorn that serves it), the
    CPU milliseconds that gunicorn and its workers spent per call."""
    connected = {name: _Side.connected(url, headers, args.concurrency) for name, (url, headers) in sides.items()}
    totals = {name: [0, 0.0, 0.0] for name in sides}  # calls, seconds, the server's CPU seconds
    try:
        for _ in range(args.rounds):
            for name, side in connected.items():
                cpu_before = _cpu(cpu_of.get(name))
                calls, seconds = throughput(side, args.seconds / args.rounds)
                totals[name][0] += calls
                totals[name][1] += seconds
                totals[name][2] += _cpu(cpu_of.get(name)) - cpu_before
    finally:
        for side in connected.values():
            side.close()
    return {
        name: (calls / seconds, cpu * 1000 / calls if calls else float("nan"))
        for name, (calls, seconds, cpu) in totals.items()
    }


def _cpu(pid: int | None) -> float:
    return (process_cpu_seconds(pid) or 0.0) if pid is not None else 0.0


def alternated_medians(samplers: dict[str, Callable[[], float]], count: int) -> dict[str, float]:
    """Median milliseconds of ``count`` samples of each sampler, taken one of each in turn (after 20 of each to
    warm connections and caches), so that all see the same moments of the machine."""
    for _ in range(20):
        for sample in samplers.values():
            sample()
    samples: dict[str, list[float]] = {name: [] for name in samplers}
    for _ in range(count):
        for name, sample in samplers.items():
            samples[name].append(sample())
    return {name: statistics.median(taken) for name, taken in samples.items()}


def call_ms(client: httpx.Client, url: str, headers: dict[str, str]) -> float:
    start = time.perf_counter()
    client.get(url, headers=headers).raise_for_status()
    return (time.perf_counter() - start) * 1000


def first_byte_ms(client: httpx.Client, url: str, headers: dict[str, str]) -> float:
    start = time.perf_counter()
    first: float | None = None
    with client.stream("POST", url, json=FIRST_BYTE, headers=headers) as response:
        for line in response.iter_lines():
            if first is None and line.startswith("data: "):
                first = (time.perf_counter() - start) * 1000
    if first is None:
        raise RuntimeError("no event")
    return first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=40)
    parser.add_argument(
        "--rounds", type=int, default=4, help="throughput rounds (direct, bare relay, proxy in turn) sharing --seconds"
    )
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--postgres", default="", help="a PostgreSQL server URL; a temporary database is made on it")
    parser.add_argument(
        "--redis", default="", help="a Redis URL, as production runs (the API's rate limit counts there)"
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="instead of the table: N proxied GET /v1/models calls in this process (Flask's test client, the "
        "upstream in its own process); prints CPU ms per call and the top of a cProfile of them",
    )
    args = parser.parse_args()

    queue: Queue[str] = multiprocessing.Queue()
    stop = multiprocessing.Event()
    upstream = multiprocessing.Process(target=_serve_upstream, args=(queue, stop), daemon=True)
    upstream.start()
    try:
        upstream_url = queue.get(timeout=20)
        with (
            tempfile.TemporaryDirectory(prefix="ami-bench-proxy-") as tmp,
            temporary_database(args.postgres, Path(tmp)) as database_url,
        ):
            upgrade(database_url)
            env = environment(database_url, Path(tmp))
            if args.redis:
                env |= {"AMI_AUTH_REDIS_URL": args.redis, "AMI_AUTH_REDIS_KEY_PREFIX": f"bench-{uuid.uuid4().hex[:8]}"}
            account_id, token = seed(env, upstream_url)
            if args.profile:
                profile(env, f"/api/account-manager/accounts/{account_id}/proxy/v1/models", token, args.profile)
                return
            relay_env = {"BENCH_UPSTREAM": upstream_url, "BENCH_KEY": KEY, "AMI_AUTH_LOG_LEVEL": "WARNING"}
            with (
                gunicorn_process("wsgi:app", env, workers=2, threads=256) as (base, server),
                gunicorn_process("bench.bare_relay:app", relay_env, workers=2, threads=256) as (relay, relay_server),
            ):
                key = {"Authorization": f"Bearer {KEY}"}
                sides = {
                    "direct": _Target(upstream_url, key, None),
                    "bare relay": _Target(f"{relay}/relay", {}, relay_server.pid),
                    "proxy": _Target(
                        f"{base}/api/account-manager/accounts/{account_id}/proxy",
                        {"Authorization": f"Bearer {token}"},
                        server.pid,
                    ),
                }
                rows = run(sides, args)
    finally:
        stop.set()
        upstream.join(timeout=10)
        if upstream.is_alive():
            upstream.kill()
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'direct':>10}  {'bare relay':>10}  {'proxy':>10}  result")
    for name, direct, relayed, proxied, result in rows:
        print(f"{name:<{width}}  {direct:>10}  {relayed:>10}  {proxied:>10}  {result}")


class _RoundTrips:
    """Counts what a call costs the database in round trips (a figure a busy machine does not blur): statements,
    transaction starts and commits, and pool checkouts (each pings the server: ``pool_pre_ping``)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.counts = {"statements": 0, "begins": 0, "commits": 0, "checkouts": 0}
        self._hooks: list[tuple[Any, str, Callable[..., None]]] = [
            (engine, "before_cursor_execute", self._count("statements")),
            (engine, "begin", self._count("begins")),
            (engine, "commit", self._count("commits")),
            (engine.pool, "checkout", self._count("checkouts")),
        ]
        for target, name, hook in self._hooks:
            event.listen(target, name, hook)

    def _count(self, name: str) -> Callable[..., None]:
        def hook(*_args: object, **_kwargs: object) -> None:
            self.counts[name] += 1

        return hook

    def stop(self) -> None:
        for target, name, hook in self._hooks:
            event.remove(target, name, hook)

    def summary(self, calls: int) -> str:
        total = sum(self.counts.values()) / calls
        return f"{total:.2f} (" + ", ".join(f"{n} {v / calls:.2f}" for n, v in self.counts.items()) + ")"


def profile(env: dict[str, str], path: str, token: str, count: int) -> None:
    """CPU time per proxied call in one process (the app's share only: the upstream runs elsewhere)."""
    app = create_app(load_settings(env))
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}

    def calls(n: int) -> None:
        for _ in range(n):
            response = client.get(path, headers=headers, buffered=True)  # closes the answer: its audit
            if response.status_code != 200:
                raise RuntimeError(f"the proxy answered {response.status_code}")
        audit_batch.flush(get_database(app).engine)  # the events' writing counts too

    calls(50)  # warm: connections, caches
    trips = _RoundTrips(get_database(app).engine)
    cpu, wall = time.process_time(), time.perf_counter()
    calls(count)
    cpu_ms = (time.process_time() - cpu) * 1000 / count
    wall_ms = (time.perf_counter() - wall) * 1000 / count
    trips.stop()
    profiler = cProfile.Profile()
    profiler.runcall(calls, count)
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats(_SORT).print_stats(45)
    print(out.getvalue())
    print(f"per proxied call: {cpu_ms:.3f} ms CPU, {wall_ms:.3f} ms wall ({count} calls, in process, no profiler)")
    print(
        f"database round trips per proxied call: {trips.summary(count)}; besides, the audit writer's two per batch"
        " on PostgreSQL (its pipelined statements go to the driver itself, past these counters)"
    )
    get_database(app).engine.dispose()


@dataclass(frozen=True)
class _Target:
    """Where one side's calls go: the base URL under which ``/v1/...`` is the upstream's API, the headers its
    callers send, and the PID of the gunicorn serving it (``None``: the upstream itself)."""

    base: str
    headers: dict[str, str]
    pid: int | None


def run(sides: dict[str, _Target], args: argparse.Namespace) -> list[tuple[str, str, str, str, str]]:
    chat = {name: f"{side.base}/v1/chat/completions" for name, side in sides.items()}
    with httpx.Client(timeout=30) as client:
        # Check every path answers the same before measuring.
        answers = {name: _stream_call(client, chat[name], side.headers, CHAT) for name, side in sides.items()}
        assert set(answers.values()) == {6}, answers
    rates = alternated_throughput(
        {name: (chat[name], side.headers) for name, side in sides.items()},
        args,
        {name: side.pid for name, side in sides.items() if side.pid is not None},
    )
    # One client per side, each on its own kept-alive connection, as a caller of either would have.
    clients = {name: httpx.Client(timeout=30) for name in sides}
    try:
        latency = alternated_medians(
            {
                name: functools.partial(call_ms, clients[name], f"{side.base}/v1/models", side.headers)
                for name, side in sides.items()
            },
            args.samples,
        )
        ttfb = alternated_medians(
            {
                name: functools.partial(first_byte_ms, clients[name], chat[name], side.headers)
                for name, side in sides.items()
            },
            args.samples // 3,
        )
    finally:
        for client in clients.values():
            client.close()
    (direct_rps, _), (relay_rps, relay_cpu), (proxy_rps, proxy_cpu) = (rates[n] for n in _ORDER)
    return [
        (
            f"streaming completions/s ({args.concurrency} callers)",
            f"{direct_rps:.1f}",
            f"{relay_rps:.1f}",
            f"{proxy_rps:.1f}",
            f"{proxy_rps / direct_rps:.2f}x direct · goal >= 0.8x (bare relay {relay_rps / direct_rps:.2f}x)",
        ),
        (
            "server CPU ms per streaming call",
            "",
            f"{relay_cpu:.2f}",
            f"{proxy_cpu:.2f}",
            f"gunicorn and its workers; AMI Auth's own work {proxy_cpu - relay_cpu:+.2f} ms",
        ),
        _added("GET /v1/models median ms (1 caller)", latency, "goal <= 2 ms"),
        _added("time to first streamed byte, median ms", ttfb, ""),
    ]


_ORDER: Final = ("direct", "bare relay", "proxy")


def _added(name: str, medians: dict[str, float], goal: str) -> tuple[str, str, str, str, str]:
    direct, relayed, proxied = (medians[n] for n in _ORDER)
    return (
        name,
        f"{direct:.2f}",
        f"{relayed:.2f}",
        f"{proxied:.2f}",
        f"+{proxied - direct:.2f} ms added{' · ' + goal if goal else ''}"
        f" (bare relay +{relayed - direct:.2f}; AMI Auth's own work {proxied - relayed:+.2f})",
    )


if __name__ == "__main__":
    main()
