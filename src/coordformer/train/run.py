"""``coordformer pretrain``: masked-LM pretraining on a prepared dataset with Lightning."""

from __future__ import annotations

import json
import logging
import math
import threading
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from ..batch import Batch
from ..config import ModelConfig, TrainConfig
from ..data.batching import BatchSettings, MaskedBatches, check_fits, cropped_lengths
from ..data.store import SKIPPED_FILE, PreparedDataset
from ..errors import ConfigError, OptionError, TrainingInterrupted, UsageError
from ..model.core import StaticRows
from ..model.lm import with_recorded_lm
from ..model.weights import checkpoint_data, shipped_models
from .lifecycle import (
    Interrupted,
    StopOnSignal,
    quiet_lightning,
    resolve_precision,
    resolve_workers,
    signal_name,
)
from .mlm import MaskedLMModule
from .progress import TrainProgressBar

log = logging.getLogger(__name__)


#: Passes over the train split that one training loader holds at least (Lightning sees one long
#: epoch; MaskedBatches reshuffles every pass).
TRAIN_EPOCHS = 10_000

#: Settings that determine which residues the model sees in which order; a resume must keep them.
DATA_STREAM_FIELDS = TrainConfig.DATA_STREAM_FIELDS


def batch_settings(
    cfg: TrainConfig,
    train: bool,
    max_position: int | None = None,
    lm_window: int | None = None,
) -> BatchSettings:
    """The run's batch settings for training (random crops, structure dropout) or validation (the
    first residues, always rotated, every coordinate given). ``max_position``: the model's max_len,
    which spatial-crop positions must stay below (the model does not check the positions of the
    batches it gets from here). ``lm_window``: the residues a conditioning language model reads,
    for spatial crops (``BatchSettings.lm_window``); ignored with sequence crops."""
    limit = {} if max_position is None else {"max_position": max_position}
    if lm_window is not None and cfg.crop_mode == "spatial":
        limit["lm_window"] = lm_window
    if train:
        return BatchSettings.of(cfg, random_crop=True, pack=cfg.pack_sequences, **limit)
    return BatchSettings.of(
        cfg, random_crop=False, rotate=True, drop_chain_coords=0.0, drop_span_coords=0.0, **limit
    )


class _DataModule(L.LightningDataModule):
    """Builds loaders lazily so the resumed global step is known when the train loader is made."""

    def __init__(
        self,
        data: PreparedDataset,
        cfg: TrainConfig,
        max_position: int,
        lm_window: int | None = None,
    ):
        super().__init__()
        self.data, self.cfg, self.max_position = data, cfg, max_position
        self.lm_window = lm_window

    def train_dataloader(self):
        tr = self.trainer
        idx = self.data.split_indices("train")  # not empty: _pretrain refused that
        ds = MaskedBatches(
            self.data,
            idx,
            batch_settings(self.cfg, True, self.max_position, self.lm_window),
            seed=self.cfg.seed,
            train=True,
            epochs=TRAIN_EPOCHS,
            # Lightning counts a resumed run's batches from the start of its one epoch, whose
            # length it takes from this shortened loader: the whole run, from either end, must
            # fit, or Lightning ends the epoch early and iterates the loader again from
            # start_batch (replaying batches)
            min_batches=2 * self.cfg.max_steps * self.cfg.accumulate_grad_batches + 1,
            start_batch=tr.global_step * self.cfg.accumulate_grad_batches,
            rank=tr.global_rank,
            world_size=tr.world_size,
        )
        return self._loader(ds, self.cfg.seed)

    def val_dataloader(self):
        idx = self.data.split_indices("valid")
        if len(idx) == 0:
            return []
        idx = idx[: self.cfg.val_max_chains]
        ds = MaskedBatches(
            self.data,
            idx,
            batch_settings(self.cfg, False, self.max_position, self.lm_window),
            seed=self.cfg.seed + 1,
            train=False,
        )
        return self._loader(ds, self.cfg.seed + 1)

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        # Lightning copies a non-tensor batch with a blocking .to(): a host wait per field. The
        # loader pins batches on CUDA, so the copies can overlap the previous step instead.
        if isinstance(batch, Batch):
            return batch.to(device, non_blocking=device.type == "cuda")
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def _loader(self, ds, seed: int):
        # Items are ``Batch``es: the loader pins them with Batch.pin_memory and Lightning moves them
        # to the device with Batch.to (move_data_to_device takes any object with a ``to``).
        # Its own generator: each new iterator (every validation, the train loader after a resume)
        # would otherwise draw its workers' base seed from the global generator that dropout
        # uses, and a resumed run would draw different dropout masks from an uninterrupted one.
        w = self.cfg.num_workers
        return torch.utils.data.DataLoader(
            ds,
            batch_size=None,
            shuffle=False,
            num_workers=w,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=w > 0,
            worker_init_fn=_worker_init if w > 0 else None,
            generator=torch.Generator().manual_seed(seed),
        )


