"""Typed settings read from ``AMI_AUTH_*`` environment variables (and an optional ``.env``).

Every variable is documented in ``docs/configuration.md`` and ``.env.example``. Validation happens once,
at start-up, and each bad value raises :class:`SettingsError` with one line naming the variable.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

Env = Literal["development", "test", "production"]
SignupMode = Literal["open", "invite", "closed"]

PREFIX = "AMI_AUTH_"


class SettingsError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""

    def __init__(self, variable: str, problem: str) -> None:
        self.variable = variable
        self.problem = problem
        super().__init__(f"{variable}: {problem}")


@dataclass(frozen=True)
class MasterKey:
    kid: str
    key: bytes = field(repr=False)

    def __repr__(self) -> str:  # never print key material
        return f"MasterKey(kid={self.kid!r}, key=**********)"


@dataclass(frozen=True)
class Settings:
    env: Env = "development"
    instance_dir: Path = Path("instance")
    database_url: str = ""
    secret_key: str = field(default="", repr=False)
    master_keys: tuple[MasterKey, ...] = ()
    redis_url: str | None = None
    redis_key_prefix: str = "ami-auth"
    base_url: str = "http://127.0.0.1:5000"
    cms_origins: tuple[str, ...] = ()
    outbound_allow: tuple[str, ...] = ()
    outbound_timeout: float = 10.0
    outbound_retries: int = 2
    outbound_pool_size: int = 512
    proxy_read_timeout: float = 120.0
    proxy_pool_timeout: float = 5.0
    proxy_max_request_bytes: int = 10 * 1024 * 1024
    proxy_max_response_bytes: int = 100 * 1024 * 1024
    bootstrap_admin_email: str | None = None
    bootstrap_admin_password: str | None = field(default=None, repr=False)
    log_level: str = "INFO"
    # First-party credentials
    argon2_memory_kib: int = 19456
    argon2_time_cost: int = 2
    argon2_parallelism: int = 1
    password_min_length: int = 12
    signup: SignupMode = "invite"
    session_idle_minutes: int = 30
    session_max_hours: int = 12
    mfa_required_roles: tuple[str, ...] = ("admin",)
    # Sign-in by a one-time code mailed to a verified address (app.auth.email_codes); off unless turned on.
    email_code_signin: bool = False
    # "Trust this browser" after a second factor: for this many days it is not asked there (0: not offered).
    trusted_browser_days: int = 30
    # A mail to the user when a sign-in completes in a browser their account has not used before.
    new_device_alerts: bool = True
    # Branding: the product name, logo (an .svg or .png file) and accent colour the pages and mails use.
    brand_name: str = "AMI Auth"
    brand_logo: Path | None = None
    brand_accent: str | None = None
    smtp_url: str | None = field(default=None, repr=False)
    smtp_ca_file: Path | None = None
    mail_from: str = "AMI Auth <no-reply@localhost>"
    pwned_range_url: str | None = None
    throttle_ip_per_minute: int = 30
    throttle_account_failures: int = 5
    throttle_lock_seconds: int = 60
    throttle_lock_max_seconds: int = 3600
    # Provider secrets and tokens
    secret_grace_days: int = 7
    token_refresh_margin_minutes: int = 10
    scheduler: bool = True
    device_poll_interval: float | None = None
    secret_rotation_days: int = 90
    # A folder of further provider catalog entries (one YAML file per type), loaded beside the shipped ones.
    catalog_dir: Path | None = None
    # JSON API
    # Reverse proxies in front of the app that append to X-Forwarded-For / set X-Forwarded-Proto (0: none,
    # the socket's peer is the client).
    trusted_proxies: int = 0
    api_rate_per_minute: int = 600
    api_ip_rate_per_minute: int = 120
    # Operations: who may read /metrics (a bearer token, or client addresses), how often the in-app scheduler runs
    metrics_token: str | None = field(default=None, repr=False)
    metrics_allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    scheduler_interval: float = 60.0
    # Webhook events whose deliveries are all finished (delivered or given up) are deleted after this many days.
    webhook_retention_days: int = 30

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    @property
    def is_https(self) -> bool:
        return urlsplit(self.base_url).scheme == "https"

    @property
    def active_key(self) -> MasterKey:
        return self.master_keys[0]


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
    raw = env.get(PREFIX + name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(PREFIX + name, f"must be a whole number, got {raw!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise SettingsError(PREFIX + name, f"must be {bound}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float | None) -> float | None:
    raw = env.get(PREFIX + name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(PREFIX + name, f"must be a number, got {raw!r}") from None
    if value <= 0:
        raise SettingsError(PREFIX + name, f"must be greater than 0, got {raw}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(PREFIX + name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(PREFIX + name, f"must be true or false, got {raw!r}")


def _list(env: Mapping[str, str], name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
    raw = env.get(PREFIX + name)
    if raw is None:
        return default
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def parse_master_keys(raw: str, variable: str = PREFIX + "MASTER_KEYS") -> tuple[MasterKey, ...]:
    """Parse ``kid1:<base64 32 bytes>,kid2:…``; the first key encrypts, all keys decrypt."""
    keys: list[MasterKey] = []
    seen: set[str] = set()
    for position, item in enumerate((p.strip() for p in raw.split(",") if p.strip()), start=1):
        kid, sep, b64 = item.partition(":")
        kid = kid.strip()
        if not sep or not kid:
            raise SettingsError(variable, f"entry {position} must look like 'kid:<base64 of 32 bytes>'")
        if not kid.replace("-", "").replace("_", "").isalnum() or len(kid) > 32:
            raise SettingsError(variable, f"key id {kid!r} must be 1-32 letters, digits, '-' or '_'")
        if kid in seen:
            raise SettingsError(variable, f"key id {kid!r} appears twice")
        try:
            key = base64.b64decode(b64.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise SettingsError(variable, f"key {kid!r} is not valid base64") from None
        if len(key) != 32:
            raise SettingsError(variable, f"key {kid!r} must decode to 32 bytes, got {len(key)}")
        seen.add(kid)
        keys.append(MasterKey(kid, key))
    if not keys:
        raise SettingsError(variable, "no key given; expected 'kid:<base64 of 32 bytes>'")
    return tuple(keys)


def format_master_keys(keys: tuple[MasterKey, ...]) -> str:
    return ",".join(f"{k.kid}:{base64.b64encode(k.key).decode()}" for k in keys)


def new_master_key(kid: str) -> MasterKey:
    return MasterKey(kid, secrets.token_bytes(32))


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) for the owner only: 0700 whatever the umask (an existing
    directory is left as its owner set it)."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    for created in missing:
        os.chmod(created, 0o700)  # mkdir's mode is filtered by the umask; chmod is not


def _write_private(path: Path, content: str) -> None:
    make_private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w") as fh:
        fh.write(content)
    os.chmod(path, 0o600)


def dev_key_file(instance_dir: Path) -> Path:
    return instance_dir / "master_keys"


def _dev_secret(instance_dir: Path, name: str, make: str) -> str:
    """Development only: keep a generated value in ``instance/<name>`` (mode 0600)."""
    path = instance_dir / name
    if path.exists():
        return path.read_text().strip()
    _write_private(path, make + "\n")
    return make


def save_dev_master_keys(instance_dir: Path, keys: tuple[MasterKey, ...]) -> None:
    _write_private(dev_key_file(instance_dir), format_master_keys(keys) + "\n")


def _check_url_origin(variable: str, origin: str) -> str:
    parts = urlsplit(origin)
    if parts.scheme not in {"http", "https"} or not parts.netloc or parts.path not in {"", "/"}:
        raise SettingsError(variable, f"{origin!r} must be an origin like https://cms.example.com")
    return f"{parts.scheme}://{parts.netloc}"


def _check_allow(variable: str, entry: str) -> str:
    try:
        ipaddress.ip_network(entry, strict=False)
    except ValueError:
        if not entry or any(c in entry for c in "/:@ "):
            raise SettingsError(variable, f"{entry!r} is neither an IP, a CIDR range nor a host name") from None
    return entry


def _check_smtp_url(url: str) -> None:
    """Reject a mail URL that would send credentials or mail in the clear to another machine."""
    variable = PREFIX + "SMTP_URL"
    parts = urlsplit(url)
    if parts.scheme not in {"smtp", "smtp+starttls", "smtps"}:
        raise SettingsError(variable, "must start with smtp:// (local relay only), smtp+starttls:// or smtps://")
    try:
        host, _port = parts.hostname, parts.port
    except ValueError:
        raise SettingsError(variable, "has an invalid port") from None
    if not host:
        raise SettingsError(variable, "needs a host, e.g. smtp+starttls://user:pass@smtp.example.com:587")
    if parts.scheme == "smtp" and host not in {"127.0.0.1", "::1", "localhost"}:
        raise SettingsError(
            variable, "smtp:// (no TLS) is only for a relay on 127.0.0.1; use smtp+starttls:// or smtps://"
        )


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate settings; raise :class:`SettingsError` naming the first bad variable."""
    if env is None:
        env = os.environ
    mode = env.get(PREFIX + "ENV", "development").strip() or "development"
    if mode not in ("development", "test", "production"):
        raise SettingsError(PREFIX + "ENV", f"must be development, test or production, got {mode!r}")
    production = mode == "production"
    instance_dir = Path(env.get(PREFIX + "INSTANCE_DIR", "instance")).resolve()

    database_url = env.get(PREFIX + "DATABASE_URL", "").strip()
    if not database_url:
        if production:
            raise SettingsError(PREFIX + "DATABASE_URL", "is required in production (postgresql+psycopg://…)")
        database_url = f"sqlite:///{instance_dir / 'ami-auth.db'}"
    scheme = database_url.split(":", 1)[0]
    if not (scheme.startswith("sqlite") or scheme.startswith("postgresql")):
        raise SettingsError(
            PREFIX + "DATABASE_URL", f"must be a sqlite:/// or postgresql+psycopg:// URL, got {scheme!r}"
        )

    secret_key = env.get(PREFIX + "SECRET_KEY", "").strip()
    if not secret_key:
        if production:
            raise SettingsError(PREFIX + "SECRET_KEY", "is required in production (at least 32 random characters)")
        secret_key = _dev_secret(instance_dir, "secret_key", secrets.token_urlsafe(48))
    elif len(secret_key) < 32:
        raise SettingsError(PREFIX + "SECRET_KEY", f"must be at least 32 characters, got {len(secret_key)}")

    raw_keys = env.get(PREFIX + "MASTER_KEYS", "").strip()
    if raw_keys:
        master_keys = parse_master_keys(raw_keys)
    elif production:
        raise SettingsError(PREFIX + "MASTER_KEYS", "is required in production ('kid:<base64 of 32 bytes>,…')")
    else:
        path = dev_key_file(instance_dir)
        if path.exists():
            master_keys = parse_master_keys(path.read_text().strip(), variable=str(path))
        else:
            master_keys = (new_master_key("dev1"),)
            save_dev_master_keys(instance_dir, master_keys)

    base_url = env.get(PREFIX + "BASE_URL", "http://127.0.0.1:5000").strip().rstrip("/")
    parts = urlsplit(base_url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise SettingsError(PREFIX + "BASE_URL", f"must be an absolute http(s) URL, got {base_url!r}")
    if production and parts.scheme != "https":
        raise SettingsError(PREFIX + "BASE_URL", f"must use https in production, got {base_url!r}")

    redis_url = env.get(PREFIX + "REDIS_URL", "").strip() or None
    if redis_url and urlsplit(redis_url).scheme not in {"redis", "rediss", "unix"}:
        raise SettingsError(PREFIX + "REDIS_URL", f"must be a redis:// or rediss:// URL, got {redis_url!r}")

    redis_key_prefix = env.get(PREFIX + "REDIS_KEY_PREFIX", "ami-auth").strip()
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", redis_key_prefix):
        raise SettingsError(
            PREFIX + "REDIS_KEY_PREFIX", f"must be 1-64 letters, digits or '_.:-', got {redis_key_prefix!r}"
        )

    lock_seconds = _int(env, "THROTTLE_LOCK_SECONDS", 60, 1, 86400)
    lock_max_seconds = _int(env, "THROTTLE_LOCK_MAX_SECONDS", 3600, 1, 7 * 86400)
    if lock_max_seconds < lock_seconds:
        raise SettingsError(
            PREFIX + "THROTTLE_LOCK_MAX_SECONDS",
            f"must be at least AMI_AUTH_THROTTLE_LOCK_SECONDS ({lock_seconds}), got {lock_max_seconds}",
        )

    signup = env.get(PREFIX + "SIGNUP", "invite").strip()
    if signup not in ("open", "invite", "closed"):
        raise SettingsError(PREFIX + "SIGNUP", f"must be open, invite or closed, got {signup!r}")

    smtp_url = env.get(PREFIX + "SMTP_URL", "").strip() or None
    if smtp_url:
        _check_smtp_url(smtp_url)
    smtp_ca_raw = env.get(PREFIX + "SMTP_CA_FILE", "").strip()
    smtp_ca_file = Path(smtp_ca_raw).resolve() if smtp_ca_raw else None
    if smtp_ca_file is not None and not smtp_ca_file.is_file():
        raise SettingsError(PREFIX + "SMTP_CA_FILE", f"{smtp_ca_raw!r} is not a readable file (PEM CA bundle)")

    catalog_raw = env.get(PREFIX + "CATALOG_DIR", "").strip()
    catalog_dir = Path(catalog_raw).resolve() if catalog_raw else None
    if catalog_dir is not None and not catalog_dir.is_dir():
        raise SettingsError(PREFIX + "CATALOG_DIR", f"{catalog_raw!r} is not a folder of catalog entries")

    brand_name = env.get(PREFIX + "BRAND_NAME", "").strip() or "AMI Auth"
    if len(brand_name) > 60 or any(ch in brand_name for ch in "<>\r\n"):
        raise SettingsError(PREFIX + "BRAND_NAME", "must be at most 60 characters, without < > or line breaks")
    logo_raw = env.get(PREFIX + "BRAND_LOGO", "").strip()
    brand_logo = Path(logo_raw).resolve() if logo_raw else None
    if brand_logo is not None and (not brand_logo.is_file() or brand_logo.suffix.lower() not in {".svg", ".png"}):
        raise SettingsError(PREFIX + "BRAND_LOGO", f"{logo_raw!r} is not an .svg or .png file")
    brand_accent = env.get(PREFIX + "BRAND_ACCENT", "").strip() or None
    if brand_accent is not None and not re.fullmatch(r"#[0-9a-fA-F]{6}", brand_accent):
        raise SettingsError(PREFIX + "BRAND_ACCENT", f"must be a colour like #2f5bea, got {brand_accent!r}")

    pwned = env.get(PREFIX + "PWNED_RANGE_URL", "").strip() or None
    if pwned and urlsplit(pwned).scheme not in {"http", "https"}:
        raise SettingsError(PREFIX + "PWNED_RANGE_URL", f"must be an http(s) URL, got {pwned!r}")

    log_level = env.get(PREFIX + "LOG_LEVEL", "INFO").strip().upper()
    if log_level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise SettingsError(PREFIX + "LOG_LEVEL", f"must be DEBUG, INFO, WARNING or ERROR, got {log_level!r}")

    timeout = _float(env, "OUTBOUND_TIMEOUT", 10.0)
    assert timeout is not None
    metrics_token = env.get(PREFIX + "METRICS_TOKEN", "").strip() or None
    if metrics_token is not None and len(metrics_token) < 32:
        raise SettingsError(PREFIX + "METRICS_TOKEN", f"must be at least 32 characters, got {len(metrics_token)}")
    metrics_allow = []
    for entry in _list(env, "METRICS_ALLOW"):
        try:
            metrics_allow.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise SettingsError(PREFIX + "METRICS_ALLOW", f"{entry!r} is not an IP address or CIDR range") from None
    scheduler_interval = _float(env, "SCHEDULER_INTERVAL", 60.0)
    webhook_retention_days = _int(env, "WEBHOOK_RETENTION_DAYS", 30, minimum=1)
    assert scheduler_interval is not None
    return Settings(
        env=mode,  # type: ignore[arg-type]
        instance_dir=instance_dir,
        database_url=database_url,
        secret_key=secret_key,
        master_keys=master_keys,
        redis_url=redis_url,
        redis_key_prefix=redis_key_prefix,
        base_url=base_url,
        cms_origins=tuple(_check_url_origin(PREFIX + "CMS_ORIGINS", o) for o in _list(env, "CMS_ORIGINS")),
        outbound_allow=tuple(_check_allow(PREFIX + "OUTBOUND_ALLOW", a) for a in _list(env, "OUTBOUND_ALLOW")),
        outbound_timeout=timeout,
        outbound_retries=_int(env, "OUTBOUND_RETRIES", 2, 0, 10),
        outbound_pool_size=_int(env, "OUTBOUND_POOL_SIZE", 512, 10, 10000),
        proxy_read_timeout=float(_int(env, "PROXY_READ_TIMEOUT", 120, 1, 3600)),
        proxy_pool_timeout=float(_int(env, "PROXY_POOL_TIMEOUT", 5, 1, 60)),
        proxy_max_request_bytes=_int(env, "PROXY_MAX_REQUEST_BYTES", 10 * 1024 * 1024, 0),
        proxy_max_response_bytes=_int(env, "PROXY_MAX_RESPONSE_BYTES", 100 * 1024 * 1024, 0),
        bootstrap_admin_email=env.get(PREFIX + "BOOTSTRAP_ADMIN_EMAIL") or None,
        bootstrap_admin_password=env.get(PREFIX + "BOOTSTRAP_ADMIN_PASSWORD") or None,
        log_level=log_level,
        argon2_memory_kib=_int(env, "ARGON2_MEMORY_KIB", 19456, 1024),
        argon2_time_cost=_int(env, "ARGON2_TIME_COST", 2, 1),
        argon2_parallelism=_int(env, "ARGON2_PARALLELISM", 1, 1, 64),
        password_min_length=_int(env, "PASSWORD_MIN_LENGTH", 12, 8, 256),
        signup=signup,  # type: ignore[arg-type]
        session_idle_minutes=_int(env, "SESSION_IDLE_MINUTES", 30, 1),
        session_max_hours=_int(env, "SESSION_MAX_HOURS", 12, 1),
        mfa_required_roles=_list(env, "MFA_REQUIRED_ROLES", ("admin",)),
        email_code_signin=_bool(env, "EMAIL_CODE_SIGNIN", False),
        trusted_browser_days=_int(env, "TRUSTED_BROWSER_DAYS", 30, 0, 365),
        new_device_alerts=_bool(env, "NEW_DEVICE_ALERTS", True),
        brand_name=brand_name,
        brand_logo=brand_logo,
        brand_accent=brand_accent.lower() if brand_accent else None,
        smtp_url=smtp_url,
        smtp_ca_file=smtp_ca_file,
        mail_from=env.get(PREFIX + "MAIL_FROM", "AMI Auth <no-reply@localhost>"),
        pwned_range_url=pwned,
        throttle_ip_per_minute=_int(env, "THROTTLE_IP_PER_MINUTE", 30, 1),
        trusted_proxies=_int(env, "TRUSTED_PROXIES", 0, 0, 5),
        throttle_account_failures=_int(env, "THROTTLE_ACCOUNT_FAILURES", 5, 1, 100),
        throttle_lock_seconds=lock_seconds,
        throttle_lock_max_seconds=lock_max_seconds,
        secret_grace_days=_int(env, "SECRET_GRACE_DAYS", 7, 0),
        token_refresh_margin_minutes=_int(env, "TOKEN_REFRESH_MARGIN_MINUTES", 10, 0),
        scheduler=_bool(env, "SCHEDULER", True),
        device_poll_interval=_float(env, "DEVICE_POLL_INTERVAL", None),
        catalog_dir=catalog_dir,
        secret_rotation_days=_int(env, "SECRET_ROTATION_DAYS", 90, 0),
        api_rate_per_minute=_int(env, "API_RATE_PER_MINUTE", 600, 1),
        api_ip_rate_per_minute=_int(env, "API_IP_RATE_PER_MINUTE", 120, 1),
        metrics_token=metrics_token,
        metrics_allow=tuple(metrics_allow),
        scheduler_interval=scheduler_interval,
        webhook_retention_days=webhook_retention_days,
    )


def with_overrides(settings: Settings, **changes: object) -> Settings:
    return replace(settings, **changes)  # type: ignore[arg-type]
