"""``pretrain``'s and ``finetune``'s progress display.

On a terminal, Lightning's tqdm bar, except that with a time budget (``--max-minutes``) it counts
training minutes against the budget, so its ETA is the budget's and not that of ``--max-steps``
(100,000 by default). When the output is not a terminal (a log file, a batch job) a redrawn bar
leaves a carriage-return-separated copy of itself per refresh; there, one plain line every
``PLAIN_EVERY_S`` seconds, one per validation and one at the end instead::

    step 1200/100000, 4.1/60 min, ETA 0:55:54, train/loss 2.713, train/tokens_per_s 2.1e+04

The ETA is that of whichever limit comes first, ``--max-steps`` at this process's rate of training
steps or the rest of ``--max-minutes``; it leaves validation time out, as the budget does.
"""

from __future__ import annotations

import sys
import time

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

from ..progress import clock

#: Seconds between plain progress lines when the output is not a terminal.
PLAIN_EVERY_S = 30.0

_MINUTES_FORMAT = "{l_bar}{bar}| {n:.1f}/{total:g} min [{elapsed}<{remaining}{postfix}]"


def eta_seconds(
    steps_left: int, seconds_per_step: float, budget_seconds_left: float | None
) -> float:
    """Seconds until the first limit stops training: ``steps_left`` at ``seconds_per_step``, or the
    rest of the time budget, ``budget_seconds_left`` (None: no budget)."""
    eta = max(steps_left, 0) * seconds_per_step
    if budget_seconds_left is not None:
        eta = min(eta, budget_seconds_left)
    return max(eta, 0.0)


def _fmt(v) -> str:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return str(v)
    return f"{v:.4g}"


class _Bar(TQDMProgressBar):
    """Lightning's tqdm bar on a terminal, without the logger's version number (``v_num``, which
    means nothing to a user); no tqdm output at all when ``plain`` (subclasses print lines)."""

    def __init__(self, plain: bool | None = None, refresh_rate: int = 10):
        super().__init__(refresh_rate=refresh_rate)
        self.plain = (not sys.stdout.isatty()) if plain is None else plain
        self._last_line = 0.0

    def get_metrics(self, trainer, pl_module) -> dict:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items

    # plain: the bars still exist, disabled, for Lightning's bookkeeping
    def init_sanity_tqdm(self) -> Tqdm:
        return Tqdm(disable=True) if self.plain else super().init_sanity_tqdm()

    def init_train_tqdm(self) -> Tqdm:
        return Tqdm(disable=True) if self.plain else super().init_train_tqdm()

    def init_validation_tqdm(self) -> Tqdm:
        return Tqdm(disable=True) if self.plain else super().init_validation_tqdm()


