"""Where MLflow, HTTP and database exceptions become exim-archive errors (source and sink), and
where transient failures are retried.

:class:`Caller` runs one call: transient failures (HTTP 429 and 5xx, connection resets and
refusals, timeouts) are retried with exponential backoff and counted; permanent ones (401, 403,
404, invalid parameters) and anything after the last attempt leave at once as one
:class:`ArchiveError` line naming the server and the object. MLflow's own HTTP retries are turned
off (unless the user set ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``) so that retries are ours, bounded
and counted. Every text taken from a foreign exception is passed through :func:`scrub` first:
MLflow's messages carry the tracking URI, credentials included.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import ArchiveError
from .pool import check_stop
from .uri import allow_file_store, uri_kind

__all__ = [
    "Caller",
    "check_reachable",
    "disable_mlflow_retries",
    "is_transient",
    "mlflow_error",
    "open_client",
    "refuse_unless_active",
    "scrub",
    "skip_absent_databricks_probes",
]

T = TypeVar("T")

_DRIVER_MODULES = ("sqlalchemy", "psycopg", "psycopg2", "pymysql", "sqlite3", "alembic")
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_PERMANENT_CODES = frozenset(
    {
        "INVALID_PARAMETER_VALUE",
        "RESOURCE_DOES_NOT_EXIST",
        "RESOURCE_ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
        "BAD_REQUEST",
        "ENDPOINT_NOT_FOUND",
        "INVALID_STATE",
    }
)
_TRANSIENT_WORDS = (
    "max retries exceeded",
    "connection aborted",
    "connection reset",
    "connection refused",
    "remotedisconnected",
    "read timed out",
    "too many 503",
    "too many 502",
    "too many 500",
    "too many 429",
    "bad gateway",
    "service unavailable",
    "temporarily unavailable",
)


# Credentials that may ride along in an exception's text: MLflow puts the tracking URI, userinfo
# included, into its messages ("API request to http://user:pass@host/... failed ...").
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s'\"<>]*@")
_SECRET_QUERY = re.compile(
    r"(?i)([?&;][^=&\s'\"]*(?:token|key|secret|passw|pwd|auth|sig|credential)[^=&\s'\"]*=)"
    r"[^&\s'\"]+"
)
_SECRET_ENV = (
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_PASSWORD",
    "DATABRICKS_TOKEN",
    "DATABRICKS_CLIENT_SECRET",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_CONNECTION_STRING",
)


def scrub(text: str) -> str:
    """``text`` without credentials: URL userinfo dropped, secret-looking query values and the
    values of the usual secret environment variables masked. For every message we print."""
    text = _USERINFO.sub(r"\1", text)
    text = _SECRET_QUERY.sub(r"\1***", text)
    for name in _SECRET_ENV:
        value = os.environ.get(name, "")
        if len(value) >= 4 and value in text:
            text = text.replace(value, "***")
    return text


def _first_line(text: str, limit: int = 300) -> str:
    text = scrub(text)
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line[:limit]


def _mlflow_exception() -> type[Exception] | None:
    """MLflow's exception class if MLflow is loaded (else no exception can be one: the direct
    SQL target runs without importing it, and an error must not cost that import)."""
    module = sys.modules.get("mlflow.exceptions")
    found: type[Exception] | None = getattr(module, "MlflowException", None)
    return found


def mlflow_error(message: str, code: str) -> Exception:
    """The ``MlflowException`` MLflow's store raises for ``message`` with error code ``code``
    (a name in ``databricks_pb2``, e.g. ``"RESOURCE_DOES_NOT_EXIST"``): the direct SQL writers
    refuse what the store refuses, with its words. Imports MLflow, so only on the way out."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos import databricks_pb2

    return MlflowException(message, error_code=getattr(databricks_pb2, code))


def refuse_unless_active(kind: str, ident: object, stage: str | None) -> None:
    """MLflow's refusal of a write to an experiment or run (``kind``) that is missing (``stage``
    None) or not active, in its words."""
    if stage is None:
        if kind == "experiment":
            raise mlflow_error(f"No Experiment with id={ident} exists", "RESOURCE_DOES_NOT_EXIST")
        raise mlflow_error(f"Run with id={ident} not found", "RESOURCE_DOES_NOT_EXIST")
    if stage != "active":
        raise mlflow_error(
            f"The {kind} {ident} must be in the 'active' state. Current state is {stage}.",
            "INVALID_PARAMETER_VALUE",
        )


