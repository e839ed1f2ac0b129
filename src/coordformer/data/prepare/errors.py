"""The error of the prepare package (its own module so that every other module can raise it)."""

from __future__ import annotations

from ...errors import CoordformerError


class PrepareError(CoordformerError, RuntimeError):
    """prepare() cannot run as asked (existing dataset, mismatched interrupted run, no inputs)."""
