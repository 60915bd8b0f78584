"""The kernel side's exceptions, below everything that raises them."""

from __future__ import annotations


class AuthError(RuntimeError):
    """The server refused the token (401) or its role (403); retrying would not help."""
