"""Public entry point for saving and loading pruned models; the implementation lives in :mod:`prunekit.io`."""

from __future__ import annotations

from .io import *  # noqa: F403  (the same public names)
from .io import __all__  # noqa: F401
