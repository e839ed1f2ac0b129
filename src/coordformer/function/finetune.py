"""``coordformer finetune``: function prediction (EC / GO) on top of a pretrained encoder.

Two heads, as in the paper:

* ``linear``: fine-tune the whole encoder with one linear layer on the mean-pooled final states;
  training inputs are randomly rotated each time, as in pretraining. By default the linear layer
  is first fitted on frozen embeddings (``probe_epochs``; "LP-FT", Kumar et al. 2022, ICLR), so the
  encoder is fine-tuned under a head that already works instead of one whose random gradients
  disturb the pretrained features, and far fewer full passes are needed.
* ``mlp``: a residual MLP on frozen mean-pooled embeddings (computed once, unrotated).

Multi-label binary cross-entropy; validation Fmax after every epoch; early stopping on it; the
checkpoint with the best validation Fmax is kept and used for the test predictions. Baselines come
from the same code: a no-coords pretrained checkpoint, or ``random_init`` (the checkpoint's
architecture with fresh weights, i.e. no pretraining).

Outputs in the run folder: config.json (FinetuneConfig + model config + data report + command),
checkpoints/best.ckpt, predictions_{valid,test}.npz (ids, y_true, y_score, classes), metrics.json
(Fmax, micro-AUPR, flattened max-F1 on valid and test under DeepFRI's protocol, ``protocol``; test
broken down by identity bin) and the Lightning CSV log. Validation Fmax, for early stopping, follows
the same protocol (``metrics.function_metrics``)."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import nn

from ..config import HEADS, SEED, FinetuneConfig  # noqa: F401 - HEADS re-exported
from ..data.batching import BatchSettings, collate_chains, token_budget_batches
from ..data.store import PreparedDataset
from ..errors import OptionError, TrainingInterrupted, UsageError
from ..model.encode import encode, in_canonical_frame
from ..train.lifecycle import (
    Interrupted,
    StopOnSignal,
    quiet_lightning,
    resolve_precision,
    signal_name,
)
from ..train.progress import EpochProgressBar
from .labels import (
    function_dataset,
    missing_structure_hint,
    read_annotations,
    read_identity_bins,
    read_split,
)
from .metrics import (
    METRICS_PROTOCOL,
    breakdown_by_identity,
    function_fmax,
    function_metrics,
)


def deepfri_files(labels_dir: str | Path, task: str) -> dict[str, Path]:
    """Locate annot/train/valid/test(/identity csv) files of a DeepFRI benchmark folder for
    ``task``."""
    d = Path(labels_dir)
    prefix = "nrPDB-EC_" if task == "ec" else "nrPDB-GO_"
    found = {}
    for key, pattern in (
        ("annot", "*_annot.tsv"),
        ("train", "*_train.txt"),
        ("valid", "*_valid.txt"),
        ("test", "*_test.txt"),
        ("identity", "*_test.csv"),
    ):
        hits = sorted(d.glob(prefix + pattern))
        if hits:
            found[key] = hits[0]
    missing = [k for k in ("annot", "train", "valid", "test") if k not in found]
    if missing:
        raise OptionError(
            "labels_dir",
            d,
            f"no {prefix}{'/'.join(missing)} file(s) for task {task}; "
            "point it at a folder with the DeepFRI nrPDB files",
        )
    return found


class ResidualMLP(nn.Module):
    """x [B, D] -> logits [B, C]: Linear(D, hidden), then ``blocks`` x (x + Linear(GELU(LN(x)))),
    LN, Linear."""

    def __init__(self, d_in: int, n_classes: int, hidden: int, blocks: int, dropout: float):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.GELU(), nn.Dropout(dropout)
            )
            for _ in range(blocks)
        )
        self.out = nn.Sequential(
            nn.LayerNorm(hidden), nn.Dropout(dropout), nn.Linear(hidden, n_classes)
        )

    def forward(self, x):
        h = self.inp(x)
        for b in self.blocks:
            h = h + b(h)
        return self.out(h)


class FunctionModule(L.LightningModule):
    """BCE multi-label classifier. With ``encoder`` the batch is a structure batch ({"batch": a
    ``Batch``, "labels", "rows"}) and the encoder is trained too; without, it is {"features",
    "labels", "rows"}. ``classes`` (names, [n_classes]) makes validation Fmax follow the test
    protocol (:func:`function_metrics`: partial EC numbers left out)."""

    def __init__(
        self,
        cfg: FinetuneConfig,
        n_classes: int,
        d_in: int,
        encoder: nn.Module | None = None,
        use_coords: bool = True,
        classes: Sequence[str] | None = None,
    ):
        super().__init__()
        self.cfg, self.encoder, self.use_coords = cfg, encoder, use_coords
        self.classes = classes
        self.head = (
            nn.Linear(d_in, n_classes)
            if cfg.head == "linear"
            else ResidualMLP(d_in, n_classes, cfg.hidden, cfg.blocks, cfg.dropout)
        )
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.best_fmax = -1.0

    def init_output_bias(self, y: np.ndarray) -> None:
        """Set the last layer's bias to the log-odds of each class in the training labels
        ``y`` [N, C] (additive smoothing keeps classes without positives finite)."""
        p = (y.sum(0) + 0.5) / (len(y) + 1.0)
        last = self.head if isinstance(self.head, nn.Linear) else self.head.out[-1]
        with torch.no_grad():
            last.bias.copy_(torch.from_numpy(np.log(p) - np.log1p(-p)).to(last.bias.dtype))

    def forward(self, batch) -> torch.Tensor:
        if self.encoder is None:
            return self.head(batch["features"])
        b = batch["batch"]
        if not self.training:
            # unrotated evaluation batches come in their files' frames: the canonical frame makes
            # predictions independent of it, as the probe's frozen features (iter_pooled) are
            b = in_canonical_frame(b)
        _, pooled = encode(self.encoder, b, None, self.use_coords)
        return self.head(pooled)

    def training_step(self, batch, _):
        loss = nn.functional.binary_cross_entropy_with_logits(self(batch).float(), batch["labels"])
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch["labels"]))
        return loss

    def validation_step(self, batch, _):
        # in float32 whatever the run's precision: under bf16-mixed the scores came out in 277
        # distinct values, and early stopping ranked epochs by an Fmax the float32 predictions
        # written after training (metrics.json) did not reproduce
        with torch.autocast(self.device.type, enabled=False):
            scores = torch.sigmoid(self(batch).float())
        self._val.append((scores.cpu(), batch["labels"].cpu()))

    def on_validation_epoch_end(self):
        scores = torch.cat([s for s, _ in self._val]).numpy()
        labels = torch.cat([y for _, y in self._val]).numpy()
        self._val.clear()
        f = function_fmax(labels, scores, self.classes)
        f = 0.0 if not math.isfinite(f) else f
        self.best_fmax = max(self.best_fmax, f)
        self.log("valid_fmax", f, prog_bar=True)

    def configure_optimizers(self):
        groups = [{"params": self.head.parameters(), "lr": self.cfg.lr}]
        if self.encoder is not None:
            groups.append(
                {"params": self.encoder.parameters(), "lr": self.cfg.lr * self.cfg.encoder_lr_scale}
            )
        return torch.optim.AdamW(groups, weight_decay=self.cfg.weight_decay)


class _StructureBatches(torch.utils.data.Dataset):
    """Token-budget batches of unmasked chains with their label rows; reshuffled (and re-cropped,
    re-rotated) per epoch when training. Items: {"batch": Batch, "labels": [B, C] float, "rows": [B]
    long (positions in the split)}."""

    def __init__(
        self,
        data: PreparedDataset,
        idx: np.ndarray,
        y: np.ndarray,
        cfg: FinetuneConfig,
        train: bool,
    ):
        self.data, self.idx, self.y, self.cfg, self.train = (
            data,
            idx,
            torch.from_numpy(y),
            cfg,
            train,
        )
        self.settings = BatchSettings(
            crop_length=cfg.max_length,
            tokens_per_batch=max(cfg.tokens_per_batch, cfg.max_length),
            rotate=train,
            random_crop=train,
        )
        self.lengths = np.minimum(data.lengths[idx], cfg.max_length)
        self.epoch = 0
        self.skip = 0  # batches of this epoch trained before a resume
        self._plan = token_budget_batches(self.lengths, self.settings.tokens_per_batch, None)

    def set_epoch(self, epoch: int, skip: int | None = 0) -> None:
        """Epoch ``epoch``'s batches, its first ``skip`` left out (done before a resume: Lightning
        then asks for the rest, from index 0)."""
        self.epoch, self.skip = epoch, skip or 0
        if self.train:
            rng = np.random.default_rng([self.cfg.seed, epoch])
            self._plan = token_budget_batches(self.lengths, self.settings.tokens_per_batch, rng)

    def __len__(self):
        return len(self._plan) - self.skip

    def __getitem__(self, k):
        members = self._plan[k + self.skip]
        b = collate_chains(
            self.data, self.idx[members], self.settings, self.cfg.seed, self.epoch, masked=False
        )
        return {
            "batch": b,
            "labels": self.y[members],
            "rows": torch.from_numpy(np.asarray(members)),
        }


class _EpochSetter(L.Callback):
    """Each epoch's batches (``set_epoch``); in the epoch a run resumes in, Lightning calls no
    ``on_train_epoch_start`` and asks for the batches left from index 0: that epoch's batches
    then, without the ones trained before the stop."""

    def __init__(self, ds):
        self.ds = ds

    def on_train_start(self, trainer, module):
        self.ds.set_epoch(trainer.current_epoch, _batches_done(trainer))

    def on_train_epoch_start(self, trainer, module):
        self.ds.set_epoch(trainer.current_epoch, 0)


def _epoch_order_of(loader):
    """What decides a train loader's epoch order: its sampler (frozen features, ``_EpochOrder``)
    or its dataset (structure batches, ``_StructureBatches``)."""
    return loader.sampler if isinstance(loader.sampler, _EpochOrder) else loader.dataset


def _batches_done(trainer) -> int:
    """Batches of the current epoch that the (restored) run has trained on."""
    return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)


class _EpochOrder(torch.utils.data.Sampler):
    """The train order of frozen features: epoch e's is the one a shuffling DataLoader with a
    generator seeded ``seed`` gave in its (e+1)-th pass (what this loader was), so that a resumed
    epoch can be drawn again, less its first ``skip`` items."""

    def __init__(self, n: int, seed: int, batch_size: int):
        self.n, self.seed, self.batch_size = n, seed, batch_size
        self.epoch = self.skip = 0

    def set_epoch(self, epoch: int, skip_batches: int | None = None) -> None:
        """Epoch ``epoch``'s order, less its first ``skip_batches`` batches when given; Lightning's
        own call at each epoch's start (epoch only) keeps a resumed epoch's skip."""
        if skip_batches is not None:
            self.skip = skip_batches * self.batch_size
        elif epoch != self.epoch:
            self.skip = 0
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed)
        sampler = torch.utils.data.RandomSampler(range(self.n), generator=generator)
        for _ in range(self.epoch + 1):  # the earlier epochs' passes, to reach this one's draw
            # a loader with this generator drew its workers' base seed from it before each pass
            torch.empty((), dtype=torch.int64).random_(generator=generator)
            order = list(sampler)
        return iter(order[self.skip :])

    def __len__(self) -> int:
        return self.n - self.skip


def _feature_loader(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool, seed: int):
    ds = [
        {
            "features": torch.from_numpy(x[i]),
            "labels": torch.from_numpy(y[i]),
            "rows": torch.tensor(i),
        }
        for i in range(len(x))
    ]
    order = _EpochOrder(len(ds), seed, batch_size) if shuffle else None
    # its own generator (the base seed each pass draws), not the global one dropout uses
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=order, generator=g)


def finetune(
    checkpoint: str,
    labels_dir: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    cfg: FinetuneConfig,
    device: str = "cpu",
    progress: bool = True,
    echo=print,
    command: str = "",
) -> dict:
    """Train a function head; returns metrics (also written to ``out_dir``/metrics.json).

    Ctrl-C (SIGINT) or SIGTERM, when called from the main thread: checkpoints/last.ckpt is written
    at the next step boundary and ``TrainingInterrupted`` is raised (outside training steps: at
    once). The same call then resumes: stages that finished (the linear probe, a head) are kept, the
    interrupted one continues from last.ckpt with the batches of its epoch not yet trained on.
    """
    stop = None
    if threading.current_thread() is threading.main_thread():
        stop = StopOnSignal(Path(out_dir) / "checkpoints" / "last.ckpt")
        stop.install()
    try:
        return _finetune(
            checkpoint, labels_dir, data_dir, out_dir, cfg, device, progress, echo, command, stop
        )
    except Interrupted as e:  # outside a training step: nothing new to save
        raise TrainingInterrupted(
            f"stopped by {signal_name(e.signum)} outside a training step: nothing new to save",
            e.signum,
            resumable=(Path(out_dir) / "checkpoints" / _RESUME).exists(),
        ) from None
    finally:
        if stop is not None:
            stop.uninstall()


#: In checkpoints/ while a run is unfinished: its settings, the stage running, the stages finished.
_RESUME = "resume.json"


def _finetune(
    checkpoint,
    labels_dir,
    data_dir,
    out_dir,
    cfg: FinetuneConfig,
    device,
    progress,
    echo,
    command,
    stop,
) -> dict:
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from ..embed import iter_pooled
    from ..model import CoordFormer
    from ..model.checkpoints import load_model, missing_coords_warning

    quiet_lightning()
    out = Path(out_dir)
    if (out / "metrics.json").exists():
        raise OptionError(
            "out_dir", out, "already holds a finished fine-tuning run; choose another `out_dir`"
        )
    out.mkdir(parents=True, exist_ok=True)
    last, state_file = out / "checkpoints" / "last.ckpt", out / "checkpoints" / _RESUME
    state = {
        "config": cfg.to_dict(),
        "checkpoint": str(checkpoint),
        "running": None,
        "finished": {},
    }
    if state_file.exists():  # an interrupted run: same settings, then go on from where it stopped
        old = json.loads(state_file.read_text())
        changed = [k for k, v in state["config"].items() if old.get("config", {}).get(k) != v]
        changed += ["checkpoint"] if old.get("checkpoint") != state["checkpoint"] else []
        if changed:
            raise OptionError(
                "out_dir",
                out,
                "holds an interrupted fine-tuning run with different "
                f"{', '.join(changed)}; "
                "re-run its own command to resume it, or choose another `out_dir`",
            )
        state = old
        echo(
            f"resuming the interrupted run in {out}: "
            + ", ".join(
                [f"{n} finished" for n in state["finished"]]
                + (
                    [f"{state['running']} from {last}"]
                    if state["running"] and last.exists()
                    else []
                )
            )
        )
    L.seed_everything(cfg.seed, verbose=False)
    files = deepfri_files(labels_dir, cfg.task)
    labels = read_annotations(files["annot"], cfg.task)
    data = PreparedDataset(data_dir)
    available = set(data.ids)
    splits, report = {}, {}
    report["annotations"] = {
        "unknown_classes": labels.n_unknown,
        "chains_without_known_class": labels.n_unlabelled,
    }
    if labels.n_unknown:
        # DeepFRI's class list is the label space: an annotation outside it is left out, but said
        echo(
            f"{files['annot'].name}: {labels.n_unknown} annotations name a class outside its "
            f"{cfg.task} class list and were left out ({labels.n_unlabelled} chains keep no "
            "known class)"
        )
    for name in ("train", "valid", "test"):
        split_ids = read_split(files[name])
        ids, y, rep = function_dataset(labels, split_ids, available)
        hint = (
            missing_structure_hint(labels, split_ids, data.ids)
            if rep["without_structure"]
            else None
        )
        if not ids:
            raise UsageError(
                f"no {name} chain of {files[name].name} has both labels and a structure in "
                f"{data_dir}" + (f": {hint}" if hint else "")
            )
        splits[name] = (ids, np.array([data.index_of(i) for i in ids]), y)
        report[name] = rep
        echo(
            f"{name}: {rep['kept']} chains kept of {rep['in_split']} ({rep['without_structure']} "
            f"without structure, {rep['without_labels']} without labels)"
            + (f"; {hint}" if hint else "")
        )
    model, meta = load_model(checkpoint, map_location="cpu")
    model = model.float()
    leakage = None if cfg.random_init else pretraining_leakage(checkpoint, data, files, splits)
    if leakage and leakage.get("warning"):
        echo(f"WARNING: {leakage['warning']}")
    if cfg.random_init:
        torch.manual_seed(cfg.seed)
        model = CoordFormer(model.config)  # same architecture, no pretraining
    use_coords = model.config.use_coords if cfg.use_coords is None else cfg.use_coords
    if (
        not cfg.random_init
    ):  # a model that never learnt the missing flag, on mostly coordinate-less chains
        warning = missing_coords_warning(
            model,
            meta,
            data,
            np.concatenate([s[1] for s in splits.values()]),
            fraction=None if use_coords else 1.0,
        )
        if warning:
            echo(warning)
    n_classes = labels.n_classes
    d_model = model.config.d_model
    precision = resolve_precision(cfg.precision, str(device).startswith("cuda"))
    accelerator = "gpu" if device.startswith("cuda") else "mps" if device == "mps" else "cpu"
    train_y = splits["train"][2]

    def save_state(**changes) -> None:
        state.update(changes)
        state_file.parent.mkdir(parents=True, exist_ok=True)
        state_file.write_text(json.dumps(state, indent=2))

    def fit(
        module: FunctionModule, loaders: dict, max_epochs: int, name: str, patience: int
    ) -> tuple[int, str]:
        """Train with early stopping on validation Fmax; leaves ``module`` holding its best epoch's
        weights. Returns (epochs run, path of checkpoints/<name>.ckpt)."""
        if name in state["finished"]:  # finished before the run was interrupted
            done = state["finished"][name]
            module.load_state_dict(
                torch.load(done["best"], map_location="cpu", weights_only=False)["state_dict"]
            )
            module.best_fmax = done["best_fmax"]
            return done["epochs_run"], done["best"]
        ckpt_path = str(last) if state["running"] == name and last.exists() else None
        save_state(running=name)
        callbacks = [
            # not strict: a signal in a stage's first epoch stops it before any validation, and
            # a strict EarlyStopping then raised instead of letting the stop save and resume
            EarlyStopping("valid_fmax", mode="max", patience=patience, strict=False),
            ModelCheckpoint(
                out / "checkpoints", filename=name, monitor="valid_fmax", mode="max", save_top_k=1
            ),
            _EpochSetter(_epoch_order_of(loaders["train"])),
            *([stop] if stop is not None else []),
        ]
        if progress:
            stage = "MLP head" if cfg.head == "mlp" else "fine-tune"
            callbacks.append(EpochProgressBar("linear probe" if name == "probe" else stage))
        trainer = L.Trainer(
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=1,
            precision=precision,
            callbacks=callbacks,
            logger=CSVLogger(out, name="logs" if name == "best" else f"logs_{name}"),
            enable_progress_bar=progress,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            log_every_n_steps=1,
        )
        try:
            trainer.fit(module, loaders["train"], loaders["valid"], ckpt_path=ckpt_path)
        except Interrupted:
            if stop.stopped_at is None:  # setting up, or a second Ctrl-C part-way through a step
                raise
        if stop is not None:
            stop.wrap_up()
            if stop.stopped_at is not None:
                raise TrainingInterrupted(
                    f"stopped by {signal_name(stop.stopped_by)}: saved {last} at step "
                    f"{stop.stopped_at} ({name} stage)",
                    stop.stopped_by,
                    step=stop.stopped_at,
                    checkpoint=str(last),
                    resumable=True,
                )
        best_path = callbacks[1].best_model_path
        module.load_state_dict(
            torch.load(best_path, map_location="cpu", weights_only=False)["state_dict"]
        )
        if (
            ckpt_path is not None and callbacks[1].best_model_score is not None
        ):  # validations before the resume count
            module.best_fmax = max(module.best_fmax, float(callbacks[1].best_model_score))
        save_state(
            running=None,
            finished={
                **state["finished"],
                name: {
                    "epochs_run": trainer.current_epoch,
                    "best": best_path,
                    "best_fmax": module.best_fmax,
                },
            },
        )
        last.unlink(missing_ok=True)  # this stage's resume point, spent
        if (
            stop is not None and stop.received
        ):  # came during the stage's last step; the stage is kept
            raise Interrupted(stop.received)
        return trainer.current_epoch, best_path

    def frozen_features() -> dict:
        """Mean-pooled final states of every split's chains, computed once (eval mode,
        unrotated)."""
        model.to(device).eval()
        feats = {}
        for name, (ids, idx, y) in splits.items():
            x = np.zeros((len(idx), d_model), dtype=np.float32)
            pos = {ci: k for k, ci in enumerate(idx)}
            for chain_idx, _, mean, _ in iter_pooled(
                model, data, idx, None, use_coords, cfg.max_length, cfg.tokens_per_batch, device
            ):
                for r, ci in enumerate(chain_idx):
                    x[pos[ci]] = mean[r]
            feats[name] = x
        return {
            n: _feature_loader(feats[n], splits[n][2], cfg.batch_size, n == "train", cfg.seed)
            for n in splits
        }

    run_info: dict = {}
    if cfg.head == "mlp":
        loaders = frozen_features()
        module = FunctionModule(cfg, n_classes, d_model, classes=labels.classes)
        if cfg.prior_bias:
            module.init_output_bias(train_y)
        run_info["epochs_run"], best = fit(
            module,
            loaders,
            cfg.max_epochs,
            "best",
            cfg.patience,
        )
    else:
        probe = None
        if cfg.probe_epochs:
            # a linear layer on frozen features
            probe = FunctionModule(cfg, n_classes, d_model, classes=labels.classes)
            if cfg.prior_bias:
                probe.init_output_bias(train_y)
            feature_loaders = frozen_features()
            epochs, _ = fit(
                probe,
                feature_loaders,
                cfg.probe_epochs,
                "probe",
                cfg.probe_patience,
            )
            run_info["probe"] = {"epochs_run": epochs, "best_valid_fmax": probe.best_fmax}
            echo(
                f"linear probe: best validation Fmax {probe.best_fmax:.3f} after {epochs} epochs; "
                "now fine-tuning the encoder"
            )
        model.to("cpu").train()  # load_model hands back an inference-mode model
        module = FunctionModule(
            cfg, n_classes, d_model, encoder=model, use_coords=use_coords, classes=labels.classes
        )
        if probe is not None:
            module.head.load_state_dict(probe.head.state_dict())
        elif cfg.prior_bias:
            module.init_output_bias(train_y)
        sets = {
            n: _StructureBatches(data, splits[n][1], splits[n][2], cfg, train=n == "train")
            for n in splits
        }
        loaders = {
            n: torch.utils.data.DataLoader(sets[n], batch_size=None, shuffle=False) for n in sets
        }
        run_info["epochs_run"], best = fit(
            module,
            loaders,
            cfg.max_epochs,
            "best",
            cfg.patience,
        )
    module = module.to(device).eval()
    metrics = {**run_info, "best_checkpoint": str(best)}
    identity = read_identity_bins(files["identity"]) if "identity" in files else None
    for name in ("valid", "test"):
        ids, _, y = splits[name]
        s = np.zeros_like(y)
        with torch.no_grad():
            for batch in loaders[
                name
            ]:  # structure batches come length-sorted: put rows back in split order
                batch = {k: v.to(device) for k, v in batch.items()}
                s[batch["rows"].cpu().numpy()] = torch.sigmoid(module(batch).float()).cpu().numpy()
        np.savez(
            out / f"predictions_{name}.npz",
            ids=np.array(ids),
            y_true=y,
            y_score=s,
            classes=np.array(labels.classes),
        )
        metrics[name] = function_metrics(y, s, labels.classes)
        if name == "test" and identity:
            metrics["test_by_identity"] = breakdown_by_identity(ids, y, s, identity, labels.classes)
    metrics["protocol"] = METRICS_PROTOCOL
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "config.json").write_text(
        json.dumps(
            {
                "finetune": cfg.to_dict(),
                "checkpoint": str(checkpoint),
                "model": model.config.to_dict(),
                "use_coords": use_coords,
                "labels": {k: str(v) for k, v in files.items()},
                "data": str(data_dir),
                "data_report": report,
                "pretraining_leakage": leakage,
                "n_classes": n_classes,
                "command": command,
            },
            indent=2,
        )
    )
    state_file.unlink(missing_ok=True)  # finished: nothing to resume
    return metrics


def pretraining_leakage(checkpoint, data: PreparedDataset, files: dict, splits: dict) -> dict:
    """Could the encoder have seen this task's valid / test chains in pretraining? From what its
    files record (``model.weights.pretraining_data``): when it was pretrained on ``data`` itself
    (same fingerprint), the number of valid / test chains in ``data``'s train split; otherwise
    whether its dataset's ``--exclude`` files include the task's valid and test split files (by
    name); and in either case, where the encoder lists the chains it saw (``eval.leakage``: its
    train and valid splits, earlier datasets and ``--init`` weights), how many valid / test chains
    are among them by id or identical sequence (``seen_in_pretraining``). Returns
    {"known", "in_pretraining_train", "excluded_files", "warning", ...} (``warning`` None when
    nothing points to a leak). ``splits``: name -> (ids, dataset indices, labels)."""
    from ..eval.leakage import METHOD, seen_in_training, training_chains
    from ..model.weights import pretraining_data

    record = pretraining_data(checkpoint)
    out: dict = {"known": record is not None, "in_pretraining_train": None, "excluded_files": None}
    out["warning"] = None
    if record is None:
        return out
    warnings = []
    same = bool(record.get("fingerprint")) and record["fingerprint"] == data.fingerprint
    if same:
        train = set(data.split_indices("train").tolist())
        seen = {n: int(sum(int(i) in train for i in splits[n][1])) for n in ("valid", "test")}
        out["in_pretraining_train"] = seen
        if any(seen.values()):
            warnings.append(
                f"{seen['valid']} valid and {seen['test']} test chains of this task are in the "
                f"train split of {data.path}, which the encoder was pretrained on: its scores are "
                "not held out (prepare the data with --exclude on the task's valid and test files)"
            )
    else:
        excluded = {Path(f).name for f in record["config"].get("exclude_files") or ()}
        missing = [files[n].name for n in ("valid", "test") if files[n].name not in excluded]
        out["excluded_files"] = not missing
        # the dataset records its --exclude files' paths only: files named alike pass, whatever
        # chains they list
        out["excluded_by"] = "file name"
        if missing:
            warnings.append(
                f"the encoder's pretraining data did not --exclude {', '.join(missing)}: its "
                "train split may hold these chains or their homologues, so the scores may not be "
                "held out"
            )
    chains = training_chains(checkpoint)
    if chains is not None:  # the chains it saw, where listed: a check by id and sequence
        found = {
            n: seen_in_training(chains, data, splits[n][1])
            for n in ("valid", "test")
            if n in splits
        }
        counts = {n: f["seen"] for n, f in found.items()}
        out["seen_in_pretraining"] = {
            **counts,
            "ids": sorted({i for f in found.values() for i in f["seen_ids"]}),
            "matched_by": METHOD,
            **({"unknown": list(chains.unknown)} if chains.unknown else {}),
        }
        if chains.unknown:  # the counts are a lower bound
            warnings.append(
                "the encoder's pretraining chains are listed only in part (not listed: "
                f"{'; '.join(chains.unknown)}): chains of this task may be among those"
            )
        # on its own dataset, said already unless its valid split or copies elsewhere add some
        if any(counts.values()) and counts != out["in_pretraining_train"]:
            said = " and ".join(f"{c} {n}" for n, c in counts.items())
            warnings.append(
                f"{said} chains of this task were in the encoder's pretraining data (its train or "
                "valid split, by chain id or identical sequence): its scores on them are not "
                "held out"
            )
    out["warning"] = "; ".join(warnings) or None
    return out


def evaluate_predictions(
    runs: list[str | Path],
    split: str = "test",
    identity: str | Path | None = None,
    bootstrap: int = 0,
    seed: int = SEED,
) -> str:
    """A Markdown table of the metrics of saved predictions (run folders or .npz files), one row per
    run; with ``identity`` (DeepFRI *_test.csv) one Fmax / AUPR column pair per identity bin; with
    ``bootstrap`` > 0 the Fmax difference of each run from the first, with a 95% interval from
    resampling proteins (the same resamples for both runs; the runs must cover the same chains)."""
    bins = read_identity_bins(identity) if identity else None
    rows, loaded = [], []
    for r in runs:
        p = Path(r)
        f = p / f"predictions_{split}.npz" if p.is_dir() else p
        if not f.exists():
            raise UsageError(f"{f}: no predictions file (run `coordformer finetune` first)")
        try:
            z = np.load(f)
            ids, y, s = [str(x) for x in z["ids"]], z["y_true"], z["y_score"]
        except (OSError, ValueError, EOFError, KeyError) as e:
            raise UsageError(
                f"{f}: not a predictions file of `coordformer finetune` ({type(e).__name__}: "
                f"{e or 'empty file'})"
            ) from None
        classes = [str(c) for c in z["classes"]] if "classes" in z else None
        m = function_metrics(y, s, classes)
        loaded.append((ids, y, s, classes, m["fmax"]))
        row = [
            p.name if p.is_dir() else p.stem,
            str(len(ids)),
            f"{m['fmax']:.3f}",
            f"{m['micro_aupr']:.3f}",
            f"{m['flattened_max_f1']:.3f}",
        ]
        if bins:
            for b, m in breakdown_by_identity(ids, y, s, bins, classes).items():
                row.append(f"{m['fmax']:.3f} / {m['aupr']:.3f} (n={m['n']})")
        rows.append(row)
    head = ["run", "chains", "Fmax", "micro-AUPR", "flattened max-F1"]
    if bins:
        head += [f"{b} Fmax / AUPR" for b in next(iter(bins.values()))]
    if bootstrap and len(loaded) > 1:
        head.append(f"Fmax - first run (95% CI, {bootstrap} protein resamples)")
        ids0, y0, s0, c0, f0 = loaded[0]
        rng = np.random.default_rng(seed)
        draws = [rng.integers(0, len(ids0), len(ids0)) for _ in range(bootstrap)]
        rows[0].append("")
        for row, (ids, y, s, c, f) in zip(rows[1:], loaded[1:]):
            if ids != ids0:
                raise OptionError(
                    "bootstrap", bootstrap, "needs runs with the same chains in the same order"
                )
            d = [function_fmax(y[i], s[i], c) - function_fmax(y0[i], s0[i], c0) for i in draws]
            point = f - f0
            lo, hi = np.nanpercentile(d, [2.5, 97.5])
            row.append(f"{point:+.3f} ({lo:+.3f} to {hi:+.3f})")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
