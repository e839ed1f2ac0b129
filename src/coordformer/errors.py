"""Exception types whose messages are shown to users as one line (no traceback) by the CLI."""


class CoordformerError(Exception):
    """Base class: the message is complete and actionable on its own."""


class UsageError(CoordformerError):
    """A bad argument, a missing file, or a combination that cannot work; the message says what to do."""


class ConfigError(UsageError, ValueError):
    """A configuration value, or a combination of values, that cannot work (the one configuration
    error type: config records, presets, recipes and keyword arguments all raise it)."""


class OptionError(ConfigError):
    """A parameter whose value cannot work, named as the Python API names it.

    ``option``: the keyword / config field (``"crop_length"``); ``value``: what was given; ``reason``:
    why it cannot work, in terms that hold for the API and the CLI alike. ``str()`` reads
    ``crop_length=2000: exceeds the model's max_len 1024``; the CLI prints the flag instead
    (``--crop-length 2000: ...``, :meth:`flag_message`)."""

    def __init__(self, option: str, value, reason: str):
        self.option, self.value, self.reason = option, value, reason
        super().__init__(f"{option}={value}: {reason}")

    @property
    def flag(self) -> str:
        return "--" + self.option.replace("_", "-")

    def flag_message(self) -> str:
        return f"{self.flag} {self.value}: {self.reason}"


class SequenceTooLong(CoordformerError, ValueError):
    """A chain (or batch row) longer than the model can take: ``length`` residues against the model's
    ``max_len``; ``chain_id`` when known, ``option`` the setting that bounds the length fed to the
    model (``crop_length`` or ``window``) if the caller has one. The CLI adds the flag to change."""

    def __init__(self, length: int, max_len: int, chain_id: str | None = None, option: str | None = "crop_length"):
        self.length, self.max_len, self.chain_id, self.option = int(length), int(max_len), chain_id, option
        what = f"chain {chain_id}" if chain_id else "sequence"
        super().__init__(f"{what} of length {self.length} exceeds the model's max_len {self.max_len}"
                         + (f"; lower {option}" if option else ""))

    def flag_message(self) -> str:
        what = f"chain {self.chain_id}" if self.chain_id else "sequence"
        flag = f"; use a smaller --{self.option.replace('_', '-')}" if self.option else ""
        return f"{what} of length {self.length} exceeds the model's max_len {self.max_len}{flag}"


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
