"""MSR settings, read from the environment (see README, "Configuration")."""

import secrets
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from msr.keys import create_once
from msr.project.config import env_bool, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parents[2]

DATA_DIR = Path(env_str("MSR_DATA_DIR", "./var")).resolve()

SECRET_KEY = env_str("MSR_SECRET_KEY") or create_once(
    DATA_DIR / "secret_key", lambda: secrets.token_urlsafe(50).encode()
).decode()

DEBUG = env_bool("MSR_DEBUG", False)

# The address clients use to reach MSR, e.g. https://registry.example.com. Token realms
# and redirects are built from it; when unset they are built from the request's Host.
PUBLIC_URL = (env_str("MSR_PUBLIC_URL") or "").rstrip("/")
_public = urlsplit(PUBLIC_URL) if PUBLIC_URL else None
if _public is not None and (_public.scheme not in ("http", "https") or not _public.hostname):
    raise ImproperlyConfigured(f"MSR_PUBLIC_URL={PUBLIC_URL!r}: expected http(s)://host[:port]")
# Host headers MSR answers: with a public URL, its host and this host's loopback names (health
# checks) plus MSR_ALLOWED_HOSTS (e.g. the internal name cache nodes use); without one, any
# (the realm is then built from the Host a client sent: set MSR_PUBLIC_URL in production).
ALLOWED_HOSTS = env_list("MSR_ALLOWED_HOSTS", [])
if _public is not None:
    ALLOWED_HOSTS = [_public.hostname, "127.0.0.1", "localhost", "[::1]", *ALLOWED_HOSTS]
elif not ALLOWED_HOSTS:
    ALLOWED_HOSTS = ["*"]