def is_transient(exc: BaseException) -> bool:
    """True for failures worth retrying: the same call may well succeed a moment later."""
    import requests

    MlflowException = _mlflow_exception()
    if MlflowException is not None and isinstance(exc, MlflowException):
        err: Any = exc
        if err.error_code in _PERMANENT_CODES:
            return False
        if err.get_http_status_code() in _TRANSIENT_STATUS and err.error_code != "INTERNAL_ERROR":
            return True
        text = str(err.message).lower()
        return any(word in text for word in _TRANSIENT_WORDS)
    if isinstance(exc, requests.HTTPError):
        status = exc.response.status_code if exc.response is not None else 0
        return status in _TRANSIENT_STATUS
    if type(exc).__module__.split(".")[0] in _DRIVER_MODULES:
        # Concurrent writers collide in the database; the same statement succeeds when retried
        # (the metric writes are idempotent).
        text = str(exc).lower()
        return any(word in text for word in _DATABASE_CONTENTION)
    return isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError))


_DATABASE_CONTENTION = (
    "deadlock found",  # MySQL/MariaDB 1213
    "lock wait timeout",  # MySQL/MariaDB 1205
    "deadlock detected",  # PostgreSQL 40P01
    "could not serialize",  # PostgreSQL 40001
    "database is locked",  # SQLite busy
)


def disable_mlflow_retries() -> None:
    """Make retries ours (counted, bounded) unless the user configured MLflow's own."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")


_DATABRICKS_PROBES = {
    "IPython": ("IPython",),
    "pyspark": ("pyspark", "pyspark.sql"),
    "dbruntime": ("dbruntime", "dbruntime.databricks_repl_context"),
}
"""Package -> the modules MLflow 3.17's request-header providers import from it."""


def skip_absent_databricks_probes() -> None:
    """Make MLflow's per-request Databricks check cheap where Databricks cannot be.

    Before every HTTP request MLflow's request-header providers ask whether they run in a
    Databricks notebook, job or cluster by importing ``IPython``, ``pyspark`` and ``dbruntime``.
    Where these are not installed each request searches ``sys.path`` for them again, under the
    import locks: ~1 ms of CPU a request, and threads making requests queue on those locks (a
    quarter of the samples of a pack over HTTP). The modules of a package that cannot be found
    are entered as ``None`` in ``sys.modules``, which makes Python fail their import at once,
    with no lock taken; installed packages are left alone, so the answer MLflow gets (not in
    Databricks) is the same."""
    import importlib.util
    import sys

    for package, modules in _DATABRICKS_PROBES.items():
        if package not in sys.modules and importlib.util.find_spec(package) is None:
            for name in modules:
                sys.modules[name] = None  # type: ignore[assignment]


def _driver_hint(missing: str | None) -> str:
    """What to do about a database driver that is not installed. SQLAlchemy 2.1 (MLflow's)
    connects ``postgresql://`` with psycopg, where 2.0 took psycopg2: a store used to psycopg2
    then fails here although pack (which reads with either) did not."""
    import importlib.util

    if missing == "psycopg" and importlib.util.find_spec("psycopg2") is not None:
        return (
            "SQLAlchemy 2.1 connects postgresql:// with psycopg; psycopg2 is installed: write "
            "postgresql+psycopg2:// to use it, or pip install 'exim-archive[postgres]'"
        )
    return (
        "install the database driver, e.g. pip install 'exim-archive[postgres]' or "
        "'exim-archive[mysql]'"
    )


class Caller:
    """Runs calls against one server with retries, and counts the retries it made."""

    def __init__(
        self,
        error: type[ArchiveError],
        where: str,
        hint: str,
        attempts: int | None = None,
        backoff: float | None = None,
    ) -> None:
        self.error = error
        self.where = where
        self.hint = hint
        self.attempts = attempts or int(os.environ.get("EXIM_RETRY_ATTEMPTS", "6"))
        self.backoff = (
            backoff if backoff is not None else float(os.environ.get("EXIM_RETRY_BACKOFF", "0.5"))
        )
        self.retries = 0
        self._lock = threading.Lock()

    def __call__(
        self,
        what: str,
        fn: Callable[[], T],
        *,
        retry: bool = True,
        before_retry: Callable[[], T | None] | None = None,
    ) -> T:
        """``fn()``; on a transient failure wait and try again.

        ``before_retry`` guards a non-idempotent ``fn``: after a failed attempt (which may have
        landed, its reply lost) it runs before ``fn`` is issued again and may return the
        result of the attempt that landed. ``fn`` is re-issued only once ``before_retry`` has
        answered None; while the check itself fails transiently it is retried, never skipped
        (skipping it would duplicate a write that landed). Checks and calls share one budget
        of ``attempts``."""
        delay = self.backoff
        unsure = False  # an attempt of fn failed and may have landed: check before re-issuing
        for attempt in range(1, self.attempts + 1):
            check_stop()
            try:
                if unsure and before_retry is not None:
                    landed = before_retry()
                    if landed is not None:
                        return landed
                unsure = False
                return fn()
            except ArchiveError:
                raise
            except Exception as exc:
                if not (retry and attempt < self.attempts and is_transient(exc)):
                    raise self._translate(what, exc) from None
                unsure = True
            with self._lock:
                self.retries += 1
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
        raise AssertionError("unreachable")  # pragma: no cover

    def _translate(self, what: str, exc: Exception) -> ArchiveError:
        import requests

        MlflowException = _mlflow_exception()
        if isinstance(exc, ModuleNotFoundError):
            return self.error(
                f"{what} failed: the Python module {exc.name!r} is not installed",
                where=self.where,
                hint=_driver_hint(exc.name),
            )
        if MlflowException is not None and isinstance(exc, MlflowException):
            err: Any = exc
            text = _first_line(err.message or str(err.error_code))
            if err.error_code in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
                return self.error(
                    f"{what} was refused: {text}",
                    where=self.where,
                    hint="check the credentials (MLFLOW_TRACKING_USERNAME/PASSWORD or "
                    "MLFLOW_TRACKING_TOKEN) and their permissions",
                )
            return self.error(f"{what} failed: {text}", where=self.where, hint=self.hint)
        if (
            isinstance(exc, (requests.RequestException, OSError))
            or type(exc).__module__.split(".")[0] in _DRIVER_MODULES
        ):
            return self.error(
                f"{what} failed: {type(exc).__name__}: {_first_line(str(exc))}",
                where=self.where,
                hint=self.hint,
            )
        raise exc


