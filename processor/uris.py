"""URI helpers shared by every backend: SQLite paths (SQLAlchemy's rule) and password masking."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

from processor.errors import ConfigError

__all__ = ["mask_uri", "query_params", "sqlite_path"]


def sqlite_path(uri: str) -> Path:
    """`sqlite:///rel/path.db` is relative to the working directory, `sqlite:////abs/path.db` absolute."""
    if not uri.startswith("sqlite:///"):
        raise ConfigError(f"SQLite URI must be sqlite:///relative.db or sqlite:////absolute.db: {uri!r}")
    rest = uri[len("sqlite:///") :].split("?", 1)[0]
    if not rest or rest == "/":
        raise ConfigError(f"SQLite URI names no file: {uri!r}")
    return Path(rest)


def query_params(uri: str) -> dict[str, str]:
    """The query string of a URI as a flat dict (last value wins)."""
    return {k: v[-1] for k, v in parse_qs(urlsplit(uri).query).items()}


def mask_uri(uri: str) -> str:
    """The URI with any password replaced by `***`, for logs, status lines and errors."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))