# Behind https, cookies only travel over https; HSTS when the operator asks for it (it is
# sticky in browsers: opt in with MSR_HSTS_SECONDS once https works).
_https = _public is not None and _public.scheme == "https"
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("MSR_SECURE_COOKIES", _https)
CSRF_TRUSTED_ORIGINS = [f"{_public.scheme}://{_public.netloc}"] if _public is not None else []
SECURE_HSTS_SECONDS = env_int("MSR_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("MSR_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
# The Content-Security-Policy of every page (msr.project.security): scripts and styles from MSR
# only (no CDN: assets ship with MSR), no framing. Empty: no header.
CONTENT_SECURITY_POLICY = env_str(
    "MSR_CSP", "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
               "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; object-src 'none'; "
               "frame-ancestors 'none'; base-uri 'self'; form-action 'self'")
# The `service` of Docker token authentication (the token's audience).
TOKEN_SERVICE = env_str("MSR_TOKEN_SERVICE", "msr")
TOKEN_ISSUER = env_str("MSR_TOKEN_ISSUER", "msr")
TOKEN_TTL_SECONDS = env_int("MSR_TOKEN_TTL", 300)
REFRESH_TOKEN_TTL_SECONDS = env_int("MSR_REFRESH_TOKEN_TTL", 30 * 24 * 3600)
# PEM file with the Ed25519 private key that signs tokens; generated in the data dir when
# unset. Every web process of a deployment must use the same key.
TOKEN_KEY_FILE = Path(env_str("MSR_TOKEN_KEY_FILE") or DATA_DIR / "token_key.pem")

# Fernet keys (comma-separated, newest first) encrypting stored secrets; generated into
# the data dir when unset.
ENCRYPTION_KEYS = env_list("MSR_ENCRYPTION_KEY", [])

# Lifetime of the grant in a redirect to a cache: long enough to start the download.
CACHE_GRANT_TTL_SECONDS = env_int("MSR_CACHE_GRANT_TTL", 300)
CACHE_HEALTH_INTERVAL_SECONDS = env_int("MSR_CACHE_HEALTH_INTERVAL", 15)

STORAGE_DIR = Path(env_str("MSR_STORAGE_DIR") or DATA_DIR / "storage")
# fsync a blob before it becomes visible, so a crash cannot leave a published blob with
# missing bytes.
STORAGE_FSYNC = env_bool("MSR_STORAGE_FSYNC", True)

# Where blobs live: "filesystem" (STORAGE_DIR; shared by every web process and worker of
# the deployment) or "s3", an S3-compatible bucket (AWS S3, MinIO, Ceph RGW…). With S3,
# blob GETs not sent to a cache are answered with a presigned redirect to the bucket
# (MSR_S3_REDIRECT), so layer bytes do not flow through MSR.
STORAGE_BACKEND = (env_str("MSR_STORAGE") or "filesystem").strip().lower()
if STORAGE_BACKEND not in ("filesystem", "s3"):
    raise ImproperlyConfigured(f"MSR_STORAGE={STORAGE_BACKEND!r}: expected filesystem or s3")
S3_BUCKET = env_str("MSR_S3_BUCKET") or ""
if STORAGE_BACKEND == "s3" and not S3_BUCKET:
    raise ImproperlyConfigured("MSR_STORAGE=s3 needs MSR_S3_BUCKET")
S3_PREFIX = env_str("MSR_S3_PREFIX") or ""
S3_ENDPOINT_URL = env_str("MSR_S3_ENDPOINT_URL") or None  # unset: AWS
# The endpoint clients reach for presigned URLs, when it differs from MSR's own.
S3_PUBLIC_ENDPOINT_URL = env_str("MSR_S3_PUBLIC_ENDPOINT_URL") or None
S3_REGION = env_str("MSR_S3_REGION") or None
# Unset: boto3's usual chain (AWS_* variables, shared config, instance profile).
S3_ACCESS_KEY_ID = env_str("MSR_S3_ACCESS_KEY_ID") or None
S3_SECRET_ACCESS_KEY = env_str("MSR_S3_SECRET_ACCESS_KEY") or None
S3_ADDRESSING_STYLE = env_str("MSR_S3_ADDRESSING_STYLE") or "auto"
if S3_ADDRESSING_STYLE not in ("auto", "path", "virtual"):
    raise ImproperlyConfigured(f"MSR_S3_ADDRESSING_STYLE={S3_ADDRESSING_STYLE!r}: expected auto, path or virtual")
# Multipart part size: memory per upload in flight; at most 10,000 parts per blob.
S3_PART_SIZE = env_int("MSR_S3_PART_SIZE", 16 * 1024 * 1024)
if S3_PART_SIZE < 5 * 1024 * 1024:
    raise ImproperlyConfigured(f"MSR_S3_PART_SIZE={S3_PART_SIZE}: S3 needs parts of at least 5 MiB (5242880)")
S3_REDIRECT = env_bool("MSR_S3_REDIRECT", True)
S3_REDIRECT_TTL_SECONDS = env_int("MSR_S3_REDIRECT_TTL", 1200)

MAX_MANIFEST_BYTES = env_int("MSR_MAX_MANIFEST_BYTES", 4 * 1024 * 1024)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "guardian",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "accounts",
    "msr",
    "caches",
    "mirroring",
    "msr.project",  # the operators' commands: manage.py gc, prune, backup, restore, reencrypt, teamaccess
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "msr.project.security.ContentSecurityPolicyMiddleware",
    "msr.project.security.ClientGoneMiddleware",
    "msr.project.readonly_middleware.ReadOnlyMiddleware",
]

ROOT_URLCONF = "msr.project.urls"
WSGI_APPLICATION = "msr.project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "msr.project.readonly_middleware.read_only_context",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL") or f"sqlite:///{DATA_DIR / 'msr.sqlite3'}",
        conn_max_age=env_int("MSR_DB_CONN_MAX_AGE", 600),
        # Off by default: a check is one more round trip on every request. A connection
        # broken by a database restart fails one request (503, Retry-After) and is
        # replaced.
        conn_health_checks=env_bool("MSR_DB_CONN_HEALTH_CHECKS", False),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets readers go on while one writer commits; IMMEDIATE takes the write lock at
    # BEGIN so concurrent pushes queue on the timeout instead of failing with "database
    # is locked" halfway through a transaction.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = False

