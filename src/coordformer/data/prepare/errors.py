"""The error of the prepare package (its own module so that every other module can raise it)."""

from __future__ import annotations

from ...errors import CoordformerError, OptionError


class PrepareError(CoordformerError, RuntimeError):
    """prepare() cannot run as asked (existing dataset, mismatched interrupted run, no inputs)."""


class PrepareOptionError(PrepareError, OptionError):
    """A prepare setting that cannot work here, named as its parameter (``OptionError``) so that the
    CLI prints its flag; still a PrepareError for callers that catch those."""
