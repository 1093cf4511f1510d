"""Tracking URIs: which one to use, what kind it is, and how to show it without secrets."""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit, urlunsplit

from .errors import UsageError

__all__ = ["allow_file_store", "redact_uri", "resolve_tracking_uri", "uri_kind"]

_DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


def resolve_tracking_uri(given: str | None) -> str:
    """``given``, else ``MLFLOW_TRACKING_URI``, else an error saying how to name one."""
    uri = given or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise UsageError(
            "no tracking URI given",
            hint="pass --tracking-uri URI or set MLFLOW_TRACKING_URI",
        )
    return uri


def uri_kind(uri: str) -> str:
    """``http``, ``database`` or ``file`` (a local or file:// file store)."""
    scheme = urlsplit(uri).scheme.lower()
    if scheme in ("http", "https"):
        return "http"
    if scheme.split("+")[0] in _DB_SCHEMES:
        return "database"
    if scheme in ("", "file") or re.match(r"^[a-z]$", scheme):
        return "file"
    return scheme


def redact_uri(uri: str) -> str:
    """The URI without user, password, query string or fragment: safe to store and print."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparseable uri>"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port else host
    if uri[len(parts.scheme) + 1 :].startswith("//"):
        return f"{parts.scheme}://{netloc}{parts.path}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def allow_file_store(uri: str) -> None:
    """Let MLflow open a file store: it refuses by default (maintenance mode), yet moving data
    off a file store is one of the jobs exim-archive exists for."""
    if uri_kind(uri) == "file":
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
