"""Reach the MLflow tracking store quickly or fail in one line, and never print its password.

MLflow's own clients are patient: an HTTP request is retried 7 times with exponential back-off (minutes against a
server that is down), and a database store retries its first connection 10 times (about 100 s for a wrong user).
That suits a long training run riding out a server restart, not a user who mistyped ``MLFLOW_TRACKING_URI``. So the
CLI probes the store once, without retries, before the first MLflow call (:func:`check_tracking_store`), and gives
MLflow's HTTP client a bounded retry budget unless the user chose one (:func:`apply_http_defaults`).

A SQLite store is opened for writing under an exclusive lock on the file while MLflow creates or upgrades its schema:
MLflow's migrations are not safe to run twice at once (two commands started together on a fresh ``mlflow.db`` race
on ``ALTER TABLE`` and one dies), so the second command waits for the first and then finds the schema in place. A
file that is not a SQLite database, a damaged one, or one in a folder that cannot be written is one line naming it.

Torch-free and MLflow-free at import time (the onnxruntime sampler uses it).
"""

from __future__ import annotations

import contextlib
import os
import re
from urllib.parse import urlsplit, urlunsplit

from brainvq.errors import TrackingError, one_line

PROBE_TIMEOUT_S = 5
# Bounded but still patient: about 1+2+4+8 s of back-off (plus jitter) per request, enough to ride out a server
# restart mid-training without hanging for minutes per logged metric when the server is gone for good.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}
DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")
_checked: set[str] = set()


def apply_http_defaults() -> None:
    """Set MLflow's HTTP retry/timeout variables to :data:`HTTP_DEFAULTS` where the user has not set them."""
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


def hide_password(uri: str) -> str:
    """``scheme://user:secret@host/db`` -> ``scheme://user:***@host/db`` (other URIs unchanged)."""
    try:
        parts = urlsplit(uri)
        if parts.password is None:
            return uri
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:  # not parseable as a URL: drop everything before the host to be safe
        return uri.rsplit("@", 1)[-1]


def scrub(text: str, uri: str | None = None) -> str:
    """``text`` with the password of ``uri`` (default: ``MLFLOW_TRACKING_URI``) replaced by ``***``."""
    uri = uri if uri is not None else os.environ.get("MLFLOW_TRACKING_URI", "")
    try:
        password = urlsplit(uri).password
    except ValueError:
        password = None
    return text.replace(password, "***") if password else text


def _reason(exc: BaseException) -> str:
    """A short cause: ``Connection refused`` rather than urllib3's nested repr."""
    text = one_line(exc, limit=None)
    errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if errno:
        return errno.group(1).strip()
    return one_line(exc)


def _check_http(uri: str) -> None:
    import requests

    try:
        # Any HTTP answer (even 401/404 behind a proxy) proves the server is there; only no answer is an error. Not
        # /health: MLflow 3's Host-header check exempts it, and a rejected Host is the other thing worth one line.
        r = requests.get(uri.rstrip("/") + "/api/2.0/mlflow/experiments/get-by-name",
                         params={"experiment_name": "Default"}, timeout=PROBE_TIMEOUT_S, allow_redirects=False)
        if r.status_code == 403 and "Invalid Host header" in r.text:
            host = urlsplit(uri).netloc.rsplit("@", 1)[-1]
            raise TrackingError(f"MLflow tracking server {hide_password(uri)} rejects the Host header {host!r}; "
                                f"start it with --allowed-hosts {host} (MLflow 3 accepts localhost and private IPs "
                                "by default)")
    except requests.exceptions.SSLError:
        return  # something answered; MLflow applies the user's TLS settings (MLFLOW_TRACKING_INSECURE_TLS, ...)
    except requests.exceptions.Timeout:
        raise TrackingError(f"MLflow tracking server {hide_password(uri)} did not answer within {PROBE_TIMEOUT_S} s; "
                            "check that it runs and MLFLOW_TRACKING_URI") from None
    except requests.exceptions.RequestException as exc:
        raise TrackingError(f"MLflow tracking server {hide_password(uri)} is unreachable ({scrub(_reason(exc), uri)}); "
                            "start it (`mlflow server ...`) or fix MLFLOW_TRACKING_URI") from None


