"""How a training run lives with its process: Lightning's log noise, the precision it runs at, and
stopping on a signal (Ctrl-C, SIGTERM, SLURM's warning signal) at a step boundary with a checkpoint.
Used by ``pretrain`` (coordformer.train.run) and ``finetune`` (coordformer.function.finetune)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Checkpoint

log = logging.getLogger(__name__)


def resolve_precision(precision: str, cuda: bool) -> str:
    """The Lightning precision for ``precision`` on a run that uses a CUDA GPU (``cuda``) or not:
    "auto" is bf16-mixed on a GPU that has bfloat16, else 16-mixed, and 32-true off the GPU; any
    other value is passed through."""
    if precision != "auto":
        return precision
    if cuda:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


#: DataLoader workers per GPU when ``num_workers`` is None (TrainConfig)
AUTO_WORKERS = 4


def resolve_workers(num_workers: int | None, cuda: bool, devices: str = "auto") -> int:
    """DataLoader worker processes for a run: ``num_workers`` when given; else, on a CUDA GPU,
    AUTO_WORKERS, capped so that the workers of every local device leave each one a CPU (the
    process that launches kernels); 0 off the GPU, where the batch is built between steps anyway
    and workers would take cores from the model."""
    if num_workers is not None:
        return num_workers
    if not cuda:
        return 0
    import os

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if devices == "auto" or devices == "-1":
        local = torch.cuda.device_count()
    elif "," in devices or devices.startswith("["):
        local = len([d for d in devices.strip("[]").split(",") if d.strip()])
    else:
        try:
            local = int(devices)
        except ValueError:  # a form Lightning may still accept (or refuse, with its own message)
            local = 1
    return max(0, min(AUTO_WORKERS, (cpus or 1) // max(1, local) - 1))


def quiet_lightning() -> None:
    """Lightning prints advertising tips and deprecation chatter that hide our progress output."""
    import warnings

    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
        "lightning.pytorch.accelerators.cuda",
        "lightning.pytorch.trainer.connectors.checkpoint_connector",
        "lightning.pytorch.trainer.connectors.signal_connector",
    ):  # "Received SIGTERM": we say what we did
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*weights_only.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*litlogger.*")
    # MaskedBatches resumes at the restored global step itself, so this Lightning warning is moot.
    warnings.filterwarnings("ignore", message=".*dataloader is not resumable.*")
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")


class Interrupted(BaseException):
    """Raised from the signal handler where stopping at once loses nothing (setting up, wrapping up)
    or on a second Ctrl-C. Lightning re-raises it as it is (a KeyboardInterrupt it would turn into
    exit status 1)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class StopOnSignal(Checkpoint):
    """Ctrl-C (SIGINT), SIGTERM (pre-emption, ``kill``, ``scancel``) and, under SLURM, the warning
    signal SIGUSR1 (``#SBATCH --signal=SIGUSR1@90``): checkpoint at the next optimizer-step boundary
    and stop; after SIGUSR1 also ``scontrol requeue`` the job.

    Lightning's own handlers act inside the step: its SLURM handler saves from inside the signal
    handler, wherever the step happens to be (e.g. after the weights moved but before the step
    counter did), so a run resumed from it is not the run that would have been (measured: weights
    6e-3 off after 150 steps); its SIGTERM handler raises SystemExit at the next batch, saving
    nothing, with exit status 0; Ctrl-C ends in exit status 1, saving nothing. Here, during
    training, the handler only sets a flag; rank 0's flag is broadcast so every rank saves at the
    same step, and ``last.ckpt`` is written so a re-run resumes from it like any other restart,
    exactly.

    With ``validate_first``, a stop at a step that Lightning validates after (every
    ``val_every_steps``) waits for that validation, and saves after it (and after best.ckpt took
    it into account): otherwise the run would skip it, and so would the resumed one (Lightning does
    not validate at the step it restarts at). Lightning orders checkpoint callbacks last, in the
    order given, which is why this is a ``Checkpoint``: give it after the ModelCheckpoints.

    Outside the training loop (loading, setting up; the final validation) SIGINT and SIGTERM raise
    ``Interrupted`` at once: nothing done there is lost that a re-run does not redo. A second Ctrl-C
    before the step ends does the same.
    """

    def __init__(self, last: Path, requeue: bool = False, validate_first: bool = False):
        import signal

        self.last = last
        self.validate_first = validate_first
        self._deferred = 0  # the signal whose stop waits for this step's validation
        self.signals = (signal.SIGINT, signal.SIGTERM) + ((signal.SIGUSR1,) if requeue else ())
        self.received = 0  # the first signal number this process got (0: none)
        self.stopped_by = 0  # the one acted on (rank 0's)
        self.stopped_at: int | None = None  # the step last.ckpt was written at
        self.requeue_ok = False
        self.started = False  # the training loop began (on_train_start)
        self.wrapped_up = False  # fit returned
        self._saving = False
        self._step_seen = -1
        self._previous: dict = {}

    def install(self) -> None:
        """Take over the signals (from the main thread: only it can set signal handlers); one this
        process was started with ignored (Ctrl-C for a background job of a script) stays ignored."""
        import signal

        for s in self.signals:
            if signal.getsignal(s) is not signal.SIG_IGN:
                self._previous[s] = signal.signal(s, self._on_signal)

    def uninstall(self) -> None:
        import signal

        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def wrap_up(self) -> None:
        """Training is over (fit returned): from now on SIGINT/SIGTERM stop at once."""
        self.wrapped_up = True

    def _on_signal(self, signum, frame) -> None:
        import signal

        if signum == signal.SIGUSR1 or self._saving:
            self.received = self.received or signum
            return
        if not self.started or self.wrapped_up or (self.received and signum == signal.SIGINT):
            raise Interrupted(signum)
        self.received = self.received or signum

    def on_train_start(self, trainer, pl_module):
        import signal

        # Lightning's fit put its own SIGTERM handler in place after install() (and puts ours back
        # when it ends)
        if (
            signal.SIGTERM in self._previous
            and threading.current_thread() is threading.main_thread()
        ):
            signal.signal(signal.SIGTERM, self._on_signal)
        self.started, self.wrapped_up = True, False
        # the step the run (re)starts at is not a boundary reached by training: with gradient
        # accumulation, a checkpoint after the first micro-batch would not resume exactly
        self._step_seen = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self._step_seen:  # mid gradient accumulation: not a step boundary
            return
        self._step_seen = trainer.global_step
        received = self.received
        if trainer.world_size > 1:
            received = int(trainer.strategy.broadcast(received, 0))
        if not received or self.stopped_at is not None:
            return
        if self.validate_first and not self._deferred and _validates_now(trainer):
            self._deferred = received  # on_validation_end stops (a step later if it never came)
            return
        self._stop(trainer, received)
        # Lightning validates when asked to stop; not now: time may be short (pre-emption, a
        # requeue), and best.ckpt must not get ahead of the state saved in last.ckpt
        trainer.limit_val_batches = 0

    def on_validation_end(self, trainer, pl_module):
        if self._deferred and self.stopped_at is None and not trainer.sanity_checking:
            self._stop(trainer, self._deferred)

    def _stop(self, trainer, received: int) -> None:
        import signal

        self.save(trainer)
        self.stopped_by, self.stopped_at = received, trainer.global_step
        trainer.should_stop = True
        if received == signal.SIGUSR1 and trainer.is_global_zero:
            self.requeue_ok = scontrol_requeue()

    def save(self, trainer) -> None:
        self._saving = True  # a signal now waits for the checkpoint to be written
        try:
            trainer.save_checkpoint(self.last)
        finally:
            self._saving = False


def _validates_now(trainer) -> bool:
    """Whether Lightning validates right after this training step (the ``val_check_interval``
    schedule), with validation on."""
    if trainer.limit_val_batches == 0:
        return False
    loop = trainer.fit_loop
    return bool(loop.epoch_loop._should_check_val_fx(loop._data_fetcher))


def signal_name(signum: int) -> str:
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def scontrol_requeue() -> bool:
    import os
    import subprocess

    job = os.environ.get("SLURM_JOB_ID", "")
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    try:
        rc = subprocess.run(
            ["scontrol", "requeue", job], capture_output=True, text=True, timeout=60
        ).returncode
    except (OSError, subprocess.SubprocessError) as e:
        rc = f"{type(e).__name__}: {e}"
    if rc != 0:
        log.warning(
            "scontrol requeue %s failed (%s); resubmit the same command to continue from last.ckpt",
            job,
            rc,
        )
    return rc == 0
