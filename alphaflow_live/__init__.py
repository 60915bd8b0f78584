"""AlphaFlow Live: your trading portfolio, live in the notebook.

import alphaflow_live as afl
live = afl.connect()        # ALPHAFLOW_URL / ALPHAFLOW_TOKEN
live.positions              # a DataFrame that is always current

This package holds the kernel side and, at its bottom, the wire layer
(``protocol``, ``codes``, ``state``, ``metrics``: msgspec and the standard
library only), which the stream server imports too. Everything here is
imported on first use, so importing the wire layer loads no pandas, numpy,
websockets or widgets.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .alerts import Alert, AlertHandle, AlertState
    from .client import PortfolioStream, connect
    from .errors import AuthError
    from .freshness import FreshnessRules
    from .protocol import PROTOCOL_VERSION
    from .report import show_snapshot, snapshot_html
    from .state import BatchOutcome, PortfolioState
    from .widgets import AccountSummary, ConnectionStatus, LiveBadge, PortfolioWidget, PositionsTable

# name → the module that defines it
_LAZY = {
    "Alert": "alerts",
    "AlertHandle": "alerts",
    "AlertState": "alerts",
    "connect": "client",
    "PortfolioStream": "client",
    "AuthError": "errors",
    "FreshnessRules": "freshness",
    "PROTOCOL_VERSION": "protocol",
    "BatchOutcome": "state",
    "PortfolioState": "state",
    "PortfolioWidget": "widgets",
    "ConnectionStatus": "widgets",
    "LiveBadge": "widgets",
    "PositionsTable": "widgets",
    "AccountSummary": "widgets",
    "show_snapshot": "report",
    "snapshot_html": "report",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'alphaflow_live' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next lookup does not come back here
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "PROTOCOL_VERSION",
    "AccountSummary",
    "Alert",
    "AlertHandle",
    "AlertState",
    "AuthError",
    "BatchOutcome",
    "ConnectionStatus",
    "FreshnessRules",
    "LiveBadge",
    "PortfolioState",
    "PortfolioStream",
    "PortfolioWidget",
    "PositionsTable",
    "__version__",
    "connect",
    "show_snapshot",
    "snapshot_html",
]