# Server-side prepared statements for the hot-path lookups (msr/prepared.py). Turn off
# behind a pooler in transaction mode (PgBouncer), which does not keep them.
DB_PREPARED_STATEMENTS = env_bool("MSR_DB_PREPARED_STATEMENTS", True)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
ANONYMOUS_USER_NAME = None  # guardian: no anonymous user row; anonymous pull is decided by visibility
GUARDIAN_MONKEY_PATCH_USER = False

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "msr.api.auth.BasicCredentialsAuthentication",
        "msr.api.auth.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["msr.api.parsers.BoundedJSONParser",
                               "rest_framework.parsers.FormParser",
                               "rest_framework.parsers.MultiPartParser"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 100,
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer",
                                 "rest_framework.renderers.BrowsableAPIRenderer"],
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "EXCEPTION_HANDLER": "msr.api.errors.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "MSR API",
    "DESCRIPTION": "REST API of MSR for CI pipelines and operators. Authenticate with a "
                   "personal access token (Basic username:token, or Bearer token).",
    "VERSION": "0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {"VisibilityEnum": ["public", "private"],
                            "JobActionEnum": "mirroring.models.Job.ACTIONS"},
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "msr.api.schema.add_error_responses",
    ],
}

# Celery: Redis in production; the embedded default needs no broker server (Kombu's
# filesystem transport in the data dir).
BROKER_DIR = DATA_DIR / "broker"
# (A host in the URL, which the transport ignores, spares a "No hostname was supplied" warning.)
CELERY_BROKER_URL = env_str("MSR_BROKER_URL") or "filesystem://localhost/"
if CELERY_BROKER_URL.startswith("filesystem:"):
    for _folder in ("queue", "processed", "control"):
        (BROKER_DIR / _folder).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        # Without it Kombu writes its control exchange into the current directory.
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
    }
else:
    # A broker host that does not answer costs a request at most this, not the OS's
    # connect timeout.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"socket_connect_timeout": 3}
# JSON only (Celery's default, stated): a worker never unpickles what the broker holds, and
# Celery does not refuse to run as root (it warns; `msr up` silences that, msr/project/celery.py).
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ALWAYS_EAGER = env_bool("MSR_TASKS_EAGER", False)
# Read-only mode (msr/readonly.py): MSR_READ_ONLY holds it on whatever the runtime switch
# (PATCH /api/v0/meta/settings) says; each process re-reads that switch at most every
# READ_ONLY_CACHE_SECONDS; a job that would write waits READ_ONLY_JOB_WAIT_SECONDS and looks again.
READ_ONLY = env_bool("MSR_READ_ONLY", False)
READ_ONLY_CACHE_SECONDS = float(env_str("MSR_READ_ONLY_CACHE_SECONDS", "2"))
READ_ONLY_JOB_WAIT_SECONDS = float(env_str("MSR_READ_ONLY_JOB_WAIT_SECONDS", "10"))
# Mirroring: how often beat looks for poll policies that are due and for jobs whose worker
# was lost; a running job whose heartbeat is older than MIRROR_STALE_SECONDS is retried.
MIRROR_TICK_SECONDS = float(env_str("MSR_MIRROR_TICK_SECONDS", "15"))
MIRROR_STALE_SECONDS = float(env_str("MSR_MIRROR_STALE_SECONDS", "60"))
MIRROR_HEARTBEAT_SECONDS = float(env_str("MSR_MIRROR_HEARTBEAT_SECONDS", "2"))
MIRROR_MAX_ATTEMPTS = env_int("MSR_MIRROR_MAX_ATTEMPTS", 5)
# Delay before retry n is MIRROR_RETRY_BASE_SECONDS * 2**(n-1).
MIRROR_RETRY_BASE_SECONDS = float(env_str("MSR_MIRROR_RETRY_BASE_SECONDS", "10"))
# Blobs above this size go up in chunks of this size (PATCH); smaller ones in one PUT.
MIRROR_CHUNK_BYTES = env_int("MSR_MIRROR_CHUNK_BYTES", 64 * 1024 * 1024)
MIRROR_PARALLEL_BLOBS = env_int("MSR_MIRROR_PARALLEL_BLOBS", 3)
MIRROR_TIMEOUT_SECONDS = env_int("MSR_MIRROR_TIMEOUT", 60)
MIRROR_MAX_PROMOTION_CHAIN = env_int("MSR_MIRROR_MAX_PROMOTION_CHAIN", 10)
# Outbox (msr/outbox.py): a message whose publication on commit failed (broker away) is
# published again by beat's sweep, every OUTBOX_SWEEP_SECONDS, once it is this old.
OUTBOX_SWEEP_SECONDS = float(env_str("MSR_OUTBOX_SWEEP_SECONDS", "15"))
OUTBOX_GRACE_SECONDS = float(env_str("MSR_OUTBOX_GRACE_SECONDS", "30"))
# A request that queues work waits at most about a second for an absent broker (then its
# message stays in the outbox); Celery's default would try for longer.
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5,
                                    "interval_max": 0.5}
