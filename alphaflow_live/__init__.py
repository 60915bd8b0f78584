"""AlphaFlow Live: your trading portfolio, live in the notebook."""

from .protocol import PROTOCOL_VERSION
from .state import BatchOutcome, PortfolioState

__version__ = "0.1.0"

__all__ = ["PROTOCOL_VERSION", "BatchOutcome", "PortfolioState", "__version__"]
