"""Every name, default and limit the product shares, in one place.

Values come from the environment so the same code runs on the embedded default (SQLite,
local files) and in production (PostgreSQL, S3). Nothing here touches a database or the
network: reading this module is free at DAG-parse time.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

DAG_ID = "export_transaction"
#: Run ids of scheduled bulk exports: only their own DAG (through its trigger operator) may use them.
BULK_RUN_PREFIX = "bulk__"
#: The delayed e-mail of an export runs in a run of this DAG, never inside the export's run.
NOTIFICATION_DAG_ID = "export_notification"
NOTIFICATION_RUN_PREFIX = "notify__"
HOUSEKEEPING_DAG_ID = "export_housekeeping"
BULK_DAG_PREFIX = "bulk_export__"


def is_product_dag(dag_id: str) -> bool:
    """The DAGs whose runs are transactions or act on them: the platform team's alone."""
    return dag_id in (DAG_ID, NOTIFICATION_DAG_ID, HOUSEKEEPING_DAG_ID) or dag_id.startswith(BULK_DAG_PREFIX)


# Tables of the header store (never Airflow's metadata DB).
HEADER_TABLE = "export_header"
BATCH_TABLE = "export_batch"
EVENT_TABLE = "export_event"

# Request limits (the run conf / Params contract).
#: A request without ``batch_size`` gets an automatic plan (see :func:`export_tx.planning.choose_batch_size`).
BATCH_SIZE_DEFAULT = None
BATCH_SIZE_MIN = 1_000
BATCH_SIZE_MAX = 5_000_000
#: An automatic plan splits only batches of at least this many rows: a mapped task costs about a
#: second of scheduling and start-up, and a million rows about two seconds of work on one core.
BATCH_ROWS_AUTO_MIN = 1_000_000
NOTIFY_DELAY_DEFAULT = 15
NOTIFY_DELAY_MAX = 7 * 24 * 60

# Rows buffered per Parquet row group (small fetched batches make ~18 % bigger files).
ROW_GROUP_ROWS = 1_000_000


#: Days a FAILED transaction keeps the parts of its finished batches, so POST …/retry re-runs only
#: the others (housekeeping removes them after; a later retry then re-runs every batch).
RESUME_KEEP_DAYS_DEFAULT = 7


def resume_keep_days() -> float:
    return float(_env("EXPORT_TX_RESUME_KEEP_DAYS", str(RESUME_KEEP_DAYS_DEFAULT)) or RESUME_KEEP_DAYS_DEFAULT)


def task_routing() -> dict[str, dict[str, str]]:
    """Queue and pool per kind of work (read when the DAG file is parsed: environment only).

    Batches are many, I/O-bound and small; the merge is one task with a different memory and
    disk profile. On CeleryExecutor each can go to its own queue (workers sized for it) and
    pool (capping how many run at once across all exports).
    """
    return {
        "batch": {
            "queue": _env("EXPORT_TX_BATCH_QUEUE", "default") or "default",
            "pool": _env("EXPORT_TX_BATCH_POOL", "default_pool") or "default_pool",
        },
        "merge": {
            "queue": _env("EXPORT_TX_MERGE_QUEUE", "default") or "default",
            "pool": _env("EXPORT_TX_MERGE_POOL", "default_pool") or "default_pool",
        },
    }


def retry_delay_seconds() -> float:
    """Delay between task retries (read when a DAG file is parsed: environment only)."""
    return float(_env("EXPORT_TX_RETRY_DELAY_SECONDS", "30") or 30)


def notification_max_active() -> int:
    """How many notifications may wait at once (each waits deferred, in the triggerer)."""
    return int(_env("EXPORT_TX_NOTIFY_MAX_ACTIVE", "500") or 500)


def notification_run_id(tx_id: str, again: int = 0) -> str:
    """The run of ``export_notification`` for a transaction's e-mail (``again``: the n-th resend).
    Airflow run ids hold 250 characters: a longer token is shortened by a hash."""
    import hashlib

    suffix = f"__again-{again}" if again else ""
    readable = f"{NOTIFICATION_RUN_PREFIX}{tx_id}{suffix}"
    if len(readable) <= 250:
        return readable
    digest = hashlib.sha256(tx_id.encode()).hexdigest()[:16]
    return f"{NOTIFICATION_RUN_PREFIX}{tx_id[:200]}~{digest}{suffix}"


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _whole(name: str, default: int, *, minimum: int = 0) -> int:
    """A whole-number knob; a value that is not one is refused, naming the variable."""
    raw = (_env(name) or "").strip()
    try:
        return max(minimum, int(raw)) if raw else default
    except ValueError:
        raise ValueError(f"{name} must be a whole number, not {raw[:40]!r}") from None