def _worker_init(worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C and SIGTERM to the main process, which checkpoints at the
    next step (StopOnSignal). A terminal sends Ctrl-C to every process of the job: a worker that
    died of it ended the run ("DataLoader worker exited unexpectedly") before anything was saved.
    Then Lightning's worker seeding, which a worker_init_fn of our own replaces."""
    import os
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        from lightning.fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id)


class _PeriodicCheckpoint(ModelCheckpoint):
    """checkpoints/last.ckpt every ``every_n_train_steps`` optimizer steps, never at the step a run
    (re)starts at. Lightning counts that step as not saved yet, so with gradient accumulation it
    saved again after the first micro-batch of the resumed run: a checkpoint part-way through a
    step, from which a later resume groups micro-batches into steps differently (the restored batch
    counter is then not a multiple of the accumulation)."""

    @property
    def state_key(self) -> str:  # ModelCheckpoint's own, so runs from before this class resume
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def on_train_start(self, trainer, pl_module):
        super().on_train_start(trainer, pl_module)
        self._last_global_step_saved = trainer.global_step

    def on_train_end(self, trainer, pl_module):
        """Nothing: pretrain writes last.ckpt itself when training ends (after the final
        validation) or stops (StopOnSignal). Lightning's save here (when this callback has not
        saved yet) replaced a signal stop's checkpoint with the state after the step's loop
        bookkeeping, from which a run resumed at a validation step logged every later step one
        too far."""


class _ConfigWriter(Callback):
    """Keeps config.json and the latest checkpoint name in the run folder (for humans and tools)."""

    def __init__(self, out: Path, payload: dict):
        self.out, self.payload = out, payload

    def on_fit_start(self, trainer, pl_module):
        if trainer.is_global_zero:
            (self.out / "config.json").write_text(json.dumps(self.payload, indent=2))


class _BestCheckpoint(ModelCheckpoint):
    """checkpoints/best.ckpt: the lowest val/loss so far, and the step it was saved at
    (``best_step``, kept in the callback state so a resumed run knows it too). ``consider_final``
    lets the final validation (``trainer.validate`` after fit, where Lightning saves nothing)
    replace it."""

    def __init__(
        self, dirpath: Path, forget_restored: bool = False, data_fingerprint: str | None = None
    ):
        # no version counter: a best.ckpt this callback does not know of (state lost) is replaced,
        # not joined by best-v1.ckpt, which resolve_checkpoint would never pick
        super().__init__(
            dirpath=dirpath,
            filename="best",
            monitor="val/loss",
            mode="min",
            enable_version_counter=False,
        )
        self.best_step: int | None = None
        # a run resumed on another dataset: the best so far was judged on another valid split
        self.forget_restored = forget_restored
        self.data_fingerprint = data_fingerprint
        self._own_file = False  # whether this process saved best.ckpt yet

    @property
    def state_key(
        self,
    ) -> str:  # ModelCheckpoint's own, so runs from before this class restore into it
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "best_step": self.best_step}

    def load_state_dict(self, state_dict: dict) -> None:
        if self.forget_restored:
            return
        super().load_state_dict(state_dict)
        self.best_step = state_dict.get("best_step")

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        if filepath == self.best_model_path:
            self.best_step = trainer.global_step
        if trainer.is_global_zero and not self._own_file:
            self._keep_other_datasets_best(Path(filepath))
        self._own_file = True  # from now on best.ckpt is this run's: not read again
        super()._save_checkpoint(trainer, filepath)

    def _keep_other_datasets_best(self, path: Path) -> None:
        """A best.ckpt about to be replaced that was chosen on another dataset (a run resumed with
        ``allow_new_data``) is moved to ``best_<its fingerprint>_step<N>.ckpt`` (never over an
        existing file), not overwritten: it is that dataset's best model."""
        if not (path.exists() and self.data_fingerprint):
            return
        fp, step = checkpoint_data(path)  # unreadable: replaced, as before
        if not fp or fp == self.data_fingerprint:
            return
        kept = path.with_name(f"best_{fp}_step{step}{self.FILE_EXTENSION}")
        n = 1
        while kept.exists():
            n += 1
            kept = path.with_name(f"best_{fp}_step{step}_{n}{self.FILE_EXTENSION}")
        path.replace(kept)
        log.warning("%s was chosen on another dataset (%s): kept as %s", path, fp, kept.name)

    def consider_final(self, trainer, val_loss: float) -> None:
        """After the final validation (every rank, same value): save the final model as best.ckpt
        when its val/loss is at most the best so far."""
        if not math.isfinite(val_loss) or self.best_step == trainer.global_step:
            return
        if self.best_model_score is not None and val_loss > float(self.best_model_score):
            return
        path = self.best_model_path or str(Path(self.dirpath) / f"best{self.FILE_EXTENSION}")
        score = torch.tensor(val_loss)
        self.best_k_models, self.kth_best_model_path, self.kth_value = {path: score}, path, score
        self.best_model_path, self.best_model_score, self.current_score = path, score, score
        self._save_checkpoint(trainer, path)

    def summary(self) -> dict | None:
        """{"path", "step", "val_loss"} of best.ckpt, or None when there is none."""
        if not self.best_model_path or not Path(self.best_model_path).exists():
            return None
        step = self.best_step
        if step is None:  # saved by a run from before best_step was kept: read it from the file
            step = torch.load(
                self.best_model_path, map_location="cpu", weights_only=False, mmap=True
            ).get("global_step")
        score = None if self.best_model_score is None else float(self.best_model_score)
        return {"path": str(self.best_model_path), "step": step, "val_loss": score}


