"""Masked-language-model pretraining as a LightningModule."""

from __future__ import annotations

import math
import time

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from ..batch import Batch
from ..config import ModelConfig, TrainConfig
from ..constants import AA_OFFSET, AMINO_ACIDS
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


def target_loss(
    logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Mean cross-entropy (float32) of ``logits`` [N, V] against ``targets`` [N] (every one a real
    target). Returns (loss, n_correct as a 0-dim tensor, N); N is read from the shape, so nothing
    waits for the device. A prediction is correct when the target is the most likely of the 20
    amino acids, as ``evaluate``'s recovery counts it (the loss is over the whole vocabulary)."""
    n = int(targets.shape[0])
    lg = logits.float()
    loss = F.cross_entropy(lg, targets) if n else logits.sum() * 0.0
    correct = (
        lg[:, AA_OFFSET : AA_OFFSET + len(AMINO_ACIDS)].argmax(-1) + AA_OFFSET == targets
    ).sum()
    return loss, correct, n


def masked_lm_loss(
    logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Mean cross-entropy over positions with a target: ``logits`` [B, L, V], ``targets`` [B, L]
    (-100 = no target). Returns (loss, n_correct, n_targets)."""
    sel = targets != -100
    return target_loss(logits[sel], targets[sel])


def _chain_lengths(batch: Batch) -> list[int]:
    """Residues of each chain of the batch: one per row, or per segment of packed rows (attention
    is per chain, so the FLOP count's n^2 term must be too). Read on the host when the batch was
    ``indexed`` before its transfer."""
    lengths = batch.chain_lengths
    return list(lengths if lengths is not None else batch.residues_per_chain())


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
        # training FLOPs (coordformer.model.flops) of the steps train_seconds timed, saved with
        # checkpoints
        self.model_flops = 0.0
        self._flops_since = 0.0
        # (residues, FLOPs) of the last step, counted in the rates when its time is: at the next
        # step's start, which closes its interval
        self._pending: tuple[int, float] = (0, 0.0)
        self._skips_in_a_row = 0
        # (loss, accuracy, rows) of a step whose values were not logged: the stopping step's row
        self._unlogged: tuple[torch.Tensor, torch.Tensor, int] | None = None
        self.residues_seen = 0  # training residues since this process started (not checkpointed)
        # (global step, val metrics) of the last validation inside fit: when it ran at the step
        # training ended on, the run's final validation is that one, not a second pass
        self.fit_validation: tuple[int, dict[str, float]] | None = None
        # fused AdamW's device-side skip counters (on_before_optimizer_step)
        self._skips_pending: torch.Tensor | None = None
        self._skip_streak: torch.Tensor | None = None
        # targets of the optimizer step's micro-batches so far (token-weighted accumulation)
        self._step_targets = 0
        self.data_fingerprint: str | None = (
            None  # the training dataset's (PreparedDataset.fingerprint), saved with checkpoints
        )
        # those of the datasets trained on before it (allow_new_data), saved with checkpoints so
        # that an export says what its weights saw (model.weights.trained_on)
        self.previous_fingerprints: list[str] = []

    def forward(self, batch: Batch, need_attention=False, logits_at=None):
        cfg = self.train_config
        varlen = batch.varlen() if cfg.varlen_attention or cfg.cuda_graphs else None
        return self.model(
            **batch.inputs(self.model_config.use_coords),
            need_attention=need_attention,
            logits_at=logits_at,
            varlen=varlen,
        )

    def _step_loss(self, batch: Batch):
        """(loss, n_correct, n_targets) of a masked-LM batch; the LM head runs on the targets only
        when ``logits_at_targets`` is set and the batch was indexed (``MaskedBatches`` items are,
        on the CPU before their transfer)."""
        idx = batch.target_index
        if not self.train_config.logits_at_targets or idx is None:
            return masked_lm_loss(self(batch).logits, batch.targets)
        return target_loss(self(batch, logits_at=idx).logits, batch.targets.flatten()[idx])

    def _time_fraction(self) -> float:
        mm = self.train_config.max_minutes
        return self.train_seconds / (mm * 60.0) if mm else 0.0

    def training_step(self, batch, batch_idx):
        now = time.perf_counter()
        if self._t_last is not None:
            # a step's time is from its start to the next one's; its work is counted with it (a
            # step whose interval a validation or the end cut off counts in neither), so that the
            # rates divide the work of N steps by the time of the same N
            self.train_seconds += now - self._t_last
            ntok, flops = self._pending
            self._tokens_since += ntok
            self.model_flops += flops
            self._flops_since += flops
        self._pending = (0, 0.0)
        self._t_last = now
        loss, correct, n = self._step_loss(batch)
        objective = loss
        if self._token_weighted():
            # Each micro-batch's mean loss would weigh its targets by 1/n, so a step's target in a
            # small micro-batch (or on a rank with few targets) would count more than one in a
            # large one. The sum over targets counts each alike; on_before_optimizer_step divides
            # by the step's total. The constant keeps the backward pass at the mean's magnitude.
            objective = loss * (n / self._targets_per_micro_batch())
            self._step_targets += n
        lengths = _chain_lengths(batch)
        ntok = int(sum(lengths))
        self.residues_seen += ntok
        # useful work only: padding and recomputation (activation checkpointing) are not model FLOPs
        # the head runs on the targets alone when they were indexed (a shape: no host sync)
        idx = batch.target_index if self.train_config.logits_at_targets else None
        flops = training_flops(
            self.model_config, lengths, None if idx is None else int(idx.numel())
        )
        self._pending = (ntok, flops)  # each micro-batch is a training_step, timed alike
        bs = len(batch)
        # Lightning writes the logger's row after the step whose global_step + 1 is a multiple of
        # log_every_steps, with the values logged last. A Python number logged becomes a tensor on
        # the device: a host-to-device copy, which waits for the GPU. So values are logged only
        # for the steps that are written (every step while a progress bar shows them); the loss
        # and accuracy too, as each self.log costs about half a millisecond of host time.
        # With accumulation, only the step's last micro-batch: it closes the interval the rates
        # cover (and the skip count is read once per step, not once per micro-batch).
        every = max(self.train_config.log_every_steps, 1)
        last_micro_batch = not self.trainer.fit_loop._should_accumulate()
        written = (self.global_step + 1) % every == 0 and last_micro_batch
        acc = correct.float() / max(n, 1)
        if written or self._has_bar():
            self._log_step(loss, acc, bs, rates=written)
        elif last_micro_batch:
            # Lightning also writes a row on the step that stops training (should_stop: the time
            # budget, a signal), whatever log_every_steps says; on_train_batch_end logs this
            # step's values then, so that row does not carry an earlier step's
            self._unlogged = (loss.detach(), acc.detach(), bs)
        return objective

    def _log_step(self, loss: torch.Tensor, acc: torch.Tensor, bs: int, rates: bool) -> None:
        """Log a step's values: loss, accuracy, learning rate, training minutes, and with ``rates``
        the tokens/s and model TFLOP/s since the last such row (then the skips found meanwhile)."""
        # a progress-bar metric is read (.item(), a host sync) every step it is logged
        self.log("train/loss", loss, prog_bar=self._has_bar(), batch_size=bs)
        self.log("train/acc", acc, batch_size=bs)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=bs)
        # With a time budget the step-based ETA means little; show the training minutes instead.
        self.log(
            "train/minutes",
            self.train_seconds / 60.0,
            batch_size=bs,
            prog_bar=bool(self.train_config.max_minutes),
        )
        if rates and self.train_seconds > 0:
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
            self._collect_skips()

    def on_train_batch_start(self, batch, batch_idx):
        if self.train_config.cuda_graphs:
            # a new step: the layers' CUDA graphs may reuse the memory of the last step's outputs
            torch.compiler.cudagraph_mark_step_begin()
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
        # with gradient accumulation, only at a step boundary: a run stopped part-way through a
        # step would save a last.ckpt that counts the step's first micro-batches as done, and the
        # resumed run would then group its micro-batches into steps differently
        if mm and not self.trainer.fit_loop._should_accumulate():
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
        pending, self._unlogged = self._unlogged, None
        if pending is not None and self.trainer.should_stop:
            self._log_step(*pending, rates=True)

    def on_before_optimizer_step(self, optimizer):
        """Skip the update when any gradient is NaN/Inf (one rare bad step must not poison the
        weights).

        A bf16 small-3m run with Gaussian-initialised heads went NaN after 10,600 good steps and
        never recovered (docs/RESULTS.md). Dropping the gradients makes AdamW leave every parameter
        and its moments untouched. Under DDP the gradients are already all-reduced here, so every
        rank takes the same decision. fp16 runs leave this to Lightning's GradScaler.
        """
        if self._token_weighted():
            self._divide_by_step_targets()
        if self.trainer.precision == "16-mixed":
            return
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if grads:
            found = (~torch.isfinite(torch.stack(torch._foreach_norm(grads)).sum())).float()
        else:  # a rank may hold no gradient at all (a sharded strategy); it must still take part
            found = torch.zeros((), device=self.device)
        if self.trainer.world_size > 1:
            # Under DDP every rank holds the same all-reduced gradients, but a sharded strategy
            # (FSDP) holds only its shard: the ranks must agree, or their weights part ways.
            torch.distributed.all_reduce(found, op=torch.distributed.ReduceOp.MAX)
        if optimizer.param_groups[0].get("fused"):
            # Decided on the device: fused AdamW leaves every parameter, moment and step count as
            # it was where found_inf is 1 (as it does for GradScaler), the same as the skip below.
            # The count reaches the host every log_every_steps (_collect_skips).
            optimizer.found_inf = found
            if self._skips_pending is None:
                self._skips_pending = torch.zeros((), device=found.device)
                self._skip_streak = torch.zeros((), device=found.device)
            self._skips_pending += found
            self._skip_streak.mul_(found).add_(found)
            return
        if not bool(found):
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

    def _token_weighted(self) -> bool:
        """Whether one optimizer step's gradient is made of several micro-batch losses (gradient
        accumulation, or several data-parallel ranks): then each counts by its targets. With one
        micro-batch the mean loss is the same thing, and stays bit-identical."""
        trainer = self._trainer
        world = trainer.world_size if trainer is not None else 1
        return self.train_config.accumulate_grad_batches > 1 or world > 1

    def _targets_per_micro_batch(self) -> float:
        """About how many targets a micro-batch has (its token budget times the masking rate): a
        constant divisor that keeps the summed loss near the mean loss's scale (fp16's range)."""
        return max(1.0, self.train_config.tokens_per_batch * self.train_config.mask_prob)

    def _divide_by_step_targets(self) -> None:
        """Turn the accumulated gradient of sum(loss_i * n_i / c) / A (Lightning divides by the
        A micro-batches; DDP averages over the W ranks) into that of the token-weighted mean:
        sum(loss_i * n_i) / N, N the targets of the step on every rank."""
        n, self._step_targets = self._step_targets, 0
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        world = self.trainer.world_size
        # one float32 division either way, so that W ranks and W accumulated micro-batches of the
        # same data give bit-identical weights (tests/test_cli.py)
        num = self._targets_per_micro_batch() * self.train_config.accumulate_grad_batches * world
        if world > 1:
            # on the device: the ranks' counts are summed without a host sync
            total = torch.full((), float(n), dtype=torch.float32, device=self.device)
            torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM)
            scale = torch.full((), num, dtype=torch.float32, device=self.device) / total.clamp_min(
                1.0
            )
            if grads:
                torch._foreach_mul_(grads, scale)
        elif grads and n:
            torch._foreach_mul_(grads, float(np.float32(num) / np.float32(n)))

    def _collect_skips(self, check: bool = True, log: bool = True) -> None:
        """Add the skips fused AdamW decided on the device to ``skipped_steps`` (one host sync) and
        stop a diverged run, as the step-by-step check does, at most ``log_every_steps`` later (or
        at the end of training)."""
        if self._skips_pending is None:
            return
        new, streak = (int(v) for v in torch.stack([self._skips_pending, self._skip_streak]))
        self._skips_pending.zero_()
        if new:
            self.skipped_steps += new
            if log:
                self.log("train/skipped_steps", float(self.skipped_steps), batch_size=1)
        if check and streak >= MAX_CONSECUTIVE_SKIPS:
            raise TrainingDivergedError(
                f"training diverged: {streak} steps in a row with non-finite gradients (by step "
                f"{self.global_step}); re-run from the last checkpoint with a lower `lr` or "
                "`precision=32-true`"
            )

    def on_train_end(self):
        self._collect_skips(log=False)

    def on_validation_start(self):
        self._t_last = None  # validation time is not training time

    def validation_step(self, batch, batch_idx):
        # eager under --compile: a no-grad graph would be one more cold compile (minutes on a GPU
        # at paper size) for a few batches every val_every_steps
        with torch.compiler.set_stance("force_eager"):
            loss, correct, n = self._step_loss(batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=max(n, 1), sync_dist=True)
        self.log("val/acc", correct.float() / max(n, 1), batch_size=max(n, 1), sync_dist=True)

    def on_validation_epoch_end(self):
        m = self.trainer.callback_metrics
        if "val/loss" in m:
            # identical on every rank (val/loss is already
            # synced); sync_dist only keeps Lightning from warning
            ppl = torch.exp(m["val/loss"])
            self.log("val/perplexity", ppl, prog_bar=True, sync_dist=True)
            if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
                vals = {k: float(v) for k, v in m.items() if k.startswith("val/")}
                self.fit_validation = (self.global_step, {**vals, "val/perplexity": float(ppl)})

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
            fused=self._fused() or None,
        )
        return opt

    def _fused(self) -> bool:
        """Whether AdamW runs fused: as configured, except under fp16 mixed precision, where
        Lightning's GradScaler must unscale the gradients before they are clipped."""
        trainer = self._trainer
        return self.train_config.fused_adamw and getattr(trainer, "precision", None) != "16-mixed"

    def _has_bar(self) -> bool:
        trainer = self._trainer
        return trainer is not None and trainer.progress_bar_callback is not None

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ):
        """Clip as Lightning would. Its mixed-precision plugin refuses to clip for an optimizer that
        unscales gradients itself (fused AdamW) even under bf16, which has no scaler; fused AdamW
        is never used with fp16 (``_fused``), so here the gradients are always unscaled."""
        if gradient_clip_val and optimizer.param_groups[0].get("fused"):
            params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            if gradient_clip_algorithm is None or gradient_clip_algorithm == "norm":
                torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_save_checkpoint(self, checkpoint):
        self._collect_skips(check=False, log=False)
        checkpoint["coordformer"] = {
            "model_config": self.model_config.to_dict(),
            "train_config": self.train_config.to_dict(),
            "train_seconds": self.train_seconds,
            "skipped_steps": self.skipped_steps,
            "model_flops": self.model_flops,
            "torch_rng_state": torch.get_rng_state(),  # dropout draws from the global generator
            **(
                {"cuda_rng_state": torch.cuda.get_rng_state_all()}
                if torch.cuda.is_available() and torch.cuda.is_initialized()
                else {}
            ),
            **({"data_fingerprint": self.data_fingerprint} if self.data_fingerprint else {}),
            "previous_fingerprints": list(self.previous_fingerprints),
        }

    def on_load_checkpoint(self, checkpoint):
        # Runs from before `--compile` compiled in place saved torch.compile's wrapper prefix; drop
        # it so such a run resumes with or without --compile.
        state = checkpoint.get("state_dict", {})
        if any("._orig_mod." in k for k in state):
            checkpoint["state_dict"] = {k.replace("._orig_mod.", "."): v for k, v in state.items()}
        # Loading an optimizer's state brings back its saved ``fused`` switch; a resume follows the
        # current config instead (torch moves the step counts to where fused AdamW wants them).
        for opt in checkpoint.get("optimizer_states", []):
            for group in opt.get("param_groups", []):
                group["fused"] = self._fused() or None
        saved = checkpoint.get("coordformer", {})
        self.train_seconds = saved.get("train_seconds", 0.0)
        self.skipped_steps = saved.get("skipped_steps", 0)
        self.model_flops = saved.get("model_flops", 0.0)
        # Set at train start, not here: Lightning builds the training DataLoader's iterator after
        # loading the checkpoint, and that draws from the global generator (once, at step 0, in an
        # uninterrupted run), which would shift every later dropout mask of a resumed run.
        self._resume_rng = {
            k: saved[k] for k in ("torch_rng_state", "cuda_rng_state") if k in saved
        }

    def on_train_start(self):
        rng, self._resume_rng = getattr(self, "_resume_rng", {}), {}
        if "torch_rng_state" in rng:
            torch.set_rng_state(rng["torch_rng_state"])
        if "cuda_rng_state" in rng and torch.cuda.is_available():
            states = rng["cuda_rng_state"]
            if len(states) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(states)
