"""AlphaFlow Live: your trading portfolio, live in the notebook.

import alphaflow_live as afl
live = afl.connect()        # ALPHAFLOW_URL / ALPHAFLOW_TOKEN
live.positions              # a DataFrame that is always current
"""

from __future__ import annotations

from typing import Any

from .client import AuthError, PortfolioStream
from .freshness import FreshnessRules
from .protocol import PROTOCOL_VERSION
from .state import BatchOutcome, PortfolioState

__version__ = "0.1.0"


def connect(url: str | None = None, token: str | None = None, **options: Any) -> PortfolioStream:
    """Start streaming the portfolio in the background and return at once.

    ``url`` defaults to ``$ALPHAFLOW_URL`` (else ws://127.0.0.1:8765/ws/portfolio),
    ``token`` to ``$ALPHAFLOW_TOKEN``. Options: ``channels``, ``poll_interval_s``,
    ``freshness`` (FreshnessRules), ``max_fills``, ``backoff_base_s``,
    ``backoff_cap_s``, ``fallback_after_failures``, ``connect_timeout_s``.
    """
    return PortfolioStream(url, token, **options)


_LAZY = {
    # Widgets pull in anywidget and ipywidgets: imported on first use, so that
    # scripts and the server do not pay for them.
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
    import importlib

    return getattr(importlib.import_module(f".{module}", __name__), name)


__all__ = [
    "PROTOCOL_VERSION",
    "AccountSummary",
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