def pretrain(
    data_dir: str | Path,
    out_dir: str | Path,
    model_config: ModelConfig,
    train_config: TrainConfig,
    resume: bool = True,
    progress: bool = True,
    extra_meta: dict | None = None,
    callbacks: list[Callback] | None = None,
    init_state: dict | None = None,
    allow_new_data: bool = False,
) -> dict:
    """Pretrain a CoordFormer with masked-LM on ``data_dir``'s train split; validate on its valid
    split.

    Writes to ``out_dir``: checkpoints/last.ckpt and best.ckpt (each carries both configs),
    config.json, logs/version_N/metrics.csv (one per start; TensorBoard under tensorboard/ when
    installed), summary.json. Re-running with the same ``out_dir``
    resumes from checkpoints/last.ckpt (same data order given the seed). Returns the summary dict.
    ``init_state``: a CoordFormer state dict for ``model_config`` to start from (continued
    pretraining); without it, the weights ``train_config.init`` names are loaded (their
    architecture must be ``model_config``'s). Both are ignored when resuming, since the checkpoint
    holds the weights then.

    A resume says so (one line on stderr: ``resuming OUT from step N``) and is refused when the
    dataset differs from the one the run was trained on (``PreparedDataset.fingerprint``; the same
    data moved or prepared again is the same), unless ``allow_new_data``: config.json then lists the
    earlier datasets under ``data.previous``; the best so far (judged on the other dataset's valid
    split) is not carried over, and its best.ckpt is kept as ``best_<fingerprint>_step<N>.ckpt``
    when this run saves a best of its own.

    After the final validation, ``best.ckpt`` is replaced by the final model when that is at least
    as good by val/loss; the summary's ``best_checkpoint`` says which step it holds. With an empty
    valid split there is no validation and no best.ckpt: a warning says so at the start, and the
    summary's ``no_validation``.

    Ctrl-C (SIGINT) or SIGTERM, when called from the main thread: last.ckpt is written at the next
    optimizer-step boundary, summary.json says ``interrupted`` (signal and step), and
    ``TrainingInterrupted`` is raised (before training starts: at once, nothing to save). Under
    SLURM, SIGUSR1 checkpoints, requeues the job and returns ``stopped_for_requeue``.

    Process-wide state: ``train_config.seed`` seeds Python's, NumPy's and torch's global generators
    (Lightning's ``seed_everything``, which also sets ``PL_GLOBAL_SEED``), so that a run is
    reproducible; torch's thread count (``threads``) is restored when the run ends.
    """
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    # torchrun inside a SLURM job: Lightning then
    # (rightly) takes ranks from torchrun, so leave it be
    slurm = SLURMEnvironment.detect() and not TorchElasticEnvironment.detect()
    last = Path(out_dir) / "checkpoints" / "last.ckpt"
    stop = None
    if threading.current_thread() is threading.main_thread():
        stop = StopOnSignal(last, requeue=slurm, validate_first=True)
        stop.install()
    elif slurm:
        log.warning(
            "pretrain runs outside the main thread: the SLURM requeue signal is not handled"
        )
    threads = torch.get_num_threads()  # `threads` sets it for the run only
    try:
        return _pretrain(
            data_dir,
            out_dir,
            model_config,
            train_config,
            resume,
            progress,
            extra_meta,
            callbacks,
            init_state,
            stop,
            slurm,
            allow_new_data,
        )
    except Interrupted as e:  # came while loading the data or setting up: nothing to save
        raise TrainingInterrupted(
            f"stopped by {signal_name(e.signum)} before training started: nothing to save",
            e.signum,
            resumable=last.exists(),
            report=getattr(rank_zero_only, "rank", 0) == 0,
        ) from None
    finally:
        torch.set_num_threads(threads)
        if stop is not None:
            stop.uninstall()


def _as_current(saved: dict) -> dict:
    """A model config as a checkpoint recorded it, in today's form: a field added since then takes
    its default, which is what the model did before the field existed (a field is only ever added
    with the old behaviour as its default). A record that does not parse is compared as it is."""
    try:
        return ModelConfig.from_dict(saved).to_dict()
    except (ConfigError, OptionError, TypeError):
        return saved