CELERY_BEAT_SCHEDULE = {
    "check-caches": {"task": "caches.tasks.check_caches", "schedule": CACHE_HEALTH_INTERVAL_SECONDS},
    "mirroring-tick": {"task": "mirroring.tasks.tick", "schedule": MIRROR_TICK_SECONDS},
    "outbox-sweep": {"task": "msr.tasks.sweep_outbox", "schedule": OUTBOX_SWEEP_SECONDS},
}

WEBHOOK_MAX_ATTEMPTS = env_int("MSR_WEBHOOK_MAX_ATTEMPTS", 6)
# Delay before retry n is WEBHOOK_RETRY_BASE_SECONDS * 2**(n-1).
WEBHOOK_RETRY_BASE_SECONDS = float(env_str("MSR_WEBHOOK_RETRY_BASE_SECONDS", "10"))
WEBHOOK_TIMEOUT_SECONDS = env_int("MSR_WEBHOOK_TIMEOUT", 10)

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

LOGIN_URL = "ui:login"
LOGIN_REDIRECT_URL = "ui:repositories"
LOGOUT_REDIRECT_URL = "ui:login"
SESSION_COOKIE_HTTPONLY = True
# Database sessions that know their user (accounts/sessions.py): listed and ended by users,
# ended by a password change or deactivation.
SESSION_ENGINE = "accounts.sessions"
CSRF_COOKIE_SAMESITE = "Lax"

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
WHITENOISE_USE_FINDERS = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("MSR_LOG_LEVEL", "INFO")},
    # Authlib logs PKCE verifiers and OAuth request tokens at debug level: never, even with
    # MSR_LOG_LEVEL=DEBUG (msr/sso.py logs what a sign-in did, without secrets).
    "loggers": {"django.request": {"level": "ERROR"}, "authlib": {"level": "INFO"}},
}

# Garbage collection (msr/gc.py): nothing younger than the grace period is collected
# (blobs and links by their last push or mount, untagged manifests by their last push);
# untagged manifests go only with MSR_GC_UNTAGGED=delete; uploads idle for
# MSR_GC_UPLOAD_AGE seconds are abandoned. Beat runs it every MSR_GC_INTERVAL seconds (0: off).
from django.core.exceptions import ImproperlyConfigured  # noqa: E402

GC_INTERVAL_SECONDS = env_int("MSR_GC_INTERVAL", 24 * 3600)
GC_GRACE_SECONDS = env_int("MSR_GC_GRACE", 24 * 3600)
GC_UNTAGGED = env_str("MSR_GC_UNTAGGED", "keep")
GC_UPLOAD_AGE_SECONDS = env_int("MSR_GC_UPLOAD_AGE", 24 * 3600)
if GC_UNTAGGED not in ("keep", "delete"):
    raise ImproperlyConfigured(f"MSR_GC_UNTAGGED={GC_UNTAGGED!r}: expected keep or delete")
for _name in ("MSR_GC_INTERVAL", "MSR_GC_GRACE", "MSR_GC_UPLOAD_AGE"):
    if env_int(_name, 0) < 0:
        raise ImproperlyConfigured(f"{_name}: expected a number of seconds, 0 or more")
if GC_INTERVAL_SECONDS:
    CELERY_BEAT_SCHEDULE["collect-garbage"] = {"task": "msr.tasks.collect_garbage",
                                               "schedule": GC_INTERVAL_SECONDS}

