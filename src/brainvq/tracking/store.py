"""Reach the MLflow tracking store quickly or fail in one line, and never print its password.

MLflow's own clients are patient: an HTTP request is retried 7 times with exponential back-off (minutes against a
server that is down), and a database store retries its first connection 10 times (about 100 s for a wrong user).
That suits a long training run riding out a server restart, not a user who mistyped ``MLFLOW_TRACKING_URI``. So the
CLI probes the store once, without retries, before the first MLflow call (:func:`check_tracking_store`), and gives
MLflow's HTTP client a bounded retry budget unless the user chose one (:func:`apply_http_defaults`).

Torch-free and MLflow-free at import time (the onnxruntime sampler uses it).
"""

from __future__ import annotations

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


def normalise_postgres_uri(uri: str) -> str:
    """SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, which brainvq does not install: name psycopg2."""
    import importlib.util

    if uri.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None:
        return "postgresql+psycopg2://" + uri[len("postgresql://"):]
    return uri


def check_tracking_store() -> str:
    """Probe the active tracking URI once per process (HTTP server or database); returns it.

    Raises :class:`TrackingError` in one line, with any password shown as ``***``. Local stores (SQLite, files) are
    not probed: MLflow creates them.
    """
    import mlflow

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
    _checked.add(uri)
    return uri