def _init_state(init: str, model_config: ModelConfig) -> dict:
    """The weights ``TrainConfig.init`` names (a shipped model, checkpoint or export), for a caller
    that gave no ``init_state``; an OptionError when they are of another architecture than
    ``model_config`` (dropout aside, which is a training setting)."""
    from ..model.checkpoints import load_model

    # building the model draws from torch's global generator, which the run has just seeded: keep
    # it as it was, so that a run with init= sees the same random stream as `pretrain --init`
    with torch.random.fork_rng(devices=[]):
        model, _ = load_model(init)
    # the loaded model checked its LM against its own record (an older fingerprint version, maybe)
    mine = with_recorded_lm(model_config, model.config.to_dict())
    if model.config.replace(dropout=model_config.dropout) != mine:
        diff = _config_diff(model.config.to_dict(), model_config.to_dict())
        raise OptionError(
            "init",
            init,
            f"its weights are of another architecture than `model_config` ({diff}); build the "
            "config from them: `load_model(init)[0].config`",
        )
    return model.state_dict()


def _config_diff(was: dict, now: dict) -> str:
    """``key was -> now`` for each field in which two config dicts differ, in key order."""
    return ", ".join(
        f"{k} {was.get(k)!r} -> {now.get(k)!r}"
        for k in sorted(set(was) | set(now))
        if was.get(k) != now.get(k)
    )


