"""Exception types whose messages are shown to users as one line (no traceback) by the CLI."""


class CoordformerError(Exception):
    """Base class: the message is complete and actionable on its own."""


class UsageError(CoordformerError):
    """A bad argument, a missing file, or a combination that cannot work; the message says what to do."""


class TrainingDivergedError(CoordformerError):
    """Training produced non-finite gradients step after step; the last good checkpoint stands."""


class TrainingInterrupted(BaseException):
    """Ctrl-C (SIGINT) or SIGTERM stopped ``pretrain`` / ``finetune``. A BaseException, like
    KeyboardInterrupt, so that no ``except Exception`` swallows it.

    ``step``: the optimizer step ``checkpoint`` was written at when the signal came, or None when
    nothing was saved then (it came while setting up or wrapping up); ``resumable``: a checkpoint to
    resume from exists either way. ``report``: this process should print the message (rank 0 of a
    multi-process run). The CLI prints the message with the command that resumes and exits
    128 + signal number (130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, message: str, signum: int, step: int | None = None, checkpoint: str | None = None,
                 resumable: bool = False, report: bool = True):
        super().__init__(message)
        self.signum, self.step, self.checkpoint, self.resumable, self.report = signum, step, checkpoint, resumable, report

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)
