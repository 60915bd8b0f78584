"""Where events come from besides /ws/ingest: the market simulator and Alpaca, through a SourcePort."""

from .port import ServerPort, Source, SourcePort

__all__ = ["ServerPort", "Source", "SourcePort"]