def _pretrain(
    data_dir,
    out_dir,
    model_config,
    train_config,
    resume,
    progress,
    extra_meta,
    callbacks,
    init_state,
    stop: StopOnSignal | None,
    slurm: bool,
    allow_new_data: bool = False,
) -> dict:
    import signal
    import sys

    from lightning.fabric.utilities.rank_zero import rank_zero_only

    quiet_lightning()
    if (
        train_config.crop_mode == "spatial"
        and model_config.condition_on
        and train_config.pack_sequences
    ):
        # refused before any model or data loads: the language model reads each crop's chain
        # (Batch.lm_context), which packed rows do not carry
        raise OptionError(
            "pack_sequences",
            True,
            "spatial crops for a model conditioned on a language model are not packed; drop "
            "`pack_sequences` or use `crop_mode=sequence`",
        )
    varlen = "cuda_graphs" if train_config.cuda_graphs else "varlen_attention"
    if getattr(train_config, varlen) and model_config.dropout:
        raise OptionError(
            varlen,
            True,
            f"the variable-length attention kernel has no dropout; the model has dropout "
            f"{model_config.dropout}: set it to 0 or train without `{varlen}`",
        )
    if train_config.cuda_graphs and train_config.accumulate_grad_batches > 1:
        raise OptionError(
            "cuda_graphs",
            True,
            "CUDA graphs do not take gradient accumulation (the next micro-batch's replay frees "
            "the gradients the last one left in graph memory): use one or the other",
        )
    if train_config.cuda_graphs and train_config.compile:
        raise OptionError(
            "compile",
            True,
            "`cuda_graphs` compiles each layer itself (the embedding and LM head stay eager, as "
            "their shapes change every step): drop `compile`",
        )
    if train_config.cuda_graphs and train_config.activation_checkpointing:
        raise OptionError(
            "cuda_graphs",
            True,
            "CUDA graphs do not take activation checkpointing (its recomputation runs outside "
            "the recorded graphs): use one or the other",
        )
    if getattr(train_config, varlen) and _uses_cuda(train_config.accelerator):
        precision = str(resolve_precision(train_config.precision, True))
        if not precision.startswith(("bf16", "16")):
            # float32 would take the chain-by-chain reference path, which reads the chain starts
            # on the host every layer: a sync per layer, and no CUDA graph can hold it
            raise OptionError(
                varlen,
                True,
                f"the variable-length flash kernel takes bf16 or fp16, not precision "
                f"{precision!r}: train with precision `bf16-mixed`, or without `{varlen}`",
            )
    data = PreparedDataset(data_dir)
    if len(data.split_indices("train")) == 0:  # before the run folder is made
        raise UsageError(
            f"{data.path}: the train split is empty ({len(data)} chains in the dataset; its "
            f"{SKIPPED_FILE} lists the chains prepare left out, and why): prepare it again from "
            "more inputs, or with smaller valid and test fractions"
        )
    if (
        model_config.plddt_feature
        and not data.has_known_plddt
        and getattr(rank_zero_only, "rank", 0) == 0
    ):
        # documented (no pLDDT reads as 100), but a whole dataset without any is almost always
        # one prepared without --store-plddt, or of experimental structures only
        log.warning(
            "%s holds no pLDDT (%s): the pLDDT feature reads 0 (pLDDT 100) for every residue and "
            "learns nothing; for predicted models prepare it again with --store-plddt "
            "(store_plddt=True)",
            data.path,
            "only experimental structures, which have none"
            if data.has_plddt
            else "prepared without --store-plddt",
        )
    check_fits(data, np.arange(len(data)), train_config.crop_length, model_config.max_len)
    out = Path(out_dir)
    if train_config.init is not None:
        # (before the folder is made: `--out small-coords --init small-coords` would otherwise
        # read the new, empty run folder as the weights)
        at = Path(train_config.init).resolve()
        if at == out.resolve() or out.resolve() in at.parents:
            raise OptionError(
                "init",
                train_config.init,
                f"names the run's own folder {out} (or a file in it), which `init` cannot start "
                "from: choose another `out_dir` (a resume needs no `init`)",
            )
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    cfg = train_config
    if cfg.init is not None and Path(cfg.init).exists():
        # recorded absolute: evaluate's leakage check reads the weights' chains again from
        # another working directory
        cfg = cfg.replace(init=str(Path(cfg.init).resolve()))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise OptionError(
            "accelerator", cfg.accelerator, "no CUDA GPU is visible; use `accelerator=cpu`"
        )
    # the record says how many workers ran, not "auto"
    cfg = cfg.replace(
        num_workers=resolve_workers(cfg.num_workers, _uses_cuda(cfg.accelerator), cfg.devices)
    )
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    ckpt_path = None
    new_data = False  # resumed on another dataset (allow_new_data)
    data_record = {
        "path": str(Path(data_dir).resolve()),
        "fingerprint": data.fingerprint,
        "manifest": data.manifest,
    }
    if last.exists():
        if not resume:
            raise OptionError(
                "out_dir",
                out,
                "already holds a run; pass `resume=True` to continue it or choose a new `out_dir`",
            )
        try:
            ckpt = torch.load(last, map_location="cpu", weights_only=False, mmap=True)
        except Exception as e:  # noqa: BLE001 - truncated, empty, not a checkpoint: all one answer
            raise OptionError(
                "out_dir",
                out,
                f"its {last.relative_to(out)} cannot be read ({type(e).__name__}: "
                f"{' '.join(str(e).split())[:160]}); a copy cut short? Delete it to start the "
                "run again from step 0 in this folder (the periodic checkpoint is this same "
                "file), or choose a new `out_dir`",
            ) from None
        saved = ckpt.get("coordformer", {}) if isinstance(ckpt, dict) else {}
        saved_mc = _as_current(saved.get("model_config") or {})
        # a run recorded with an older LM fingerprint version, or its LM folder spelt otherwise,
        # resumes with its own record
        model_config = with_recorded_lm(model_config, saved_mc)
        if saved_mc != model_config.to_dict():
            diff = _config_diff(saved_mc, model_config.to_dict())
            raise OptionError(
                "out_dir",
                out,
                f"{last.relative_to(out)} was trained with a different model config ({diff}); "
                "use the original settings to resume, or a new `out_dir` to start afresh",
            )
        old = saved.get("train_config", {})
        changed = [k for k in DATA_STREAM_FIELDS if k in old and old[k] != cfg.to_dict()[k]]
        if changed:
            raise OptionError(
                "out_dir",
                out,
                f"{last.relative_to(out)} was trained with different "
                f"{', '.join(f'`{k}`' for k in changed)}; "
                "resuming would change the data stream. Use the original values or a new "
                "`out_dir`",
            )
        # the weights a run started from are part of what it saw (eval.leakage lists their
        # chains): a resume keeps them on record, given again or not
        was = old.get("init")
        if was and cfg.init is None:
            # a relative record (older runs) made absolute where it can be found from here
            cfg = cfg.replace(init=str(Path(was).resolve()) if Path(was).exists() else was)
        elif (
            was
            and not Path(was).is_absolute()
            and not Path(was).exists()
            and was not in shipped_models()
            and cfg.init
            and Path(cfg.init).exists()
        ):
            # recorded relative to another working directory by an older version: what the user
            # gives now cannot be compared with it, and is what can be read from here (an
            # absolute record that is gone stays: the run's list of chains is then partial)
            log.warning(
                "%s started from %s, which is not there from here; keeping %s on record instead",
                out,
                was,
                cfg.init,
            )
        elif was and not _same_weights(cfg.init, was):
            gone = not Path(was).exists() and was not in shipped_models()
            raise OptionError(
                "init",
                cfg.init,
                f"{out} started from {was}"
                + (
                    ", which is no longer there; a resume reads the run's own weights: resume "
                    "without `init`, with the architecture the run records (model_config in "
                    f"{out / 'config.json'})"
                    if gone
                    else "; a resume keeps those weights on record: give the same `init` or none"
                ),
            )
        reached = ckpt.get("global_step")
        if isinstance(reached, int) and reached > cfg.max_steps:
            # Lightning would train nothing, validate, and leave a config.json whose max_steps
            # the checkpoint has already passed (equal to it: validate again, as documented)
            raise OptionError(
                "max_steps",
                cfg.max_steps,
                f"{last.relative_to(out)} is already at step {reached}: nothing to train. Set "
                "`max_steps` above it to continue the run, or choose a new `out_dir`",
            )
        before = _previous_data(out, saved)
        if before and before.get("fingerprint") != data.fingerprint:
            if not allow_new_data:
                raise OptionError(
                    "data_dir",
                    data_dir,
                    f"another dataset (fingerprint {data.fingerprint}) "
                    f"than {out} was trained on ({before.get('path', 'another dataset')}, "
                    f"dataset fingerprint {before['fingerprint']}): pass `allow_new_data=True` "
                    "to continue on it, or choose a new `out_dir`",
                )
            data_record["previous"] = [*before.pop("previous", []), before]
            # the best so far was judged on the other dataset's valid split: not restored (the
            # file stays until this run saves a best of its own, then is kept aside, see
            # _BestCheckpoint; `evaluate -c RUN` skips a best.ckpt of another dataset)
            new_data = True
        elif before and before.get("previous"):
            # resumed on the same data again: the datasets before it stay on record
            data_record["previous"] = before["previous"]
        ckpt_path = str(last)
        if getattr(rank_zero_only, "rank", 0) == 0:
            print(
                f"resuming {out} from step {ckpt.get('global_step', '?')}",
                file=sys.stderr,
                flush=True,
            )
        del ckpt
    module = MaskedLMModule(model_config.to_dict(), cfg.to_dict())
    module.data_fingerprint = data.fingerprint
    module.previous_fingerprints = [p.get("fingerprint") for p in data_record.get("previous", [])]
    if init_state is None and cfg.init is not None and ckpt_path is None:
        init_state = _init_state(cfg.init, model_config)
    if init_state is not None and ckpt_path is None:
        module.model.load_state_dict(init_state)
    payload = {
        "model_config": model_config.to_dict(),
        "train_config": cfg.to_dict(),
        "data": data_record,
        "n_parameters": module.model.num_parameters(),
        **(extra_meta or {}),
    }
    extra_callbacks = callbacks
    val_batches = None if len(data.split_indices("valid")) else 0
    no_validation = {}
    if val_batches == 0:
        # README promises best.ckpt for `evaluate -c RUN`; say up front why there will be none
        no_validation = {
            "no_validation": f"{data.path}: the valid split is empty, so there is no validation "
            "and no checkpoints/best.ckpt; `coordformer evaluate -c "
            f"{out}` will use checkpoints/last.ckpt"
        }
        if getattr(rank_zero_only, "rank", 0) == 0:
            log.warning("%s", no_validation["no_validation"])
    callbacks = [
        # last.ckpt every checkpoint_every_steps (independent of validation) so a crash loses
        # little. No version counter: it rewrites last.ckpt whoever wrote it (a stop on a signal,
        # the segment before a resume) instead of adding last-v1.ckpt, last-v2.ckpt, ... beside it
        # at the end of training.
        _PeriodicCheckpoint(
            dirpath=ckpt_dir,
            filename="periodic",
            every_n_train_steps=cfg.checkpoint_every_steps,
            save_top_k=0,
            save_last=True,
            enable_version_counter=False,
        ),
        _ConfigWriter(out, payload),
    ]
    best = (
        _BestCheckpoint(ckpt_dir, forget_restored=new_data, data_fingerprint=data.fingerprint)
        if val_batches is None
        else None
    )
    if best is not None:
        callbacks.append(best)
    callbacks = [*callbacks, *(extra_callbacks or [])]
    if progress:
        # a bar of the time budget with --max-minutes; plain lines when the output is not a terminal
        callbacks.append(TrainProgressBar(cfg.max_minutes))
    # One version folder per (re)start so a resumed run never overwrites earlier log segments.
    # flushed each time it logs (Lightning flushes every 100 steps by default), so a killed run
    # keeps its log
    loggers = [CSVLogger(out, name="logs", flush_logs_every_n_steps=max(cfg.log_every_steps, 1))]
    tensorboard = cfg_tensorboard_available()
    if tensorboard:
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(out, name="tensorboard"))
    plugins = []
    if slurm:
        from lightning.fabric.plugins.environments import SLURMEnvironment

        # our handler instead of Lightning's (see StopOnSignal)
        plugins.append(SLURMEnvironment(auto_requeue=False))
    if stop is not None:
        callbacks.append(stop)
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        trainer = L.Trainer(
            plugins=plugins or None,
            accelerator=cfg.accelerator,
            devices=_parse_devices(cfg.devices),
            num_nodes=cfg.num_nodes,
            strategy=cfg.strategy,
            precision=resolve_precision(cfg.precision, _uses_cuda(cfg.accelerator)),
            max_steps=cfg.max_steps,
            max_epochs=-1,
            # Lightning counts batches here, not optimizer steps
            val_check_interval=cfg.val_every_steps * cfg.accumulate_grad_batches,
            check_val_every_n_epoch=None,
            limit_val_batches=val_batches,
            num_sanity_val_steps=0,
            gradient_clip_val=cfg.grad_clip or None,
            accumulate_grad_batches=cfg.accumulate_grad_batches,
            log_every_n_steps=cfg.log_every_steps,
            callbacks=callbacks,
            logger=loggers,
            enable_progress_bar=progress,
            enable_model_summary=False,
            use_distributed_sampler=False,  # MaskedBatches shards itself, deterministically
            deterministic=False,
        )
    except (ValueError, TypeError, MisconfigurationException) as e:
        # a bad accelerator / devices / strategy value: Lightning's own words, as a one-line error
        raise UsageError(
            f"the trainer refused accelerator={cfg.accelerator!r} devices={cfg.devices!r} "
            f"strategy={cfg.strategy!r}: {' '.join(str(e).split())}"
        ) from None
    max_pos = module.model_config.max_len
    lm = getattr(module.model, "lm", None)
    lm_window = lm.max_residues if lm is not None else None
    if lm_window is not None and cfg.crop_mode == "spatial" and cfg.crop_length > lm_window:
        raise OptionError(
            "crop_length",
            cfg.crop_length,
            f"a spatial crop must lie within the {lm_window} residues the language model reads: "
            f"at most {lm_window}",
        )
    if cfg.cuda_graphs:
        # One shape for the layers (StaticRows), each compiled on its own: the embedding and the
        # LM head before and after them change shape every step and stay eager. mode
        # "reduce-overhead" records each layer's kernels as CUDA graphs on a GPU.
        module.model.static_rows = StaticRows.for_budget(
            cfg.tokens_per_batch, cfg.crop_length, _shortest_train_chain(data, cfg.crop_length)
        )
        for layer in module.model.layers:
            layer.compile(mode="reduce-overhead", dynamic=False)
    elif cfg.compile:
        # In place (nn.Module.compile), not torch.compile(model): the state dict keeps its plain
        # keys, so a checkpoint resumes, exports and loads the same with or without --compile.
        # dynamic=True: batches change shape every step (length buckets), and the default first
        # compiles for the first shape, then again with dynamic sizes: one cold compile fewer
        module.model.compile(dynamic=True)
    metrics = {}
    try:
        trainer.fit(
            module, datamodule=_DataModule(data, cfg, max_pos, lm_window), ckpt_path=ckpt_path
        )
        if stop is not None:
            stop.wrap_up()
            if stop.stopped_by == signal.SIGUSR1:
                # not finished: the requeued job (the same command) resumes from last.ckpt
                return {
                    "is_global_zero": trainer.is_global_zero,
                    "global_step": trainer.global_step,
                    "stopped_for_requeue": True,
                    "requeued": stop.requeue_ok,
                    "checkpoint": str(last.resolve()),  # as best_checkpoint.path
                }
            received = stop.received if stop.received != signal.SIGUSR1 else 0
            if trainer.world_size > 1:
                received = int(trainer.strategy.broadcast(received, 0))
            if (
                received and stop.stopped_at is None
            ):  # came during the last step: training is complete
                stop.save(trainer)
                stop.stopped_by, stop.stopped_at = received, trainer.global_step
        if stop is None or stop.stopped_at is None:
            # A final validation so the summary reports the model as it ended; fit's own, when
            # it validated on its last step (the checkpoint callback has seen that one already)
            last_val = module.fit_validation
            if val_batches is None and last_val is not None and last_val[0] == trainer.global_step:
                metrics = dict(last_val[1])
            elif val_batches is None:
                res = trainer.validate(
                    module, datamodule=_DataModule(data, cfg, max_pos, lm_window), verbose=False
                )
                metrics = {k: float(v) for k, v in (res[0] if res else {}).items()}
            if "val/loss" in metrics:
                # validate() saves nothing, and the loop's checkpoint keeps only a strictly lower
                # loss: the final model wins ties either way
                best.consider_final(trainer, metrics["val/loss"])
            trainer.save_checkpoint(last)
    except Interrupted as e:
        if (
            stop.stopped_at is None and not stop.wrapped_up
        ):  # setting up, or a second Ctrl-C part-way through a step
            what = (
                (
                    f"a second {signal_name(e.signum)} part-way through a step: nothing saved"
                    + (" since the last periodic checkpoint" if last.exists() else "")
                )
                if stop.started
                else f"{signal_name(e.signum)} before training started: nothing to save"
            )
            raise TrainingInterrupted(
                f"stopped by {what}",
                e.signum,
                resumable=last.exists(),
                report=trainer.is_global_zero,
            ) from None
        if stop.stopped_at is None:  # the final validation: training is complete
            stop.save(trainer)
            stop.stopped_by, stop.stopped_at = e.signum, trainer.global_step
    if stop is not None and stop.stopped_at is not None:
        name = signal_name(stop.stopped_by)
        summary = {
            "global_step": stop.stopped_at,
            "interrupted": {"signal": name, "step": stop.stopped_at},
            "train_minutes": module.train_seconds / 60.0,
            "skipped_steps": module.skipped_steps,
            # the rate alone: measuring the device's matrix
            # rate would delay a stop that may be on a deadline
            **_utilisation(module, trainer, measure_peak=False),
            "checkpoint": str(last.resolve()),  # as best_checkpoint.path
            **_best_summary(best),
            **no_validation,
        }
        if trainer.is_global_zero:
            (out / "summary.json").write_text(json.dumps({**payload, **summary}, indent=2))
        raise TrainingInterrupted(
            f"stopped by {name}: saved {last} at step {stop.stopped_at}",
            stop.stopped_by,
            step=stop.stopped_at,
            checkpoint=str(last),
            resumable=True,
            report=trainer.is_global_zero,
        )
    summary = {
        "is_global_zero": trainer.is_global_zero,
        "global_step": trainer.global_step,
        "train_minutes": module.train_seconds / 60.0,
        "skipped_steps": module.skipped_steps,
        **_utilisation(module, trainer),
        "final_val": metrics,
        "checkpoint": str(last.resolve()),  # as best_checkpoint.path
        **_best_summary(best),
        **no_validation,
        "tensorboard": str((out / "tensorboard").resolve())
        if tensorboard
        else "off: the tensorboard package is not installed (pip install tensorboard); metrics are "
        "in logs/version_N/metrics.csv",
    }
    diverged = _diverged(module, metrics)
    if diverged:
        # it ended, so it exits 0, but its model is no model: say so where a user looks
        summary["diverged"] = diverged
        if trainer.is_global_zero:
            log.warning("%s", diverged)
    if trainer.is_global_zero:
        (out / "summary.json").write_text(json.dumps({**payload, **summary}, indent=2))
    return summary