class EpochProgressBar(_Bar):
    """``finetune``'s progress, per stage (``stage``: "linear probe", "fine-tune", "MLP head").

    On a terminal the bar reads ``fine-tune: epoch 2/30``, counted from 1 against ``--max-epochs``
    (Lightning's own counts from 0 and shows no total). Off a terminal, a plain line at most every
    ``PLAIN_EVERY_S`` seconds (after a validation when one falls due, so that it shows
    ``valid_fmax``) and one when the stage ends::

        fine-tune: epoch 2/30, batch 40/120, 0:01:10 elapsed, ETA <= 0:16:20, train_loss 0.23
        fine-tune: epoch 2/30 done, 0:01:40 elapsed, ETA <= 0:23:20, train_loss 0.23, valid_fmax 0.4
        fine-tune: ended after 12/30 epochs, 0:10:02 elapsed, train_loss 0.18, valid_fmax 0.52

    The ETA runs to the last epoch at this process's rate (a resumed stage counts from where it
    resumed, mid-epoch included): early stopping may end the stage sooner, hence "<=". A stage
    stopped part-way through an epoch (Ctrl-C, SIGTERM) says so instead of "ended after".
    """

    def __init__(self, stage: str, plain: bool | None = None, refresh_rate: int = 10):
        super().__init__(plain=plain, refresh_rate=refresh_rate)
        self.stage = stage
        self._t0: float | None = None  # when this process started training
        self._from: float | None = None  # epochs done (fractional) when its first batch began
        self._batch = 0  # batches done in the current epoch

    def _epoch(self, trainer) -> str:
        return f"{self.stage}: epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"

    def _batches(self) -> int | None:
        total = self.total_train_batches
        return total if isinstance(total, int) and total > 0 else None

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self._t0 = time.monotonic()

    def on_train_epoch_start(self, trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        if not self.plain:
            self.train_progress_bar.set_description(self._epoch(trainer))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._from is None:  # a resume goes on from a saved batch count
            total = self._batches()
            self._from = trainer.current_epoch + (batch_idx / total if total else 0.0)
        self._batch = batch_idx + 1
        if not self.plain:
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if not self.is_disabled and time.monotonic() - self._last_line >= PLAIN_EVERY_S:
            self._line(trainer, pl_module, batch_idx + 1)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if (
            self.plain
            and not self.is_disabled
            and trainer.state.fn == "fit"
            and not trainer.sanity_checking
            and time.monotonic() - self._last_line >= PLAIN_EVERY_S
        ):
            self._line(trainer, pl_module, None)

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        if self.plain and not self.is_disabled:
            self._line(trainer, pl_module, None, final=True)

    def _line(self, trainer, pl_module, batch: int | None, final: bool = False) -> None:
        """``batch``: batches done in this epoch; None after the epoch's validation."""
        self._last_line = time.monotonic()
        total = self._batches()
        if not final:
            head = self._epoch(trainer) + (" done" if batch is None else "")
        elif total and 0 < self._batch < total:  # stopped part-way (Lightning counts it done)
            head = (
                f"{self.stage}: stopped in epoch {trainer.current_epoch}/{trainer.max_epochs} "
                f"at batch {self._batch}/{total}"
            )
        else:  # Lightning has counted the last epoch by now
            head = f"{self.stage}: ended after {trainer.current_epoch}/{trainer.max_epochs} epochs"
        parts = [head]
        if batch is not None:
            parts.append(f"batch {batch}/{total}" if total else f"batch {batch}")
        elapsed = self._last_line - (self._t0 if self._t0 is not None else self._last_line)
        parts.append(f"{clock(elapsed)} elapsed")
        if not final and self._from is not None:
            if batch is None:
                at = trainer.current_epoch + 1.0
            else:
                at = trainer.current_epoch + (batch / total if total else 0.0)
            if at > self._from:
                left = max(trainer.max_epochs - at, 0.0)
                parts.append(f"ETA <= {clock(left * elapsed / (at - self._from))}")
        parts += [f"{k} {_fmt(v)}" for k, v in self.get_metrics(trainer, pl_module).items()]
        print(", ".join(parts), flush=True)


class TrainProgressBar(_Bar):
    def __init__(
        self, max_minutes: float | None = None, plain: bool | None = None, refresh_rate: int = 10
    ):
        super().__init__(plain=plain, refresh_rate=refresh_rate)
        self.max_minutes = max_minutes
        self._rate_from: tuple[int, float] | None = None  # (step, train seconds) of the first line

    @property
    def total_train_batches(self):
        # with a time budget the bar's total is minutes, from its first draw (Lightning draws the
        # epoch's bar with this total before on_train_epoch_start below can set it)
        if self.max_minutes and not self.plain:
            return self.max_minutes
        return super().total_train_batches

    def get_metrics(self, trainer, pl_module) -> dict:
        items = super().get_metrics(trainer, pl_module)
        if self.max_minutes:  # the bar itself counts them
            items.pop("train/minutes", None)
        return items

    def on_train_epoch_start(self, trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        if self.max_minutes and not self.plain:  # the bar measures the time budget
            self.train_progress_bar.total = self.max_minutes
            self.train_progress_bar.bar_format = _MINUTES_FORMAT
            self.train_progress_bar.set_description(f"step {trainer.global_step}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.plain:
            # Lightning disables the bar on every rank but the first: one line per step, not N
            if not self.is_disabled and time.monotonic() - self._last_line >= PLAIN_EVERY_S:
                self._line(trainer, pl_module)
            return
        if not self.max_minutes:
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        bar = self.train_progress_bar
        if bar is not None and not bar.disable and (batch_idx + 1) % self.refresh_rate == 0:
            bar.n = min(pl_module.train_seconds / 60.0, self.max_minutes)
            bar.set_description(f"step {trainer.global_step}", refresh=False)
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # refreshes

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if self.plain and not self.is_disabled and not trainer.sanity_checking:
            metrics = {
                k: v
                for k, v in self.get_metrics(trainer, pl_module).items()
                if k.startswith("val/")
            }
            if metrics:
                what = (
                    "final validation" if trainer.state.fn == "validate" else "validation"
                )  # after fit
                print(
                    f"{what} at step {trainer.global_step}: "
                    + ", ".join(f"{k} {_fmt(v)}" for k, v in metrics.items()),
                    flush=True,
                )

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        if self.plain and not self.is_disabled:
            self._line(trainer, pl_module, final=True)

    def _eta(self, trainer, pl_module) -> float | None:
        step, seconds = trainer.global_step, pl_module.train_seconds
        if self._rate_from is None:
            # the rate of this process: a resumed run's saved seconds include other machines
            self._rate_from = (step, seconds)
        step0, seconds0 = self._rate_from
        if step <= step0:  # no rate yet (the first line)
            return None
        budget = self.max_minutes * 60.0 - seconds if self.max_minutes else None
        return eta_seconds(trainer.max_steps - step, (seconds - seconds0) / (step - step0), budget)

    def _line(self, trainer, pl_module, final: bool = False) -> None:
        self._last_line = time.monotonic()
        minutes = pl_module.train_seconds / 60.0
        parts = [
            f"step {trainer.global_step}/{trainer.max_steps}",
            f"{minutes:.1f}/{self.max_minutes:g} min" if self.max_minutes else f"{minutes:.1f} min",
        ]
        eta = self._eta(trainer, pl_module)
        if not final and eta is not None:
            parts.append(f"ETA {clock(eta)}")
        parts += [
            f"{k} {_fmt(v)}"
            for k, v in self.get_metrics(trainer, pl_module).items()
            if not k.startswith("val/") and k != "train/minutes"
        ]
        print(", ".join(parts), flush=True)
