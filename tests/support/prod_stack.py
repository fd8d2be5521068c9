"""The production shape as one test peer: what docs/deployment.md tells an operator to run, on 127.0.0.1.

``production_stack(directory)`` starts, in this order, and stops in reverse (every process by its PID):

* a throw-away CA and a certificate for ``localhost`` / ``127.0.0.1`` (``cryptography``, shared with the SMTP
  server); :attr:`ProductionStack.spki` is its key's SPKI hash, which Chromium is told to trust
  (:attr:`ProductionStack.chromium_args`, ``--ignore-certificate-errors-spki-list``);
* aiosmtpd with STARTTLS and AUTH required (``tests/support/smtp.py``), the app's ``AMI_AUTH_SMTP_URL``;
* a PostgreSQL database of its own (``ami_e2e_…``, dropped at the end) migrated with ``ami-auth db upgrade``,
  and a Redis key prefix of its own (``ami-e2e-…``, its keys deleted at the end);
* ``ami-auth bootstrap`` in the stack's environment: the first-admin link it prints is :attr:`setup_link`;
* two app "hosts" (``hosts=2``, the default): two gunicorn masters (2 workers each, ``wsgi:app``, the
  settings of ``app/gunicorn_conf.py``), each with its own in-app scheduler and its own metrics directory, on
  127.0.0.1, ``AMI_AUTH_ENV=production``; both write JSON log lines to :attr:`log_file` (:meth:`app_log`),
  which the production conftest attaches to every failing test. :attr:`ProductionStack.hosts` lets a test stop,
  restart or reconfigure one of them;
* Debian's nginx, unprivileged from ``directory``, terminating TLS with three server blocks:

  - :attr:`url` (``https://localhost:PORT``, the ``AMI_AUTH_BASE_URL``): **the upstream and server block of
    docs/deployment.md**, read from the document with only names, ports and paths replaced (round robin over
    the hosts), so the example operators copy is the one this suite runs;
  - :meth:`cms_url` — the CMS: a second port proxied to :attr:`cms_backend_port`, where a test starts
    ``tests/support/cms_standin.py``. ``cms_url("localhost")`` is the same *site* as AMI Auth (the session
    cookie reaches a framed dialog), ``cms_url("127.0.0.1")`` another site (it does not);
  - :attr:`foreign_url` — a foreign origin on the same site, serving the files a test writes into
    :attr:`foreign_dir` (the page of an attacker who shares the registrable domain).

Everything is configured the way production is: keys, https base URL, ``AMI_AUTH_TRUSTED_PROXIES=1``, the
CMS origins, ``AMI_AUTH_OUTBOUND_ALLOW=127.0.0.1`` (the production guard refuses loopback peers otherwise),
a metrics token (:attr:`ProductionStack.metrics_token`) and the in-app scheduler left on (the production
default; every :data:`SCHEDULER_INTERVAL` seconds, so a test need not wait a minute for it). Default argon2
parameters, not the cheap ones.

For seeding through the logic layer (users, provider configs, service tokens) :meth:`ProductionStack.app`
is the same app built in the test process from the same environment, on the same database and Redis.
"""

from __future__ import annotations

import base64
import grp
import hashlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from flask import Flask

from app import create_app
from app.providers import registry
from app.settings import load_settings
from tests.conftest import PostgresDatabase, dispose_app, postgres_admin_url, redis_url, require_peer
from tests.support.live import free_port
from tests.support.smtp import SmtpServer, TlsFiles, make_tls_files, run_smtp_server

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENT_DOC = ROOT / "docs" / "deployment.md"
NGINX = os.environ.get("AMI_AUTH_TEST_NGINX", "/usr/sbin/nginx")
VENV_BIN = Path(sys.executable).parent
WORKERS = 2
HOSTS = 2
SCHEDULER_INTERVAL = "3"
START_TIMEOUT = 90.0  # generous: CI's two cores are busy with the other worker's tests too
STOP_TIMEOUT = 10.0

