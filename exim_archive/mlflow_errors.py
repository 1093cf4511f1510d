"""Where MLflow, HTTP and database exceptions become exim-archive errors (source and sink), and
where transient failures are retried.

:class:`Caller` runs one call: transient failures (HTTP 429 and 5xx, connection resets and
refusals, timeouts) are retried with exponential backoff and counted; permanent ones (401, 403,
404, invalid parameters) and anything after the last attempt leave at once as one
:class:`ArchiveError` line naming the server and the object. MLflow's own HTTP retries are turned
off (unless the user set ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``) so that retries are ours, bounded
and counted.
"""

from __future__ import annotations

import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TypeVar

from .errors import ArchiveError
from .pool import check_stop

__all__ = ["Caller", "check_reachable", "disable_mlflow_retries", "is_transient"]

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


def _first_line(text: str, limit: int = 300) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line[:limit]


def is_transient(exc: BaseException) -> bool:
    """True for failures worth retrying: the same call may well succeed a moment later."""
    import requests
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        if exc.error_code in _PERMANENT_CODES:
            return False
        if exc.get_http_status_code() in _TRANSIENT_STATUS and exc.error_code != "INTERNAL_ERROR":
            return True
        text = str(exc.message).lower()
        return any(word in text for word in _TRANSIENT_WORDS)
    if isinstance(exc, requests.HTTPError):
        status = exc.response.status_code if exc.response is not None else 0
        return status in _TRANSIENT_STATUS
    return isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError))


def disable_mlflow_retries() -> None:
    """Make retries ours (counted, bounded) unless the user configured MLflow's own."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")


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
        """``fn()``; on a transient failure wait and try again (``before_retry`` may find that
        a non-idempotent call did land after all and return its result instead)."""
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            check_stop()
            try:
                return fn()
            except ArchiveError:
                raise
            except Exception as exc:
                if not (retry and attempt < self.attempts and is_transient(exc)):
                    raise self._translate(what, exc) from None
            with self._lock:
                self.retries += 1
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
            if before_retry is not None:
                try:
                    landed = before_retry()
                except Exception as exc:
                    if not is_transient(exc):
                        raise self._translate(what, exc) from None
                    landed = None
                if landed is not None:
                    return landed
        raise AssertionError("unreachable")  # pragma: no cover

    def _translate(self, what: str, exc: Exception) -> ArchiveError:
        import requests
        from mlflow.exceptions import MlflowException

        if isinstance(exc, ModuleNotFoundError):
            return self.error(
                f"{what} failed: the Python module {exc.name!r} is not installed",
                where=self.where,
                hint="install the database driver, e.g. pip install 'exim-archive[postgres]' "
                "or 'exim-archive[mysql]'",
            )
        if isinstance(exc, MlflowException):
            text = _first_line(exc.message or str(exc.error_code))
            if exc.error_code in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
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


def check_reachable(uri: str, safe_uri: str, error: type[ArchiveError]) -> None:
    """Fail fast, in one line, when an http(s) tracking server does not answer ``/health``."""
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=15) as resp:
            resp.read()
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise error(
                f"the tracking server refused access (HTTP {exc.code})",
                where=safe_uri,
                hint="set MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN",
            ) from None
        if exc.code != 404:
            raise error(
                f"the tracking server answered HTTP {exc.code} on /health",
                where=safe_uri,
                hint="check that the URI points at an MLflow tracking server",
            ) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise error(
            f"cannot reach the tracking server ({reason})",
            where=safe_uri,
            hint="check that it is running and the URI is right, then run again",
        ) from None