# Tag pruning (msr/pruning.py): beat runs every enabled pruning policy every
# MSR_PRUNING_INTERVAL seconds (0: off; runs on demand still work).
PRUNING_INTERVAL_SECONDS = env_int("MSR_PRUNING_INTERVAL", 24 * 3600)
if PRUNING_INTERVAL_SECONDS < 0:
    raise ImproperlyConfigured("MSR_PRUNING_INTERVAL must be 0 (off) or a number of seconds")
if PRUNING_INTERVAL_SECONDS:
    CELERY_BEAT_SCHEDULE["schedule-pruning"] = {"task": "msr.tasks.schedule_pruning",
                                                "schedule": PRUNING_INTERVAL_SECONDS}

# Retention (msr/retention.py): rows older than this many days are deleted by beat every
# MSR_RETENTION_INTERVAL seconds (0: off) and by `msr manage prune`; 0 days keeps them.
RETENTION_DAYS = {
    "pull_events": env_int("MSR_RETENTION_PULL_EVENTS_DAYS", 90),
    "audit_events": env_int("MSR_RETENTION_AUDIT_EVENTS_DAYS", 0),
    "jobs": env_int("MSR_RETENTION_JOBS_DAYS", 90),
    "webhook_deliveries": env_int("MSR_RETENTION_WEBHOOK_DELIVERIES_DAYS", 30),
    "cache_metrics": env_int("MSR_RETENTION_CACHE_METRICS_DAYS", 30),
}
RETENTION_INTERVAL_SECONDS = env_int("MSR_RETENTION_INTERVAL", 3600)
for _name, _value in [*((f"MSR_RETENTION_{k.upper()}_DAYS", v) for k, v in RETENTION_DAYS.items()),
                      ("MSR_RETENTION_INTERVAL", RETENTION_INTERVAL_SECONDS)]:
    if _value < 0:
        raise ImproperlyConfigured(f"{_name}={_value}: expected 0 or more")
if RETENTION_INTERVAL_SECONDS:
    CELERY_BEAT_SCHEDULE["prune-records"] = {"task": "msr.tasks.prune_records",
                                             "schedule": RETENTION_INTERVAL_SECONDS}

# -- Observability (README, "Observability") ---------------------------------------------------
import ipaddress as _ipaddress  # noqa: E402

from django.core.exceptions import ImproperlyConfigured as _ImproperlyConfigured  # noqa: E402

from msr.project import logs as _logs  # noqa: E402  (no Django inside)
from protocol import logformat as _logformat  # noqa: E402

# Logs: one JSON object per line (json) or plain lines (text), on stderr, with the request
# id; unset (or auto): text when stderr is a terminal, else JSON. MSR_ACCESS_LOG adds one
# line per request (route, status, duration, user).
LOG_FORMAT = _logformat.resolve_format(env_str("MSR_LOG_FORMAT", ""))
if LOG_FORMAT not in _logformat.FORMATTERS:
    raise _ImproperlyConfigured(f"MSR_LOG_FORMAT={LOG_FORMAT!r}: expected json, text or auto")
ACCESS_LOG = env_bool("MSR_ACCESS_LOG", False)
LOGGING = _logs.logging_config(LOG_FORMAT, env_str("MSR_LOG_LEVEL", "INFO"))
# Celery's workers log through the handler above instead of installing their own format.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Who may read /metrics without credentials (CIDRs, comma-separated; empty: nobody, and
# then only a system admin's Basic credentials do).
try:
    METRICS_ALLOW = [_ipaddress.ip_network(cidr, strict=False)
                     for cidr in env_list("MSR_METRICS_ALLOW", ["127.0.0.1/32", "::1/128"])]
except ValueError as _e:
    raise _ImproperlyConfigured(f"MSR_METRICS_ALLOW: {_e}") from None

# The reverse proxies in front of MSR (addresses or CIDRs; "*": whatever connects), the
# same variable gunicorn reads to trust their X-Forwarded-Proto. From them MSR also takes
# the client's address out of X-Forwarded-For (msr/addresses.py), for the caches' network
# rules and the audit trail.
_forwarded = env_list("MSR_FORWARDED_ALLOW_IPS", ["127.0.0.1"])
try:
    FORWARDED_ALLOW = None if "*" in _forwarded else [
        _ipaddress.ip_network(item, strict=False) for item in _forwarded]