# What docs/deployment.md's nginx example names, and what the stack puts in its place. Each must occur exactly
# once in the example: an edit of the document that the stack can no longer follow fails loudly here.
DOC_HOST = "auth.example.com"
DOC_LISTEN = "listen 443 ssl;"
DOC_CERT = "/etc/ssl/auth.example.com/fullchain.pem"
DOC_KEY = "/etc/ssl/auth.example.com/privkey.pem"
DOC_SERVERS = ("server 10.0.0.11:8000", "server 10.0.0.12:8000")


def nginx_missing() -> str | None:
    """Why nginx cannot run here, or ``None``."""
    if not Path(NGINX).exists() and shutil.which("nginx") is None:
        return f"nginx not found at {NGINX} (apt-get install nginx): production-shaped tests skipped"
    return None


def spki_hash(cert_file: Path) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) — what ``--ignore-certificate-errors-spki-list`` takes."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    der = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def documented_server_block() -> str:
    """The ``nginx`` code block of docs/deployment.md (the AMI Auth server block operators copy)."""
    match = re.search(r"```nginx\n(.*?)```", DEPLOYMENT_DOC.read_text(), re.S)
    assert match, f"{DEPLOYMENT_DOC}: no ```nginx block"
    return match.group(1)


def _substitute(text: str, replacements: Mapping[str, str]) -> str:
    for old, new in replacements.items():
        count = text.count(old)
        assert count == 1, f"docs/deployment.md's nginx example has {old!r} {count} times, the stack expects once"
        text = text.replace(old, new)
    return text


# --- processes ---------------------------------------------------------------------------------------------


def _stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stop one process we started, by its PID; kill it if it does not stop in time."""
    if process.poll() is not None:
        return
    os.kill(process.pid, sig)
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT)


class Gunicorn:
    """``gunicorn -c python:app.gunicorn_conf --workers 2 --bind 127.0.0.1:PORT wsgi:app`` — one app host, as
    docs/deployment.md runs it behind the proxy."""

    def __init__(self, port: int, env: Mapping[str, str], log_file: Path, cwd: Path, name: str = "host-a") -> None:
        self.port = port
        self.env = dict(env)
        self.log_file = log_file
        self.cwd = cwd
        self.name = name
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """This host's gunicorn itself, plain HTTP, without the proxy."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gunicorn",
                    "-c",
                    "python:app.gunicorn_conf",
                    "--workers",
                    str(WORKERS),
                    "--bind",
                    f"127.0.0.1:{self.port}",
                    "--forwarded-allow-ips",
                    "127.0.0.1",
                    "--graceful-timeout",
                    "5",
                    "--chdir",
                    str(ROOT),
                    "wsgi:app",
                ],
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    def wait_ready(self, deadline: float) -> None:
        assert self.process is not None
        with httpx.Client(timeout=2, trust_env=False) as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"gunicorn exited with {self.process.returncode}:\n{self.log_tail()}")
                try:
                    if client.get(f"{self.url}/healthz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"gunicorn did not answer within {START_TIMEOUT}s:\n{self.log_tail()}")
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)  # SIGTERM to the master: it stops its workers gracefully

    def restart(self, **env: str) -> None:
        """Stop gracefully, then start again with ``env`` changed (a deploy, a new key ring); wait until ready."""
        self.stop()
        self.env.update(env)
        self.start()
        self.wait_ready(time.monotonic() + START_TIMEOUT)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def worker_pids(self) -> set[int]:
        """The master's children (its workers) right now, from /proc."""
        assert self.process is not None
        children: set[int] = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == self.process.pid:
                children.add(int(stat.parent.name))
        return children

    def log_tail(self, size: int = 6000) -> str:
        return self.log_file.read_text(errors="replace")[-size:]


