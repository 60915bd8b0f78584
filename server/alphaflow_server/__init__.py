"""AlphaFlow Live stream server: per-user, batched portfolio streams over WebSocket."""

from .app import StreamServer
from .config import ServerConfig

__all__ = ["ServerConfig", "StreamServer"]