except ValueError as _e:
    raise _ImproperlyConfigured(f"MSR_FORWARDED_ALLOW_IPS: {_e}") from None

# -- Security (docs/operations.md, "Security") -------------------------------------------------
from msr import egress as _egress  # noqa: E402

# What outbound requests may reach besides the public internet (msr/egress.py): CIDRs,
# addresses, host names (*.domain), each optionally with :port. Empty: public addresses only.
try:
    OUTBOUND_ALLOW = _egress.parse_allow(env_list("MSR_OUTBOUND_ALLOW", []))
except ValueError as _e:
    raise _ImproperlyConfigured(f"MSR_OUTBOUND_ALLOW: {_e}") from None

# Failed sign-ins (accounts/throttle.py): failures allowed per window (seconds) for one
# account from one address, for one address, and for one account from addresses it has not
# signed in from before; a key over its limit is refused (429) for AUTH_THROTTLE_BLOCK s.
AUTH_THROTTLE_ENABLED = env_bool("MSR_AUTH_THROTTLE", True)
AUTH_THROTTLE_WINDOW = env_int("MSR_AUTH_THROTTLE_WINDOW", 900)
AUTH_THROTTLE_BLOCK = env_int("MSR_AUTH_THROTTLE_BLOCK", 900)
AUTH_THROTTLE_ACCOUNT_ADDRESS = env_int("MSR_AUTH_THROTTLE_ACCOUNT_ADDRESS", 10)
AUTH_THROTTLE_ADDRESS = env_int("MSR_AUTH_THROTTLE_ADDRESS", 100)
AUTH_THROTTLE_ACCOUNT = env_int("MSR_AUTH_THROTTLE_ACCOUNT", 100)
for _name in ("WINDOW", "BLOCK", "ACCOUNT_ADDRESS", "ADDRESS", "ACCOUNT"):
    if globals()[f"AUTH_THROTTLE_{_name}"] < 1:
        raise _ImproperlyConfigured(f"MSR_AUTH_THROTTLE_{_name}: expected 1 or more")

# Passwords (web UI, REST API, `msr manage adduser`): at least 12 characters, not a common
# password, not like the username, not all digits.
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
     "OPTIONS": {"min_length": env_int("MSR_PASSWORD_MIN_LENGTH", 12)}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# Scopes one token request may ask for (Docker asks for one or two).
MAX_TOKEN_SCOPES = env_int("MSR_MAX_TOKEN_SCOPES", 64)