def _diverged(module, metrics: dict) -> str | None:
    """A sentence when the run ended with non-finite weights or a non-finite validation loss
    (a learning rate far too high, say); else None."""
    bad = sum(not bool(torch.isfinite(p).all()) for p in module.model.parameters())
    loss = metrics.get("val/loss")
    if not bad and (loss is None or math.isfinite(loss)):
        return None
    what = f"{bad} weight tensors hold non-finite values" if bad else "the weights are finite"
    return (
        f"the run diverged: final validation loss {loss}, {what}; its checkpoints are unusable. "
        "Train again with a lower --lr (or --grad-clip), from a new --out"
    )


def _best_summary(best: _BestCheckpoint | None) -> dict:
    info = best.summary() if best is not None else None
    return {"best_checkpoint": info} if info else {}


def _same_weights(a: str | None, b: str) -> bool:
    """Whether two ``init`` values name the same weights: equal, or the same file or folder (one
    recorded relative, before ``pretrain`` recorded paths absolute)."""
    if a == b:
        return True
    if a is None:
        return False
    pa, pb = Path(a), Path(b)
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def _previous_data(out: Path, saved: dict) -> dict | None:
    """The dataset a run was trained on: {"fingerprint", "path", "previous": [...]} from config.json
    (or only the fingerprint, from the checkpoint, when config.json is missing); None when
    unknown."""
    from ..data.store import manifest_fingerprint

    record = {}
    try:
        record = dict(json.loads((out / "config.json").read_text()).get("data") or {})
    except (OSError, ValueError):
        pass
    if "fingerprint" not in record and isinstance(
        record.get("manifest"), dict
    ):  # a run from before fingerprints
        record["fingerprint"] = manifest_fingerprint(record["manifest"])
    fp = saved.get("data_fingerprint") or record.get("fingerprint")
    if not fp:
        return None
    record.pop("manifest", None)
    return {**record, "fingerprint": fp}


