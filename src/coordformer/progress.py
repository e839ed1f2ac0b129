"""Progress bars that suit where the output goes.

On a terminal, rich's live bar. Elsewhere (output redirected to a log file, a pipe, a batch job)
rich draws nothing until the end, so a long run shows no sign of life; and a bar that redraws
itself with carriage returns fills a log file with one copy per refresh. There, :class:`Progress`
prints one plain line every ``PLAIN_EVERY_S`` seconds and one at the end instead::

    prepare: 1200/5000 (24%), 0:02:10 elapsed, ETA 0:06:51, kept 1180, skipped 20, 9.2 units/s
"""

from __future__ import annotations

import time
from datetime import timedelta

from rich.progress import Progress as _RichProgress

#: Seconds between plain progress lines when the output is not a terminal.
PLAIN_EVERY_S = 30.0


def clock(seconds: float | None) -> str:
    """``seconds`` as H:MM:SS ("?" when unknown), as in every progress line."""
    return "?" if seconds is None else str(timedelta(seconds=int(seconds)))


class Progress(_RichProgress):
    """``rich.progress.Progress`` on a terminal; plain periodic lines otherwise (same API)."""

    def __init__(self, *columns, disable: bool = False, **kwargs):
        super().__init__(*columns, disable=disable, **kwargs)
        self._plain = not disable and not self.console.is_terminal
        if (
            self._plain
        ):  # rich keeps counting tasks but draws nothing; the lines below say where it is
            self.disable = True
        self._last_line = time.monotonic()
        self._ended = False
        self._shown: tuple = ()  # the counts the last line showed

    def start(self) -> None:
        super().start()
        self._last_line = time.monotonic()

    def stop(self) -> None:
        super().stop()
        if self._plain and not self._ended:
            self._ended = True
            if self._shown != self._counts():
                self._line()

    def update(self, task_id, *args, **kwargs) -> None:
        super().update(task_id, *args, **kwargs)
        self._tick()

    def advance(self, task_id, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._tick()

    def _tick(self) -> None:
        if self._plain and time.monotonic() - self._last_line >= PLAIN_EVERY_S:
            self._line()

    def _counts(self) -> tuple:
        """What a line shows, less the clock: a final line is due when it differs."""
        return tuple((task.completed, tuple(task.fields.items())) for task in self.tasks)

    def _line(self) -> None:
        self._last_line = time.monotonic()
        self._shown = self._counts()
        for task in self.tasks:
            if task.fields.get("unit") == "%" and task.total:  # the counts are arbitrary (costs)
                done = f"{100 * task.completed / task.total:.0f}%"
            else:
                done = f"{task.completed:g}" + (
                    f"/{task.total:g} ({100 * task.completed / task.total:.0f}%)"
                    if task.total
                    else ""
                )
            parts = [f"{task.description}: {done}", f"{clock(task.elapsed)} elapsed"]
            if task.total and task.completed < task.total:
                parts.append(f"ETA {clock(task.time_remaining)}")
            parts += [
                f"{k} {v}" if k in ("kept", "skipped", "failed") else str(v)
                for k, v in task.fields.items()
                if v != "" and k != "unit"
            ]
            print(", ".join(parts), file=self.console.file, flush=True)