# Sign-in through a company directory (LDAP or Active Directory; accounts/directory.py,
# django-auth-ldap on python-ldap, the `ldap` extra). Off while MSR_LDAP_URL is empty.
# Users unknown to MSR are created at their first sign-in with the directory's name and
# e-mail; their password is only ever checked by the directory. Local users (the admin
# made at install) keep signing in with MSR's own password, directory up or down.
LDAP_URL = env_str("MSR_LDAP_URL", "") or ""
LDAP_ADMIN_GROUP = ""
LDAP_ATTR_USERNAME = env_str("MSR_LDAP_ATTR_USERNAME", "uid")
if LDAP_URL:
    if not LDAP_URL.startswith(("ldap://", "ldaps://")):
        raise _ImproperlyConfigured(f"MSR_LDAP_URL={LDAP_URL!r}: expected ldap://host[:port] or ldaps://host[:port]")
    try:
        import ldap as _ldap
        from django_auth_ldap import config as _ldap_config
    except ImportError:
        raise _ImproperlyConfigured("MSR_LDAP_URL is set, but the LDAP client is not installed: "
                                    "pip install 'msr[ldap]' (needs libldap-dev and libsasl2-dev)") from None
    _ldap_timeout = env_int("MSR_LDAP_TIMEOUT", 5)
    if _ldap_timeout < 1:
        raise _ImproperlyConfigured("MSR_LDAP_TIMEOUT: expected a number of seconds, 1 or more")
    _ldap_user_base = env_str("MSR_LDAP_USER_SEARCH_BASE", "")
    if not _ldap_user_base:
        raise _ImproperlyConfigured("MSR_LDAP_URL is set: MSR_LDAP_USER_SEARCH_BASE must name where users are "
                                    "(e.g. ou=people,dc=example,dc=org)")
    _ldap_ca_file = env_str("MSR_LDAP_CA_FILE", "")
    if _ldap_ca_file and not Path(_ldap_ca_file).is_file():
        raise _ImproperlyConfigured(f"MSR_LDAP_CA_FILE={_ldap_ca_file}: no such file")
    AUTHENTICATION_BACKENDS.insert(1, "accounts.directory.DirectoryBackend")
    AUTH_LDAP_SERVER_URI = LDAP_URL
    AUTH_LDAP_START_TLS = env_bool("MSR_LDAP_START_TLS", False)
    AUTH_LDAP_BIND_DN = env_str("MSR_LDAP_BIND_DN", "")
    AUTH_LDAP_BIND_PASSWORD = env_str("MSR_LDAP_BIND_PASSWORD", "")
    AUTH_LDAP_USER_SEARCH = _ldap_config.LDAPSearch(
        _ldap_user_base, _ldap.SCOPE_SUBTREE, env_str("MSR_LDAP_USER_FILTER", "(uid=%(user)s)"))
    AUTH_LDAP_USER_ATTR_MAP = {"full_name": env_str("MSR_LDAP_ATTR_FULL_NAME", "cn"),
                               "email": env_str("MSR_LDAP_ATTR_EMAIL", "mail")}
    # Referrals off: Active Directory answers searches of a domain's root with referrals
    # that libldap would follow anonymously. NEWCTX last: libldap builds the TLS context
    # from the options set before it, or ignores the CA file.
    AUTH_LDAP_CONNECTION_OPTIONS = {
        _ldap.OPT_NETWORK_TIMEOUT: _ldap_timeout,
        _ldap.OPT_TIMEOUT: _ldap_timeout,
        _ldap.OPT_REFERRALS: 0,
        **({_ldap.OPT_X_TLS_CACERTFILE: _ldap_ca_file} if _ldap_ca_file else {}),
        _ldap.OPT_X_TLS_REQUIRE_CERT: _ldap.OPT_X_TLS_DEMAND,
        _ldap.OPT_X_TLS_NEWCTX: 0,
    }
    _ldap_admin_group = env_str("MSR_LDAP_ADMIN_GROUP", "")
    if _ldap_admin_group:
        _ldap_group_types = {
            "groupOfNames": (_ldap_config.GroupOfNamesType, "(objectClass=groupOfNames)"),
            "posixGroup": (_ldap_config.PosixGroupType, "(objectClass=posixGroup)"),
            "activeDirectory": (_ldap_config.ActiveDirectoryGroupType, "(objectClass=group)"),
        }
        _ldap_group_type = env_str("MSR_LDAP_GROUP_TYPE", "groupOfNames")
        if _ldap_group_type not in _ldap_group_types:
            raise _ImproperlyConfigured(f"MSR_LDAP_GROUP_TYPE={_ldap_group_type!r}: expected one of "
                                        f"{', '.join(_ldap_group_types)}")
        _ldap_group_class, _ldap_group_filter = _ldap_group_types[_ldap_group_type]
        # The admin group's own container when not told where groups are.
        AUTH_LDAP_GROUP_SEARCH = _ldap_config.LDAPSearch(
            env_str("MSR_LDAP_GROUP_SEARCH_BASE", "") or _ldap_admin_group.partition(",")[2],
            _ldap.SCOPE_SUBTREE, _ldap_group_filter)
        AUTH_LDAP_GROUP_TYPE = _ldap_group_class()
        # Checked at every directory sign-in: leaving the group ends admin rights then.
        AUTH_LDAP_USER_FLAGS_BY_GROUP = {"is_superuser": _ldap_admin_group, "is_staff": _ldap_admin_group}
    LDAP_ADMIN_GROUP = _ldap_admin_group
    # Team sync (accounts/directory_sync.py): every this many seconds under beat; 0 = only on demand.
    LDAP_SYNC_INTERVAL = env_int("MSR_LDAP_SYNC_INTERVAL", 3600)
    if LDAP_SYNC_INTERVAL < 0:
        raise _ImproperlyConfigured("MSR_LDAP_SYNC_INTERVAL: expected a number of seconds (0: only on demand)")
    if LDAP_SYNC_INTERVAL:
        CELERY_BEAT_SCHEDULE["directory-sync"] = {"task": "msr.tasks.sync_directory",
                                                  "schedule": float(LDAP_SYNC_INTERVAL)}