def _seconds(name: str, default: float) -> float:
    """A duration knob in seconds; a value that is not a number falls back to ``default``."""
    raw = (_env(name) or "").strip()
    try:
        return max(0.0, float(raw)) if raw else default
    except ValueError:
        return default


# -- the header store's connection pool ------------------------------------------------------------

#: Connections each process keeps to the header store (``EXPORT_TX_STORE_POOL_SIZE``) and may open
#: beyond them under load (``EXPORT_TX_STORE_MAX_OVERFLOW``): the api-server's status reads and
#: writes run on thread pools, and without a connection each would wait for a pooled connection,
#: or open and close a PostgreSQL connection each (milliseconds), instead of reusing one. Opened
#: only when needed, so a task process still holds one or two.
STORE_POOL_SIZE_DEFAULT = 10
STORE_MAX_OVERFLOW_DEFAULT = 10


def store_pool() -> dict[str, int]:
    return {
        "pool_size": _whole("EXPORT_TX_STORE_POOL_SIZE", STORE_POOL_SIZE_DEFAULT),
        "max_overflow": _whole("EXPORT_TX_STORE_MAX_OVERFLOW", STORE_MAX_OVERFLOW_DEFAULT),
    }


# -- the /exports API ------------------------------------------------------------------------------

#: Worker threads that answer /exports requests at once, per api-server process and kind
#: (``EXPORT_TX_API_THREADS``): as many for reads (status polls, listings) as for requests that
#: write, so polls never queue behind writes waiting for the store's lock. Requests beyond them
#: wait their turn on the event loop, which costs nothing. More threads do not answer sooner: the
#: work holds the interpreter lock, and forty threads (FastAPI's default pool) trading it make
#: every request, and a database write queued behind one of them, wait for all the others.
API_THREADS_DEFAULT = 8
#: How long a request that is alone waits for its Airflow run to be created
#: (``EXPORT_TX_RUN_START_WAIT_SECONDS``); after that it answers 202 and the run follows.
RUN_START_WAIT_DEFAULT = 10.0


#: How long a thread of the api-server may hold the interpreter lock while another waits for it
#: (``EXPORT_TX_API_SWITCH_INTERVAL_MS``; Python's default is 5 ms). Every request changes threads
#: twice or more (event loop → token check → event loop → route → event loop) and each change
#: waited for whoever held the lock, up to the interval. With 50 exports requested at once, POST
#: p99 went 357 → 283 ms in two runs one after the other here (the second at 1 ms, and with the
#: store's per-request statements built once). Set by the ``/exports`` app at its first request,
#: for its api-server process; 0 leaves Python's setting alone.
API_SWITCH_INTERVAL_MS_DEFAULT = 1.0


def api_switch_interval_seconds() -> float | None:
    raw = (_env("EXPORT_TX_API_SWITCH_INTERVAL_MS") or "").strip()
    try:
        ms = float(raw) if raw else API_SWITCH_INTERVAL_MS_DEFAULT
    except ValueError:
        ms = API_SWITCH_INTERVAL_MS_DEFAULT
    return ms / 1000 if 0 < ms <= 100 else None


def api_threads() -> int:
    raw = (_env("EXPORT_TX_API_THREADS") or "").strip()
    return int(raw) if raw.isdigit() and int(raw) > 0 else API_THREADS_DEFAULT


def run_start_wait_seconds() -> float:
    return _seconds("EXPORT_TX_RUN_START_WAIT_SECONDS", RUN_START_WAIT_DEFAULT)


#: How much an export's task gives way to the deployment's own processes (``EXPORT_TX_TASK_NICE``,
#: 0-19): exports are background work. A niceness ranks processes of one session only where Linux
#: groups them by session (autogroup, most distributions): there the tasks give way to their
#: scheduler or worker, not to the api-server; CPU weights per service do that (README).
TASK_NICE_DEFAULT = 10


def task_nice() -> int:
    raw = (_env("EXPORT_TX_TASK_NICE") or "").strip()
    return min(19, int(raw)) if raw.isdigit() else TASK_NICE_DEFAULT


#: Which processes that fork Airflow's task processes import what export tasks import, once, before
#: they fork (``EXPORT_TX_PRELOAD``): ``auto`` (the default) a Celery worker, whose cores are for
#: tasks; ``on`` a scheduler running LocalExecutor too; ``off`` none. See :mod:`export_tx.airflow.preload`.
PRELOAD_DEFAULT = "auto"