def _check_database(uri: str) -> None:
    import sqlalchemy

    try:
        url = sqlalchemy.engine.make_url(uri)
        # psycopg2's own connect timeout: an unroutable host otherwise blocks for the OS default (minutes).
        args = {"connect_timeout": PROBE_TIMEOUT_S} if url.get_driver_name() == "psycopg2" else {}
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool, connect_args=args)
    except ImportError as exc:
        raise TrackingError(f"MLflow tracking store {hide_password(uri)} needs a database driver that is not "
                            f"installed ({exc}); for PostgreSQL use postgresql+psycopg2://") from None
    except Exception as exc:  # malformed URL
        raise TrackingError(f"bad MLFLOW_TRACKING_URI {hide_password(uri)} ({scrub(_reason(exc), uri)})") from None
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc
        raise TrackingError(f"MLflow tracking database {hide_password(uri)} refused the connection "
                            f"({scrub(_reason(cause), uri)})") from None
    finally:
        engine.dispose()


SQLITE_LOCK_TIMEOUT_S = 120  # a schema creation takes about a second; an upgrade of a big store takes longer


@contextlib.contextmanager
def _exclusive(fd: int, path: str):
    """An advisory ``flock`` on the database file (independent of SQLite's own byte-range locks, so it never blocks
    a SQLite reader or writer; it only orders brainvq processes that are creating the schema)."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; MLflow's own behaviour
        yield
        return
    import time

    deadline = time.monotonic() + SQLITE_LOCK_TIMEOUT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise TrackingError(f"MLflow tracking store {path} stayed locked by another process for "
                                    f"{SQLITE_LOCK_TIMEOUT_S} s while it created the schema; retry") from None
            time.sleep(0.1)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _check_sqlite(uri: str) -> None:
    """Open the SQLite store for writing and let MLflow create or upgrade its schema, one process at a time."""
    import sqlite3

    import sqlalchemy

    database = sqlalchemy.engine.make_url(uri).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = os.path.abspath(database)
    fix = "point MLFLOW_TRACKING_URI at a writable sqlite:///path, or run from a writable folder"
    try:  # a new store is an empty file, which SQLite treats as an empty database
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise TrackingError(f"MLflow tracking store {path} cannot be written ({exc.strerror}); {fix}") from None
    try:
        with _exclusive(fd, path):
            try:
                with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn:
                    conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # reads the header and schema
                    conn.execute("BEGIN IMMEDIATE")  # takes the write lock: a read-only file or folder fails here
                    conn.rollback()
            except sqlite3.DatabaseError as exc:
                if "readonly" in str(exc):
                    raise TrackingError(f"MLflow tracking store {path} cannot be written ({exc}); {fix}") from None
                raise TrackingError(f"MLflow tracking store {path} is not a usable SQLite database ({exc}); move it "
                                    "aside (MLflow creates a new one in its place) or point MLFLOW_TRACKING_URI at "
                                    "another store") from None
            _create_schema(uri, path)
    finally:
        os.close(fd)


def _create_schema(uri: str, path: str) -> None:
    """Build MLflow's tracking and registry stores (which create or migrate the tables) while the lock is held; MLflow
    caches them per URI, so later calls in this process reuse them."""
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)
        client.search_registered_models(max_results=1)
    except Exception as exc:  # a damaged page past the header, a schema from a newer MLflow
        raise TrackingError(f"MLflow tracking store {path} cannot be used ({_reason(exc)}); move it aside (MLflow "
                            "then creates a new one) or upgrade it with `mlflow db upgrade`") from None


def normalise_postgres_uri(uri: str) -> str:
    """SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, which brainvq does not install: name psycopg2."""
    import importlib.util

    if uri.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None:
        return "postgresql+psycopg2://" + uri[len("postgresql://"):]
    return uri


def check_tracking_store() -> str:
    """Probe the active tracking URI once per process (HTTP server or database); returns it.

    Raises :class:`TrackingError` in one line, with any password shown as ``***``. A SQLite store is opened for
    writing and its schema created under a file lock (:func:`_check_sqlite`); file stores are not probed.
    """
    import mlflow

    from brainvq.logs import quiet_libraries

    quiet_libraries()  # mlflow is imported now: its own handlers get the filter
    uri = mlflow.get_tracking_uri()
    fixed = normalise_postgres_uri(uri)
    if fixed != uri:
        uri = fixed
        mlflow.set_tracking_uri(uri)
        if os.environ.get("MLFLOW_TRACKING_URI"):
            os.environ["MLFLOW_TRACKING_URI"] = uri  # the steps `mlflow run` starts inherit the working URI
    if uri in _checked:
        return uri
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme in ("http", "https"):
        _check_http(uri)
    elif scheme in DATABASE_SCHEMES:
        _check_database(uri)
    elif scheme == "sqlite":
        _check_sqlite(uri)
    _checked.add(uri)
    return uri