def _health(uri: str) -> int:
    """GET ``/health`` the way MLflow itself talks to the server: the same URL building, the same
    credentials (URI userinfo, MLFLOW_TRACKING_USERNAME/PASSWORD or _TOKEN, auth plugins) and the
    same TLS settings. Returns the HTTP status; connection failures raise."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    resp = http_request(
        get_default_host_creds(uri),
        "/health",
        "GET",
        max_retries=0,
        timeout=15,
        raise_on_status=False,
    )
    return int(resp.status_code)


def _reason(exc: BaseException) -> str:
    """The short cause of a failed connection, e.g. ``[Errno 111] Connection refused``."""
    text = scrub(str(exc))
    for pattern in (r"\[Errno -?\d+\][^'\")\]]*", r"\[SSL: [^\]]*\][^'\")\]]*"):
        found = re.search(pattern, text)
        if found:
            return found.group(0).strip()
    for words in ("certificate verify failed", "timed out", "Connection aborted", "reset by peer"):
        if words.lower() in text.lower():
            return words
    return _first_line(text, 200)


def check_reachable(uri: str, safe_uri: str, error: type[ArchiveError]) -> None:
    """Fail fast, in one line, when an http(s) tracking server does not answer ``/health``.

    A refused connection or an unknown host fails at once; a transient answer (HTTP 408, 429,
    5xx) or a dropped connection is tried again like any other call (EXIM_RETRY_ATTEMPTS,
    EXIM_RETRY_BACKOFF)."""
    attempts = int(os.environ.get("EXIM_RETRY_ATTEMPTS", "6"))
    delay = float(os.environ.get("EXIM_RETRY_BACKOFF", "0.5"))
    for attempt in range(1, max(1, attempts) + 1):
        last = attempt >= attempts
        try:
            status = _health(uri)
        except Exception as exc:
            reason = _reason(exc)
            dropped = any(w in reason.lower() for w in ("aborted", "reset by peer"))
            if last or not dropped:
                raise error(
                    f"cannot reach the tracking server ({reason})",
                    where=safe_uri,
                    hint="check that it is running and the URI is right, then run again",
                ) from None
        else:
            if status < 400 or status == 404:
                return
            if status in (401, 403):
                raise error(
                    f"the tracking server refused access (HTTP {status})",
                    where=safe_uri,
                    hint="set MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN",
                )
            if last or status not in _TRANSIENT_STATUS:
                raise error(
                    f"the tracking server answered HTTP {status} on /health",
                    where=safe_uri,
                    hint="check that the URI points at an MLflow tracking server"
                    if status not in _TRANSIENT_STATUS
                    else "it may be overloaded or restarting; run again in a moment",
                )
        check_stop()
        time.sleep(delay)
        delay = min(delay * 2, 30.0)


def _quiet_database_retries() -> None:
    """MLflow tries a database 10 times over ~100 s, logging a WARNING each time; ours are the
    retries (counted, bounded) and the one error line, so MLflow gets one try and stays quiet."""
    import logging

    import mlflow.store.db.utils as db_utils

    db_utils.MAX_RETRY_COUNT = 1
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.ERROR)


def open_client(uri: str, call: Caller) -> Any:
    """An ``MlflowClient`` for ``uri`` that has answered one call: fails fast, in one line, on an
    unreachable server, and makes retries ours (see module docstring)."""
    from mlflow import MlflowClient

    if uri_kind(uri) == "http":
        check_reachable(uri, call.where, call.error)
        disable_mlflow_retries()
        skip_absent_databricks_probes()
    allow_file_store(uri)
    if uri_kind(uri) == "database":
        _quiet_database_retries()

    def connect() -> Any:
        # the registry lives on the same server; never the process-wide registry URI
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.search_experiments(max_results=1)
        return client

    return call("connecting", connect)