def preload_mode() -> str:
    raw = (_env("EXPORT_TX_PRELOAD") or PRELOAD_DEFAULT).strip().lower()
    if raw in ("off", "0", "false", "no"):
        return "off"
    return "on" if raw in ("on", "1", "true", "yes") else "auto"


# -- notification and links ------------------------------------------------------------------------


def notify_poll_seconds() -> float:
    """How often a waiting notification looks whether the file was downloaded."""
    return float(_env("EXPORT_TX_NOTIFY_POLL_SECONDS", "15") or 15)


def mail_from() -> str:
    return _env("EXPORT_TX_MAIL_FROM", "exports@localhost") or "exports@localhost"


# -- point-in-time exports (a definition's consistent_snapshot) ----------------------------------


def snapshot_wait_seconds() -> float:
    """How long planning waits for the source's snapshot to be taken (``EXPORT_TX_SNAPSHOT_WAIT_SECONDS``):
    the hold task must be scheduled, defer, and Airflow's triggerer start its trigger; the holder keeps
    trying to connect for as long."""
    return _seconds("EXPORT_TX_SNAPSHOT_WAIT_SECONDS", 300.0)


def snapshot_poll_seconds() -> float:
    """How often the snapshot's holder checks its session and the transaction
    (``EXPORT_TX_SNAPSHOT_POLL_SECONDS``): the snapshot is released this long after the last batch."""
    return max(0.1, _seconds("EXPORT_TX_SNAPSHOT_POLL_SECONDS", 2.0))


def snapshot_max_hold_seconds() -> float:
    """The longest a snapshot is held (``EXPORT_TX_SNAPSHOT_MAX_HOLD_SECONDS``): while it is, PostgreSQL's
    VACUUM keeps every row version changed since, in every table of the database. Batches that have not
    read by then fail, naming this limit."""
    return _seconds("EXPORT_TX_SNAPSHOT_MAX_HOLD_SECONDS", 6 * 3600.0)


# -- the webhook channel ---------------------------------------------------------------------------

#: The Airflow connection whose password is the deployment's webhook signing secret.
WEBHOOK_CONN_ID = "export_webhook"
#: The longest webhook URL a request may give.
WEBHOOK_URL_MAX_CHARS = 2_000
#: Attempts of a failed export's event, made at once from the export's own run (it must end
#: soon: a few tries, their waits capped at :data:`WEBHOOK_INLINE_DELAY_MAX`).
WEBHOOK_INLINE_ATTEMPTS = 3
WEBHOOK_INLINE_DELAY_MAX = 10.0


def webhook_secret_env() -> str | None:
    """The signing secret when no ``export_webhook`` connection holds one (``EXPORT_TX_WEBHOOK_SECRET``)."""
    return _env("EXPORT_TX_WEBHOOK_SECRET")


def webhook_allowed_hosts() -> tuple[str, ...]:
    """The hosts webhooks may be sent to (``EXPORT_TX_WEBHOOK_ALLOWED_HOSTS``, comma-separated host
    names or ``*.example.com`` patterns). Empty: none. A pattern wider than one domain (``*``,
    ``*.com``) is dropped: it would let requesters make the workers call any address."""
    hosts = []
    for item in (_env("EXPORT_TX_WEBHOOK_ALLOWED_HOSTS", "") or "").split(","):
        host = item.strip().lower().rstrip(".")
        if not host:
            continue
        if "*" in host and not (host.startswith("*.") and "*" not in host[2:] and "." in host[2:]):
            continue
        hosts.append(host)
    return tuple(hosts)


def webhook_allow_http() -> bool:
    """Plain http webhooks (``EXPORT_TX_WEBHOOK_ALLOW_HTTP``): for tests and closed networks only;
    otherwise the event, and its download link, would cross the network in clear text."""
    return (_env("EXPORT_TX_WEBHOOK_ALLOW_HTTP", "") or "").strip().lower() in ("1", "true", "yes")


def webhook_timeout_seconds() -> float:
    """How long one delivery waits for the receiver (connect and answer)."""
    return _seconds("EXPORT_TX_WEBHOOK_TIMEOUT_SECONDS", 10.0)


def webhook_retries() -> int:
    """Retries of a transient failure (read when the DAG file is parsed: environment only)."""
    return _whole("EXPORT_TX_WEBHOOK_RETRIES", 4)


