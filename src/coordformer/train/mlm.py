"""Masked-language-model pretraining as a LightningModule."""

from __future__ import annotations

import math
import time

import lightning as L
import torch
import torch.nn.functional as F

from ..batch import Batch
from ..config import ModelConfig, TrainConfig
from ..errors import TrainingDivergedError
from ..model import CoordFormer
from ..model.flops import training_flops

#: Non-finite steps in a row after which training stops with an error instead of skipping on.
MAX_CONSECUTIVE_SKIPS = 50


def lr_factor(step: int, cfg: TrainConfig, time_fraction: float = 0.0) -> float:
    """Learning-rate multiplier: linear warmup, then cosine / constant / inverse-sqrt (Noam).

    With a wall-clock budget the cosine follows whichever is further along, steps or time, so a
    run stopped by ``max_minutes`` still ends at a low learning rate.
    """
    warm = max(cfg.warmup_steps, 1)
    if cfg.schedule == "noam":
        return min((step + 1) / warm, math.sqrt(warm / (step + 1)))
    if step < warm:
        return (step + 1) / warm
    if cfg.schedule == "constant":
        return 1.0
    progress = max((step - warm) / max(cfg.max_steps - warm, 1), time_fraction)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def masked_lm_loss(
    logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Mean cross-entropy over positions with a target. Returns (loss, n_correct, n_targets)."""
    sel = targets != -100
    n = int(sel.sum())
    lg = logits[sel].float()
    tg = targets[sel]
    loss = F.cross_entropy(lg, tg) if n else logits.sum() * 0.0
    correct = (lg.argmax(-1) == tg).sum()
    return loss, correct, n


def _chain_lengths(batch: Batch) -> list[int]:
    """Residues of each chain of the batch: one per row, or per segment of packed rows (attention
    is per chain, so the FLOP count's n^2 term must be too)."""
    if batch.segments is None:
        return batch.lengths.tolist()
    seg = batch.segments[batch.segments >= 0]
    rows = torch.arange(batch.segments.shape[0]).unsqueeze(1).expand_as(batch.segments)
    key = rows[batch.segments >= 0] * (int(seg.max()) + 1 if seg.numel() else 1) + seg
    return torch.unique(key, return_counts=True)[1].tolist()


class MaskedLMModule(L.LightningModule):
    def __init__(self, model_config: dict, train_config: dict):
        super().__init__()
        self.save_hyperparameters()
        self.model_config = ModelConfig.from_dict(model_config)
        self.train_config = TrainConfig.from_dict(train_config)
        self.model = CoordFormer(self.model_config)
        self.model_config = (
            self.model.config
        )  # a conditioned model records its language model's size and fingerprint
        self.model.gradient_checkpointing = self.train_config.activation_checkpointing
        self._t_last = None
        self._tokens_since = 0
        self._sec_at_log = 0.0
        self.train_seconds = 0.0  # wall clock spent in training steps, saved with checkpoints
        self.skipped_steps = (
            0  # optimizer steps skipped for non-finite gradients, saved with checkpoints
        )
        # training FLOPs of the residues seen (coordformer.model.flops), saved with checkpoints
        self.model_flops = 0.0
        self._flops_since = 0.0
        self._skips_in_a_row = 0
        self.data_fingerprint: str | None = (
            None  # the training dataset's (PreparedDataset.fingerprint), saved with checkpoints
        )

    def forward(self, batch: Batch, need_attention=False):
        return self.model(
            **batch.inputs(self.model_config.use_coords), need_attention=need_attention
        )

    def _time_fraction(self) -> float:
        mm = self.train_config.max_minutes
        return self.train_seconds / (mm * 60.0) if mm else 0.0

    def training_step(self, batch, batch_idx):
        now = time.perf_counter()
        if self._t_last is not None:
            self.train_seconds += now - self._t_last
        self._t_last = now
        out = self(batch)
        loss, correct, n = masked_lm_loss(out.logits, batch.targets)
        lengths = _chain_lengths(batch)
        ntok = int(sum(lengths))
        self._tokens_since += ntok
        # useful work only: padding and recomputation (activation checkpointing) are not model FLOPs
        flops = training_flops(self.model_config, lengths)
        self.model_flops += flops
        self._flops_since += flops
        bs = len(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/acc", correct.float() / max(n, 1), batch_size=bs)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=bs)
        if (
            self.global_step % max(self.train_config.log_every_steps, 1) == 0
            and self.train_seconds > 0
        ):
            rate = self._tokens_since / max(self.train_seconds - self._sec_at_log, 1e-9)
            self.log("train/tokens_per_s", rate, prog_bar=True, batch_size=bs)
            self.log(
                "train/model_tflops",
                self._flops_since / max(self.train_seconds - self._sec_at_log, 1e-9) / 1e12,
                batch_size=bs,
            )
            self._tokens_since = 0
            self._flops_since = 0.0
            self._sec_at_log = self.train_seconds
        # With a time budget the step-based ETA means
        # little; show the training minutes spent instead.
        self.log(
            "train/minutes",
            self.train_seconds / 60.0,
            batch_size=bs,
            prog_bar=bool(self.train_config.max_minutes),
        )
        return loss

    def on_train_batch_start(self, batch, batch_idx):
        if self.trainer.world_size > 1:
            # Each rank times itself; rank 0's clock decides so every replica uses the same learning
            # rate (DDP averages gradients, not parameters) and all stop on the same step.
            self.train_seconds = float(self.trainer.strategy.broadcast(self.train_seconds, 0))
        # Set from the step (and time) every batch rather than trusting restored optimizer state, so
        # a resumed run follows the schedule of its current config.
        f = lr_factor(self.global_step, self.train_config, self._time_fraction())
        for g in self.optimizers().param_groups:
            g["lr"] = self.train_config.lr * f

    def on_train_batch_end(self, outputs, batch, batch_idx):
        mm = self.train_config.max_minutes
        if mm:
            over = self.train_seconds >= mm * 60.0
            # Lightning does not synchronise should_stop across ranks; a rank leaving alone would
            # hang. Rank 0's clock decides (as for the learning rate): another rank's copy has its
            # own step time added since the last broadcast and could stop the run just before the
            # budget.
            if self.trainer.world_size > 1:
                over = bool(self.trainer.strategy.broadcast(over, 0))
            # `or`: a callback (the SLURM requeue, which
            # runs before this hook) may have asked to stop
            self.trainer.should_stop = self.trainer.should_stop or over

    def on_before_optimizer_step(self, optimizer):
        """Skip the update when any gradient is NaN/Inf (one rare bad step must not poison the
        weights).

        A bf16 small-3m run with Gaussian-initialised heads went NaN after 10,600 good steps and
        never recovered (docs/RESULTS.md). Dropping the gradients makes AdamW leave every parameter
        and its moments untouched. Under DDP the gradients are already all-reduced here, so every
        rank takes the same decision. fp16 runs leave this to Lightning's GradScaler.
        """
        if self.trainer.precision == "16-mixed":
            return
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads:
            return
        if bool(torch.isfinite(torch.stack(torch._foreach_norm(grads)).sum())):
            self._skips_in_a_row = 0
            return
        optimizer.zero_grad(set_to_none=True)
        self.skipped_steps += 1
        self._skips_in_a_row += 1
        self.log("train/skipped_steps", float(self.skipped_steps), batch_size=1)
        if self._skips_in_a_row >= MAX_CONSECUTIVE_SKIPS:
            raise TrainingDivergedError(
                f"training diverged: {self._skips_in_a_row} steps in a row with non-finite "
                f"gradients (step {self.global_step}); re-run from the last checkpoint with a "
                "lower `lr` or `precision=32-true`"
            )

    def on_validation_start(self):
        self._t_last = None  # validation time is not training time

    def validation_step(self, batch, batch_idx):
        out = self(batch)
        loss, correct, n = masked_lm_loss(out.logits, batch.targets)
        self.log("val/loss", loss, prog_bar=True, batch_size=max(n, 1), sync_dist=True)
        self.log("val/acc", correct.float() / max(n, 1), batch_size=max(n, 1), sync_dist=True)

    def on_validation_epoch_end(self):
        m = self.trainer.callback_metrics
        if "val/loss" in m:
            # identical on every rank (val/loss is already
            # synced); sync_dist only keeps Lightning from warning
            self.log("val/perplexity", torch.exp(m["val/loss"]), prog_bar=True, sync_dist=True)

    def configure_optimizers(self):
        cfg = self.train_config
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:  # a frozen conditioning language model
                continue
            (no_decay if p.ndim < 2 or "tokens" in name else decay).append(p)
        opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": cfg.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=cfg.lr * lr_factor(0, cfg),
            betas=tuple(cfg.betas),
        )
        return opt

    def on_save_checkpoint(self, checkpoint):
        checkpoint["coordformer"] = {
            "model_config": self.model_config.to_dict(),
            "train_config": self.train_config.to_dict(),
            "train_seconds": self.train_seconds,
            "skipped_steps": self.skipped_steps,
            "model_flops": self.model_flops,
            "torch_rng_state": torch.get_rng_state(),  # dropout draws from the global generator
            **({"data_fingerprint": self.data_fingerprint} if self.data_fingerprint else {}),
        }

    def on_load_checkpoint(self, checkpoint):
        # Runs from before `--compile` compiled in place saved torch.compile's wrapper prefix; drop
        # it so such a run resumes with or without --compile.
        state = checkpoint.get("state_dict", {})
        if any("._orig_mod." in k for k in state):
            checkpoint["state_dict"] = {k.replace("._orig_mod.", "."): v for k, v in state.items()}
        saved = checkpoint.get("coordformer", {})
        self.train_seconds = saved.get("train_seconds", 0.0)
        self.skipped_steps = saved.get("skipped_steps", 0)
        self.model_flops = saved.get("model_flops", 0.0)
        if "torch_rng_state" in saved:
            torch.set_rng_state(saved["torch_rng_state"])
