"""What the DAG files share: assets, retry policy, connections, data intervals. Imports no TensorFlow.

Connections (any Airflow connection backend; `AIRFLOW_CONN_…` environment variables work):
- `hubbeam_corpus_db`: the SQL source (sqlite, postgres, mysql …). Default when absent: the SQLite file
  `DATA_ROOT/corpus.db` that `make demo` creates.
- the `pgvector_conn_id` Param of embed_corpus (none by default): a postgres connection the checked outputs
  are loaded into (hubbeam load-pgvector).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import sys

from hubbeam import settings
from hubbeam.orchestration import layout

CORPUS_DB_CONN_ID = "hubbeam_corpus_db"
STORAGE_RETRIES = {"retries": 3, "retry_delay": dt.timedelta(seconds=5), "retry_exponential_backoff": True,
                   "max_retry_delay": dt.timedelta(minutes=5)}
RUNNERS = ["FnApiRunner", "PortableRunner", "DataflowRunner", "FlinkRunner", "SparkRunner", "PrismRunner"]


def asset(name: str):
    """The Asset a DAG emits or waits for, identified by its name alone (uri `hubbeam://NAME`).

    Not by the data root: the process that parses a DAG and the worker that runs its task could see different
    settings, and Airflow fails a task whose outlet differs from the registered asset. Where the data is
    travels in each event's extra instead.
    """
    from airflow.sdk import Asset

    return Asset(name=f"hubbeam_{name}", uri=f"hubbeam://{name}")


def beam_command(options: dict) -> str:
    """The shell command that runs the Beam job with these pipeline options: `python -m hubbeam embed --opt=…`
    with this very interpreter (hubbeam is installed in it; nothing is installed at run time)."""
    import shlex

    args = [sys.executable, "-m", "hubbeam", "embed"]
    for key, value in options.items():
        if isinstance(value, bool):
            if value:
                args.append(f"--{key}")
        elif value is not None:
            args.append(f"--{key}={value}")
    return shlex.join(args)


def default_module() -> str:
    return settings.EMBED_MODULE.get()


def default_finetune_module() -> str:
    return settings.FINETUNE_MODULE.get()


def finetuned_name(base_module: str) -> str:
    """The name finetune() gives a fine-tuned module when none is asked for."""
    from hubbeam.export.finetuning import finetuned_name as name_for
    from hubbeam.hub.metadata import read_metadata
    from hubbeam.hub.resolver import resolve_module

    resolved = resolve_module(base_module)
    return name_for(resolved.handle, read_metadata(resolved.path) or {})


@contextlib.contextmanager
def storage_connection(conn_id: str):
    """Credentials of an Airflow storage connection (aws, google_cloud_platform) for the block; none: the
    environment's own."""
    conn = None
    if conn_id:
        from airflow.sdk import BaseHook

        found = BaseHook.get_connection(conn_id)
        conn = {"conn_type": found.conn_type, "login": found.login, "password": found.password,
                "extra": found.extra_dejson}
    with connection_credentials(conn):
        yield


@contextlib.contextmanager
def connection_credentials(conn: dict | None):
    """An Airflow storage connection's credentials for the storage calls of this block (and no one else's).

    conn: {"conn_type", "login", "password", "extra"} (aws: key id / secret, extra endpoint_url or region_name;
    google_cloud_platform: extra key_path or keyfile_dict). None: the environment's own credentials. They are
    passed to the storage clients (hubbeam.storage.use_credentials), never written to the environment.
    """
    from hubbeam import storage

    credentials = None if not conn else storage.Credentials.from_connection(
        conn["conn_type"], conn.get("login"), conn.get("password"), conn.get("extra"))
    with storage.use_credentials(credentials):
        yield


def sqlalchemy_url(conn_id: str = CORPUS_DB_CONN_ID) -> str:
    """The SQLAlchemy URL of an Airflow connection (or the demo's SQLite file when it is not defined).

    Airflow turns `postgresql://` into conn_type `postgres`; that (or `postgresql` without a driver) gets
    psycopg 3, the PostgreSQL driver hubbeam installs. A driver the connection names (`postgresql+psycopg2://`)
    is kept. get_uri() percent-encodes login and password.
    """
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        from hubbeam.errors import HubbeamError
        from hubbeam.storage import location

        default = location(layout.corpus_database())
        if not default.is_local:
            raise HubbeamError(f"no Airflow connection {conn_id!r} for the corpus database (the SQLite default "
                               f"needs a local data root, not {layout.data_root()}); set AIRFLOW_CONN_"
                               f"{conn_id.upper()}=postgresql://USER:PASSWORD@HOST:PORT/DB")
        return f"sqlite:///{default.path}"
    if conn.conn_type == "sqlite":
        return f"sqlite:///{conn.host}"
    scheme, rest = conn.get_uri().split("://", 1)
    dialect, plus, driver = scheme.partition("+")
    if dialect in ("postgres", "postgresql"):
        scheme = f"postgresql+{driver}" if plus else "postgresql+psycopg"
    return f"{scheme}://{rest}"


# Connection extras passed on to libpq (others, such as Airflow's own, are not libpq parameters).
LIBPQ_EXTRAS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "connect_timeout", "options", "application_name",
                "target_session_attrs")


def postgres_dsn(conn_id: str) -> str:
    """A libpq connection string for an Airflow postgres connection (hubbeam.index.pgvector.load_pgvector):
    built from its fields, not get_uri(), so that Airflow's extras never reach libpq as unknown parameters."""
    from airflow.sdk import BaseHook
    from psycopg.conninfo import make_conninfo

    from hubbeam.errors import HubbeamError

    conn = BaseHook.get_connection(conn_id)
    if conn.conn_type not in ("postgres", "postgresql"):
        raise HubbeamError(f"Airflow connection {conn_id!r} is a {conn.conn_type} connection, not postgres")
    fields = {"host": conn.host, "port": conn.port, "user": conn.login, "password": conn.password,
              "dbname": conn.schema, **{k: v for k, v in conn.extra_dejson.items() if k in LIBPQ_EXTRAS}}
    return make_conninfo(**{k: str(v) for k, v in fields.items() if v not in (None, "")})


@contextlib.contextmanager
def fail_fast():
    """Turn hubbeam's user errors (bad handle, bad columns, …) into a failure that is not retried:
    retrying cannot fix them, and back-off would only delay the message. Storage errors (a store that is
    down, throttling, unreachable) stay retryable: the task's retry policy is for them."""
    from airflow.sdk.exceptions import AirflowFailException

    from hubbeam.errors import HubbeamError, StorageError

    try:
        yield
    except StorageError:
        raise
    except HubbeamError as exc:
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc


def data_interval(context) -> tuple[dt.datetime | None, dt.datetime]:
    """(start, end) of what this run extracts: from the previous successful run's end (None on the first
    run: everything) to this run's data interval end. A re-run of an interval gets the same bounds."""
    end = context["data_interval_end"]
    start = context.get("prev_data_interval_end_success")
    return (start if start and start < end else None), end
