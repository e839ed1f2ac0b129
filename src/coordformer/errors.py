"""Exception types whose messages are shown to users as one line (no traceback) by the CLI."""


class CoordformerError(Exception):
    """Base class: the message is complete and actionable on its own."""


class UsageError(CoordformerError):
    """A bad argument, a missing file, or a combination that cannot work; the message says what to do."""


class TrainingDivergedError(CoordformerError):
    """Training produced non-finite gradients step after step; the last good checkpoint stands."""