def _utilisation(module, trainer, measure_peak: bool = True) -> dict:
    """Model FLOPs per second of training time over the whole run (PaLM-style count of the residues
    seen, ``coordformer.model.flops``; all processes together) and, with ``measure_peak``, the
    utilisation against this device's matrix-product rate, measured here after training (bf16 on
    CUDA, float32 on CPU)."""
    from ..model.flops import measured_matmul_rate

    if module.train_seconds <= 0:
        return {}
    rate = module.model_flops * trainer.world_size / module.train_seconds
    if not measure_peak:
        return {"model_tflops_per_s": rate / 1e12}
    device = str(module.device)
    try:
        peak = measured_matmul_rate(device) * trainer.world_size
    except RuntimeError:  # an accelerator without the matmul dtype: report the rate alone
        return {"model_tflops_per_s": rate / 1e12}
    return {
        "model_tflops_per_s": rate / 1e12,
        "matmul_tflops_per_s": peak / 1e12,
        "mfu": rate / peak,
    }


def _shortest_train_chain(data: PreparedDataset, crop_length: int) -> int:
    """The fewest residues a training chain brings to a batch (as MaskedBatches crops them): it
    bounds how many chains one token budget can hold, and so the StaticRows shape."""
    idx = data.split_indices("train")
    return int(cropped_lengths(data, idx, crop_length).min()) if len(idx) else crop_length


def _uses_cuda(accelerator: str) -> bool:
    """Whether Lightning will train on a CUDA GPU for
    ``accelerator`` ("auto" takes one when there is one)."""
    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def cfg_tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def _parse_devices(devices: str):
    if devices == "auto":
        return "auto"
    try:
        return int(devices)
    except ValueError:
        return devices
