"""The HTTP front end: validate, spool, answer at once; a flusher sends events on to the stream."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from processor.ingest.config import IngestConfig

if TYPE_CHECKING:
    from processor.ingest.server import FrontEnd

__all__ = ["FrontEnd", "IngestConfig"]


def __getattr__(name: str) -> Any:
    if name == "FrontEnd":
        from processor.ingest.server import FrontEnd

        return FrontEnd
    raise AttributeError(name)