def webhook_retry_delay_seconds() -> float:
    """The first retry's delay; each next one doubles (Airflow's exponential backoff, with its
    jitter), and the failure event's in-process retries use it the same way."""
    return _seconds("EXPORT_TX_WEBHOOK_RETRY_DELAY_SECONDS", 30.0)


def s3_public_endpoint() -> str | None:
    """Where requesters' browsers reach the object store, when the workers reach it elsewhere."""
    return _env("EXPORT_TX_S3_PUBLIC_ENDPOINT")


# -- the export-tx client (the CLI, on a user's machine) ---------------------------------------------


#: What only the client reads, on a user's machine (never set in the Airflow components).
CLIENT_VARIABLES = frozenset({"EXPORT_TX_URL", "EXPORT_TX_TOKEN", "EXPORT_TX_USER", "EXPORT_TX_PASSWORD"})


@dataclass(frozen=True)
class ClientSettings:
    url: str
    token: str | None
    user: str
    password: str | None

    @classmethod
    def from_env(cls) -> ClientSettings:
        return cls(
            url=(_env("EXPORT_TX_URL", "http://localhost:8080") or "").rstrip("/"),
            token=_env("EXPORT_TX_TOKEN"),
            user=_env("EXPORT_TX_USER", "admin") or "admin",
            password=_env("EXPORT_TX_PASSWORD"),
        )


def airflow_home() -> Path:
    return Path(_env("AIRFLOW_HOME", str(Path.home() / "airflow")) or "")


@dataclass(frozen=True)
class Settings:
    """Runtime configuration, resolved from the environment when first needed."""

    store_conn_id: str | None
    store_url: str
    storage_uri: str
    demo_db_path: Path
    max_batches: int
    #: Batch tasks that can run at once (executor slots, or the batch pool's): an automatic plan
    #: makes this many batches, so a large export keeps every slot busy once.
    batch_slots: int
    public_base_url: str
    #: The team's own definition folders (``EXPORT_TX_DEFINITIONS_PATH``, ``:``-separated).
    definitions_path: tuple[Path, ...] = ()

    @classmethod
    def from_env(cls) -> Settings:
        home = airflow_home()
        return cls(
            # An Airflow connection id (postgres) wins over a plain SQLAlchemy URL.
            store_conn_id=_env("EXPORT_TX_STORE_CONN_ID"),
            store_url=_env("EXPORT_TX_STORE_URL", f"sqlite:///{home / 'export_tx.db'}") or "",
            storage_uri=(_env("EXPORT_TX_STORAGE_URI", f"file://{home / 'exports'}") or "").rstrip("/"),
            demo_db_path=Path(_env("EXPORT_TX_DEMO_DB", str(home / "demo_source.db")) or ""),
            # Keep mapped tasks in the tens to low hundreds (max_map_length is 1024).
            max_batches=int(_env("EXPORT_TX_MAX_BATCHES", "200") or 200),
            # One machine (LocalExecutor): its cores. With Celery or Kubernetes set it to the batch pool's slots.
            batch_slots=max(1, int(_env("EXPORT_TX_BATCH_SLOTS", str(len(os.sched_getaffinity(0)))) or 1)),
            public_base_url=(_env("EXPORT_TX_PUBLIC_URL", "http://localhost:8080") or "").rstrip("/"),
            definitions_path=tuple(
                Path(p).expanduser() for p in (_env("EXPORT_TX_DEFINITIONS_PATH", "") or "").split(os.pathsep) if p
            ),
        )


#: Every variable :meth:`Settings.from_env` reads (HOME: the default AIRFLOW_HOME).
SETTINGS_VARIABLES = (
    "AIRFLOW_HOME", "HOME", "EXPORT_TX_STORE_CONN_ID", "EXPORT_TX_STORE_URL", "EXPORT_TX_STORAGE_URI",
    "EXPORT_TX_DEMO_DB", "EXPORT_TX_MAX_BATCHES", "EXPORT_TX_BATCH_SLOTS", "EXPORT_TX_PUBLIC_URL",
    "EXPORT_TX_DEFINITIONS_PATH",
)  # fmt: skip


def get_settings() -> Settings:
    """The settings, resolved again whenever a variable they come from has changed — and reused
    while none has: every API request asks, and resolving them (paths, the CPU affinity) cost
    about 40 % of what a status request's own store read did, in a profile of the api-server."""
    return _settings_for(tuple(os.environ.get(name) for name in SETTINGS_VARIABLES), len(os.sched_getaffinity(0)))


@functools.lru_cache(maxsize=8)
def _settings_for(_variables: tuple[str | None, ...], _cpus: int) -> Settings:
    return Settings.from_env()