class Nginx:
    """nginx run from a directory of its own: config, pid file, logs and temp paths all inside it."""

    def __init__(self, directory: Path, config: str) -> None:
        self.directory = directory
        self.config = config
        self.pid_file = directory / "nginx.pid"
        self.error_log = directory / "error.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, ports: list[int], deadline: float) -> None:
        conf = self.directory / "nginx.conf"
        conf.write_text(self.config)
        binary = NGINX if Path(NGINX).exists() else shutil.which("nginx")
        assert binary is not None
        command = [binary, "-c", str(conf), "-p", str(self.directory), "-e", str(self.error_log)]
        check = subprocess.run([*command, "-t"], capture_output=True, text=True, check=False)
        if check.returncode != 0:
            raise RuntimeError(f"nginx refused its configuration:\n{check.stderr}\n{self.config}")
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not (self.pid_file.exists() and all(_listening(port) for port in ports)):
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.process.returncode}:\n{self.error_log_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not listen within {START_TIMEOUT}s:\n{self.error_log_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is None:
            return
        # The master's PID, from its pid file (the same process we started: `daemon off`).
        pid = int(self.pid_file.read_text().strip()) if self.pid_file.exists() else self.process.pid
        assert pid == self.process.pid, f"nginx pid file names {pid}, we started {self.process.pid}"
        _stop(self.process, signal.SIGQUIT)  # graceful: finish the open requests, then exit

    def error_log_text(self) -> str:
        return self.error_log.read_text(errors="replace")[-4000:] if self.error_log.exists() else ""


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def nginx_config(
    directory: Path,
    tls: TlsFiles,
    *,
    app_port: int,
    upstream_ports: list[int],
    cms_port: int,
    cms_backend_port: int,
    foreign_port: int,
    foreign_dir: Path,
) -> str:
    """The whole nginx.conf: a main context fit to run unprivileged, the documented upstream over
    ``upstream_ports`` (a documented server line without a host is commented out) and the three server blocks."""
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (directory / name).mkdir(exist_ok=True)
    assert 1 <= len(upstream_ports) <= len(DOC_SERVERS), f"the documented upstream has {len(DOC_SERVERS)} hosts"
    servers = {
        line: f"server 127.0.0.1:{port}" if port is not None else f"# (no host) {line}"
        for line, port in zip(DOC_SERVERS, [*upstream_ports, None], strict=False)
    }
    documented = _substitute(
        documented_server_block(),
        {
            DOC_LISTEN: f"listen 127.0.0.1:{app_port} ssl;",
            f"server_name {DOC_HOST};": "server_name localhost 127.0.0.1;",
            DOC_CERT: str(tls.cert_file),
            DOC_KEY: str(tls.key_file),
            **servers,
        },
    )
    tls_lines = f"ssl_certificate {tls.cert_file};\n    ssl_certificate_key {tls.key_file};"
    # `user` matters only when the master runs as root (CI): the workers then read the temp-dir files as us.
    return f"""
user {user} {group};
worker_processes 1;
daemon off;
pid {directory / "nginx.pid"};
error_log {directory / "error.log"} warn;
events {{ worker_connections 256; }}
http {{
  access_log {directory / "access.log"};
  client_body_temp_path {directory / "client_body"};
  proxy_temp_path {directory / "proxy"};
  fastcgi_temp_path {directory / "fastcgi"};
  uwsgi_temp_path {directory / "uwsgi"};
  scgi_temp_path {directory / "scgi"};

  # AMI Auth: docs/deployment.md's example (upstream and server block).
{documented}
  # The CMS stand-in (tests/support/cms_standin.py) on its own port: a second origin.
  server {{
    listen 127.0.0.1:{cms_port} ssl;
    server_name localhost 127.0.0.1;
    {tls_lines}
    location / {{
      proxy_pass http://127.0.0.1:{cms_backend_port};
      proxy_set_header Host $host:$server_port;
      proxy_set_header X-Forwarded-Proto https;
    }}
  }}

  # A foreign origin on the same site: static files a test writes.
  server {{
    listen 127.0.0.1:{foreign_port} ssl;
    server_name localhost;
    {tls_lines}
    root {foreign_dir};
    default_type text/html;
  }}
}}
"""


# --- the stack ---------------------------------------------------------------------------------------------


@dataclass
class ProductionStack:
    directory: Path
    tls: TlsFiles
    env: dict[str, str]
    smtp: SmtpServer
    hosts: list[Gunicorn]
    nginx: Nginx
    app_port: int
    cms_port: int
    cms_backend_port: int
    foreign_port: int
    database: PostgresDatabase
    setup_link: str = ""
    _app: Flask | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """``https://localhost:PORT``: AMI Auth through nginx, exactly ``AMI_AUTH_BASE_URL``."""
        return f"https://localhost:{self.app_port}"

    @property
    def gunicorn(self) -> Gunicorn:
        """The first host."""
        return self.hosts[0]

    @property
    def upstream_url(self) -> str:
        """The first host's gunicorn, plain HTTP, without the proxy (what only the proxy should reach)."""
        return self.gunicorn.url

    @property
    def metrics_token(self) -> str:
        return self.env["AMI_AUTH_METRICS_TOKEN"]

    def cms_url(self, host: str = "localhost") -> str:
        """The CMS origin: ``localhost`` shares AMI Auth's site, ``127.0.0.1`` is another site."""
        return f"https://{host}:{self.cms_port}"

    @property
    def foreign_url(self) -> str:
        return f"https://localhost:{self.foreign_port}"

    @property
    def foreign_dir(self) -> Path:
        return self.directory / "foreign"

    @property
    def spki(self) -> str:
        return spki_hash(self.tls.cert_file)

    @property
    def chromium_args(self) -> list[str]:
        """Chromium trusts exactly this stack's certificate key, nothing else (TESTING.md §6)."""
        return [f"--ignore-certificate-errors-spki-list={self.spki}"]

    @property
    def log_file(self) -> Path:
        return self.gunicorn.log_file

    def app_log(self, since: int = 0) -> str:
        """What every host's gunicorn and app wrote (stderr and stdout, one file), from byte offset ``since``."""
        with self.log_file.open("rb") as log:
            log.seek(since)
            return log.read().decode(errors="replace")

    def log_offset(self) -> int:
        return self.log_file.stat().st_size

    def ssl_context(self) -> ssl.SSLContext:
        """For HTTP clients in the test process: trusts the stack's CA only."""
        return ssl.create_default_context(cafile=str(self.tls.ca_file))

    def http(self) -> httpx.Client:
        """An HTTP client for :attr:`url`: TLS checked against the test CA, no redirects followed, a cookie jar."""
        return httpx.Client(base_url=self.url, verify=self.ssl_context(), trust_env=False, timeout=15)

    def scrape(self, host: Gunicorn) -> str:
        """``GET /metrics`` of one host's gunicorn (what Prometheus scrapes: each host, all its workers), with the
        metrics token."""
        response = httpx.get(
            host.url + "/metrics",
            headers={"Authorization": f"Bearer {self.metrics_token}"},
            trust_env=False,
            timeout=15,
        )
        assert response.status_code == 200, response.text
        return response.text

    def cli(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """``ami-auth ARGS`` in the stack's environment, as an operator on the host runs it."""
        return subprocess.run(
            [str(VENV_BIN / "ami-auth"), *args],
            env=self.process_env(),
            cwd=self.directory,
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def process_env(self) -> dict[str, str]:
        """The host's environment without any AMI_AUTH_* of the test run, plus the stack's settings."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("AMI_AUTH_")}
        return {**base, **self.env}

    @property
    def app(self) -> Flask:
        """The app, built in the test process from the stack's environment (seeding through the logic layer)."""
        if self._app is None:
            self._app = create_app(load_settings(self.env))
            # create_app made this app's catalog (with the operator's folder, AMI_AUTH_CATALOG_DIR) the one
            # get_catalog() returns outside an app context, for the rest of the test process. The app reads its own
            # from app.extensions; every other test in this process expects the shipped catalog there.
            registry.activate(())
        return self._app

    def close_app(self) -> None:
        if self._app is not None:
            dispose_app(self._app)
            storage = self._app.extensions["ami_limits"]
            storage.storage.close()
            self._app = None


def metric_value(scraped: str, name: str, **labels: str) -> float:
    """The value of one series in a scrape, 0 when it is absent."""
    wanted = sorted(f'{k}="{v}"' for k, v in labels.items())
    for line in scraped.splitlines():
        if line.startswith(name + "{"):
            series, value = line.rsplit(" ", 1)
            if sorted(series[len(name) + 1 : -1].split(",")) == wanted:
                return float(value)
    return 0.0


def _clean_redis(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@contextmanager
def production_stack(directory: Path, *, hosts: int = HOSTS, **extra_env: str) -> Iterator[ProductionStack]:
    """Start the whole stack under ``directory`` with ``hosts`` app hosts; ``extra_env`` adds or overrides
    AMI_AUTH_* settings."""
    reason = nginx_missing()
    if reason is not None:
        require_peer(reason)
    pg_url, redis_base = postgres_admin_url(), redis_url()
    app_port, cms_port, cms_backend_port, foreign_port = (free_port() for _ in range(4))
    upstream_ports = [free_port() for _ in range(hosts)]
    tls = make_tls_files(directory / "tls")
    (directory / "foreign").mkdir()
    (directory / "instance").mkdir()
    database = PostgresDatabase(pg_url)
    prefix = f"ami-e2e-{uuid.uuid4().hex[:12]}"

    with ExitStack() as cleanup:
        smtp = cleanup.enter_context(run_smtp_server(tls))
        env = {
            "AMI_AUTH_ENV": "production",
            "AMI_AUTH_BASE_URL": f"https://localhost:{app_port}",
            "AMI_AUTH_INSTANCE_DIR": str(directory / "instance"),
            "AMI_AUTH_DATABASE_URL": database.url,
            "AMI_AUTH_REDIS_URL": redis_base,
            "AMI_AUTH_REDIS_KEY_PREFIX": prefix,
            "AMI_AUTH_SECRET_KEY": secrets.token_urlsafe(48),
            "AMI_AUTH_MASTER_KEYS": "prod1:" + base64.b64encode(secrets.token_bytes(32)).decode(),
            "AMI_AUTH_TRUSTED_PROXIES": "1",
            "AMI_AUTH_CMS_ORIGINS": f"https://localhost:{cms_port},https://127.0.0.1:{cms_port}",
            "AMI_AUTH_OUTBOUND_ALLOW": "127.0.0.1",
            "AMI_AUTH_SMTP_URL": smtp.url(),
            "AMI_AUTH_SMTP_CA_FILE": str(tls.ca_file),
            "AMI_AUTH_MAIL_FROM": "AMI Auth <no-reply@example.com>",
            "AMI_AUTH_METRICS_TOKEN": secrets.token_urlsafe(32),
            "AMI_AUTH_SCHEDULER_INTERVAL": SCHEDULER_INTERVAL,
            **extra_env,
        }
        log_file = directory / "gunicorn.log"
        app_hosts = [
            Gunicorn(port, {}, log_file, directory, name=f"host-{chr(ord('a') + i)}")
            for i, port in enumerate(upstream_ports)
        ]
        nginx = Nginx(
            directory,
            nginx_config(
                directory,
                tls,
                app_port=app_port,
                upstream_ports=upstream_ports,
                cms_port=cms_port,
                cms_backend_port=cms_backend_port,
                foreign_port=foreign_port,
                foreign_dir=directory / "foreign",
            ),
        )
        stack = ProductionStack(
            directory, tls, env, smtp, app_hosts, nginx, app_port, cms_port, cms_backend_port, foreign_port, database
        )
        for host in app_hosts:
            # gunicorn ≥ 25 opens a control socket under $XDG_RUNTIME_DIR: one per host, not one per machine.
            (directory / host.name).mkdir(mode=0o700)
            host.env = {**stack.process_env(), "XDG_RUNTIME_DIR": str(directory / host.name)}
        log_file.touch()

        database.create(migrate=False)
        cleanup.callback(database.drop)
        cleanup.callback(_clean_redis, redis_base, prefix)
        migrated = stack.cli("db", "upgrade")
        assert migrated.returncode == 0, f"ami-auth db upgrade failed:\n{migrated.stdout}{migrated.stderr}"

        # gunicorn boots (its workers refuse an unmigrated database) while bootstrap issues the setup link.
        deadline = time.monotonic() + START_TIMEOUT
        for host in app_hosts:
            host.start()
            cleanup.callback(host.stop)
        boot = stack.cli("bootstrap")
        assert boot.returncode == 0, f"ami-auth bootstrap failed:\n{boot.stdout}{boot.stderr}"
        link = re.search(r"https://\S+/setup/\S+", boot.stdout)
        assert link, f"ami-auth bootstrap printed no setup link:\n{boot.stdout}"
        stack.setup_link = link.group(0)
        for host in app_hosts:
            host.wait_ready(deadline)

        nginx.start([app_port, cms_port, foreign_port], deadline)
        cleanup.callback(nginx.stop)
        cleanup.callback(stack.close_app)
        yield stack
