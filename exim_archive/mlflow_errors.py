"""Where MLflow, HTTP and database exceptions become exim-archive errors (source and sink)."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import ArchiveError

__all__ = ["check_reachable", "translating"]

_DRIVER_MODULES = ("sqlalchemy", "psycopg2", "pymysql", "sqlite3", "alembic")


def _first_line(text: str, limit: int = 300) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line[:limit]


@contextmanager
def translating(error: type[ArchiveError], what: str, where: str, hint: str) -> Iterator[None]:
    """Run the body; MLflow, HTTP, OS and database errors leave as ``error``, one line each."""
    import requests
    from mlflow.exceptions import MlflowException

    try:
        yield
    except ArchiveError:
        raise
    except ModuleNotFoundError as exc:
        raise error(
            f"{what} failed: the Python module {exc.name!r} is not installed",
            where=where,
            hint="install the database driver, e.g. pip install 'exim-archive[postgres]' "
            "or 'exim-archive[mysql]'",
        ) from None
    except MlflowException as exc:
        raise error(
            f"{what} failed: {_first_line(exc.message or str(exc.error_code))}",
            where=where,
            hint=hint,
        ) from None
    except (requests.RequestException, OSError) as exc:
        raise error(
            f"{what} failed: {type(exc).__name__}: {_first_line(str(exc))}", where=where, hint=hint
        ) from None
    except Exception as exc:
        if type(exc).__module__.split(".")[0] in _DRIVER_MODULES:
            raise error(
                f"{what} failed: {type(exc).__name__}: {_first_line(str(exc))}",
                where=where,
                hint=hint,
            ) from None
        raise


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
