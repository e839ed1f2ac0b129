"""Exception types whose messages are shown to users as one line (no traceback) by the CLI.

Library code speaks to Python callers: it names parameters as the API does, in backticks
(`` `crop_length` ``, `` `numbering='index'` ``), and never as command-line flags. The CLI prints
:meth:`CoordformerError.flag_message` instead of ``str()``: the same message with each named
parameter written as its flag (``--crop-length``, ``--numbering index``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

#: A parameter named in a message: `name` or `name=value` (backticks included).
_NAMED = re.compile(r"`([a-z][a-z0-9_]*)(?:=([^`]*))?`")


def flag_of(option: str, flags: Mapping[str, str] | None = None) -> str:
    """The command-line flag of the API parameter ``option``: ``flags[option]`` where the CLI names
    it otherwise (``out_dir`` -> ``--out``), else ``--`` and the name with dashes."""
    return (flags or {}).get(option) or "--" + option.replace("_", "-")


def with_flags(text: str, flags: Mapping[str, str] | None = None) -> str:
    """``text`` with each backticked parameter that ``flags`` knows written as its flag: `name` ->
    ``--name``, `name=value` -> ``--name value`` (quotes dropped; ``=True`` -> the flag alone;
    ``=False`` -> its ``--no-`` form). Without ``flags`` every backticked lower-case name counts
    as a parameter."""

    def one(m: re.Match) -> str:
        name, value = m.group(1), m.group(2)
        if flags is not None and name not in flags:
            return m.group(0)
        flag = flag_of(name, flags)
        if value is None or value == "True":
            return flag
        if value == "False":  # a switch turned off: its --no- form
            return "--no-" + flag.removeprefix("--")
        return f"{flag} {value.strip(chr(39) + chr(34))}"

    return _NAMED.sub(one, text)


class CoordformerError(Exception):
    """Base class: the message is complete and actionable on its own."""

    def flag_message(self, flags: Mapping[str, str] | None = None) -> str:
        """The first line of the message as the CLI prints
        it: parameters as flags (:func:`with_flags`)."""
        text = str(self).splitlines()[0] if str(self) else type(self).__name__
        return with_flags(text, flags)


class UsageError(CoordformerError):
    """A bad argument, a missing file, or a combination
    that cannot work; the message says what to do."""


class ConfigError(UsageError, ValueError):
    """A configuration value, or a combination of values, that cannot work (the one configuration
    error type: config records, presets, recipes and keyword arguments all raise it)."""


class OptionError(ConfigError):
    """A parameter whose value cannot work, named as the Python API names it.

    ``option``: the keyword / config field (``"crop_length"``); ``value``: what was given;
    ``reason``: why it cannot work, in terms that hold for the API and the CLI alike (other
    parameters in backticks). ``str()`` reads ``crop_length=2000: exceeds the model's max_len
    1024``; the CLI prints the flag instead (``--crop-length 2000: ...``, :meth:`flag_message`)."""

    def __init__(self, option: str, value, reason: str):
        self.option, self.value, self.reason = option, value, reason
        super().__init__(f"{option}={value}: {reason}")

    def __reduce__(self):
        return (type(self), (self.option, self.value, self.reason))

    @property
    def flag(self) -> str:
        return flag_of(self.option)

    def flag_message(self, flags: Mapping[str, str] | None = None) -> str:
        if (
            flags is not None and self.option not in flags
        ):  # a parameter the command line does not have
            return f"{self.option}={self.value}: {with_flags(self.reason, flags)}"
        flag = flag_of(self.option, flags)
        # a switch reads as it is typed: `--varlen: ...`, `--no-coords: ...`, not `--varlen True`
        if self.value is True:
            return f"{flag}: {with_flags(self.reason, flags)}"
        if self.value is False and flag.startswith("--"):
            return f"--no-{flag[2:]}: {with_flags(self.reason, flags)}"
        return f"{flag} {self.value}: {with_flags(self.reason, flags)}"


class SequenceTooLong(UsageError, ValueError):
    """A chain (or batch row) longer than the model can take: ``length`` residues against the
    model's ``max_len``; ``chain_id`` when known, ``option`` the setting that bounds the length fed
    to the model (``crop_length`` or ``window``) if the caller has one, ``alternative`` a switch
    that lifts the bound instead (``windows``). The CLI names their flags (:meth:`flag_message`)."""

    def __init__(
        self,
        length: int,
        max_len: int,
        chain_id: str | None = None,
        option: str | None = "crop_length",
        alternative: str | None = None,
    ):
        self.length, self.max_len, self.chain_id, self.option = (
            int(length),
            int(max_len),
            chain_id,
            option,
        )
        self.alternative = alternative
        fix = [f"lower `{option}` to {self.max_len} or less"] if option else []
        fix += [f"set `{alternative}=True`"] if alternative else []
        super().__init__(
            f"{self._what()} exceeds the model's max_len {self.max_len}"
            + ("; " + " or ".join(fix) if fix else "")
        )

    def __reduce__(self):
        return (
            type(self),
            (self.length, self.max_len, self.chain_id, self.option, self.alternative),
        )

    def _what(self) -> str:
        what = f"chain {self.chain_id}" if self.chain_id else "sequence"
        return f"{what} of length {self.length}"

    def flag_message(self, flags: Mapping[str, str] | None = None) -> str:
        fix = [f"use {flag_of(self.option, flags)} {self.max_len} or less"] if self.option else []
        fix += [flag_of(self.alternative, flags)] if self.alternative else []
        return f"{self._what()} exceeds the model's max_len {self.max_len}" + (
            "; " + ", or ".join(fix) if fix else ""
        )


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

    def __init__(
        self,
        message: str,
        signum: int,
        step: int | None = None,
        checkpoint: str | None = None,
        resumable: bool = False,
        report: bool = True,
    ):
        super().__init__(message)
        self.signum, self.step, self.checkpoint, self.resumable, self.report = (
            signum,
            step,
            checkpoint,
            resumable,
            report,
        )

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)