# Single sign-on with an OpenID Connect provider (msr/sso.py, Authlib). Off while
# MSR_OIDC_ISSUER is empty. The provider is found by discovery from the issuer URL; people
# unknown to MSR get an account at their first sign-in (accounts/sso.py), matched later by
# "<issuer> <sub>", never by name. CLI and CI use personal access tokens made after signing in.
OIDC_ISSUER = (env_str("MSR_OIDC_ISSUER", "") or "").strip()
OIDC_CLIENT_ID = env_str("MSR_OIDC_CLIENT_ID", "") or ""
OIDC_CLIENT_SECRET = env_str("MSR_OIDC_CLIENT_SECRET", "") or ""
OIDC_PROVIDER_NAME = env_str("MSR_OIDC_PROVIDER_NAME", "") or "single sign-on"
OIDC_SCOPES = env_str("MSR_OIDC_SCOPES", "") or "openid email profile groups"
OIDC_CLAIM_USERNAME = env_str("MSR_OIDC_CLAIM_USERNAME", "") or "preferred_username"
OIDC_CLAIM_FULL_NAME = env_str("MSR_OIDC_CLAIM_FULL_NAME", "") or "name"
OIDC_CLAIM_EMAIL = env_str("MSR_OIDC_CLAIM_EMAIL", "") or "email"
OIDC_CLAIM_GROUPS = env_str("MSR_OIDC_CLAIM_GROUPS", "") or "groups"
OIDC_ADMIN_GROUP = env_str("MSR_OIDC_ADMIN_GROUP", "") or ""
OIDC_CA_FILE = env_str("MSR_OIDC_CA_FILE", "") or ""
OIDC_TIMEOUT = env_int("MSR_OIDC_TIMEOUT", 10)
# How often MSR asks the provider whether a single sign-on user's sign-on still stands (a
# refresh-token grant) before it honours their personal access and refresh tokens; 0: never.
OIDC_RECHECK_SECONDS = env_int("MSR_OIDC_RECHECK_SECONDS", 900)
if OIDC_ISSUER:
    _issuer = urlsplit(OIDC_ISSUER)
    if _issuer.scheme not in ("http", "https") or not _issuer.hostname or _issuer.query or _issuer.fragment:
        raise _ImproperlyConfigured(f"MSR_OIDC_ISSUER={OIDC_ISSUER!r}: expected the provider's issuer URL, "
                                    "https://host[/path] (its discovery is <issuer>/.well-known/openid-configuration)")
    if not OIDC_CLIENT_ID:
        raise _ImproperlyConfigured("MSR_OIDC_ISSUER is set: MSR_OIDC_CLIENT_ID must name MSR's client at the provider")
    if not OIDC_CLIENT_SECRET:
        raise _ImproperlyConfigured("MSR_OIDC_ISSUER is set: MSR_OIDC_CLIENT_SECRET (or MSR_OIDC_CLIENT_SECRET_FILE) "
                                    "must hold MSR's client secret at the provider")
    if "openid" not in OIDC_SCOPES.replace(",", " ").split():
        raise _ImproperlyConfigured(f"MSR_OIDC_SCOPES={OIDC_SCOPES!r}: must include openid")
    OIDC_SCOPES = " ".join(OIDC_SCOPES.replace(",", " ").split())
    if OIDC_CA_FILE and not Path(OIDC_CA_FILE).is_file():
        raise _ImproperlyConfigured(f"MSR_OIDC_CA_FILE={OIDC_CA_FILE}: no such file")
    if OIDC_RECHECK_SECONDS < 0:
        raise _ImproperlyConfigured("MSR_OIDC_RECHECK_SECONDS: expected a number of seconds (0: never ask)")
    if OIDC_TIMEOUT < 1:
        raise _ImproperlyConfigured("MSR_OIDC_TIMEOUT: expected a number of seconds, 1 or more")
