"""shardflow's ingest side: CLI, configuration, the event model, the front end and stream adapters."""

from __future__ import annotations

from processor.errors import ShardflowError
from processor.event import EventError, validate_event

__all__ = ["EventError", "ShardflowError", "__version__", "validate_event"]

__version__ = "0.1.0"
