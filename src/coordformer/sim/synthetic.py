"""Synthetic point clouds: can a Transformer fed linear coordinate embeddings learn distance
attention?

A structure is ``n_points`` points uniform in [0, box]^n. The model embeds (x - mean) / input_scale
with one ``nn.Linear`` (the paper's coordinate embedding, without tokens or positions), runs the
same pre-LayerNorm ``EncoderLayer`` blocks as :class:`coordformer.model.core.CoordFormer`, and its
output is the attention of one extra head: logits q_i . k_j / sqrt(d_out), then exp(logit - max_j)
per query ("row", what the paper computes) or exp(logit) ("raw"). The loss is L1 against
exp(-(d_ij / length_scale)^exponent).

Why the head dimension matters (see docs/theory.md): with "row" output a per-query constant is free,
so q_i = [x_i / s^2, 1], k_j = [x_j, -|x_j|^2 / (2 s^2)] (head dim n + 1) reproduce a Gaussian
exactly; with "raw" output the logits themselves must equal -|x_i - x_j|^2 / (2 s^2), which
needs n + 2. With k points the logit matrix has rank at most k, so nothing beyond head dim k can
help.

Runs are tiny (5 tokens), so the training loop is plain PyTorch: Lightning's per-step hooks would
cost more than the model. Everything that is random takes an explicit seeded generator.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..config import ModelConfig, SimConfig
from ..geometry import pairwise_distances, random_rotation
from ..model.core import EncoderLayer


@dataclass(frozen=True)
class PointClouds:
    """Coordinates [N, k, n] float32 (box units, e.g. Angstrom) and targets [N, k, k] float32."""

    coords: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return self.coords.shape[0]


def distance_targets(coords: torch.Tensor, length_scale: float, exponent: float) -> torch.Tensor:
    """exp(-(d_ij / length_scale)^exponent). coords: [..., k, n] -> [..., k, k] float32."""
    d = pairwise_distances(coords.double())
    return torch.exp(-((d / length_scale) ** exponent)).float()


def make_point_clouds(cfg: SimConfig) -> dict[str, PointClouds]:
    """Seeded (``cfg.data_seed``) train/valid/test point clouds, uniform in [0, box]^n_dims."""
    rng = np.random.default_rng([cfg.data_seed, cfg.n_dims, cfg.n_points])
    out = {}
    # Fixed order and separate draws: the valid/test sets do not change when n_train does.
    for split, n in (("valid", cfg.n_valid), ("test", cfg.n_test), ("train", cfg.n_train)):
        x = torch.from_numpy(
            rng.uniform(0.0, cfg.box, size=(n, cfg.n_points, cfg.n_dims)).astype(np.float32)
        )
        out[split] = PointClouds(x, distance_targets(x, cfg.length_scale, cfg.exponent))
    return out


class PointCloudAttention(nn.Module):
    """Linear coordinate embedding -> pre-LN encoder -> (LayerNorm) -> one attention head's map.

    forward(coords [B, k, n], box units) -> [B, k, k]: exp(logit - max_j logit) for "row" output,
    exp(logit) for "raw".

    ``pad_head(slots)`` widens q/k to ``slots`` output channels filled with zeros and masked, so
    models of different head dimension can be stacked and trained together (see ``train_stack``);
    the masked channels contribute nothing and receive zero gradient, and the logits are still
    divided by sqrt(cfg.d_out), so a padded model computes exactly what the unpadded one does.
    """

    def __init__(self, cfg: SimConfig):
        super().__init__()
        self.cfg = cfg
        enc = ModelConfig(
            d_model=cfg.d_model,
            n_layers=cfg.n_layers,
            n_heads=cfg.n_heads,
            d_ff=cfg.d_ff,
            dropout=0.0,
            use_coords=False,
        )
        self.embed = nn.Linear(cfg.n_dims, cfg.d_model)
        self.layers = nn.ModuleList(EncoderLayer(enc) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model) if cfg.output_norm else nn.Identity()
        self.query = nn.Linear(cfg.d_model, cfg.d_out)
        self.key = nn.Linear(cfg.d_model, cfg.d_out)
        self.register_buffer("head_mask", torch.ones(cfg.d_out))
        self.register_buffer("inv_scale", torch.tensor(1.0 / math.sqrt(cfg.d_out)))
        self.register_buffer("raw_output", torch.tensor(cfg.output == "raw"))

    @torch.no_grad()
    def pad_head(self, slots: int) -> "PointCloudAttention":
        extra = slots - self.cfg.d_out
        if extra < 0:
            raise ValueError(f"cannot pad a head of dimension {self.cfg.d_out} to {slots}")
        for name in ("query", "key"):
            old = getattr(self, name)
            new = nn.Linear(self.cfg.d_model, slots)
            new.weight.zero_()
            new.bias.zero_()
            new.weight[: self.cfg.d_out] = old.weight
            new.bias[: self.cfg.d_out] = old.bias
            setattr(self, name, new)
        self.head_mask = torch.cat([torch.ones(self.cfg.d_out), torch.zeros(extra)])
        return self

    def logits(self, coords: torch.Tensor) -> torch.Tensor:
        """coords: [B, k, n] -> output-head logits q_i . k_j / sqrt(d_out), [B, k, k]."""
        x = (coords - coords.mean(dim=-2, keepdim=True)) / self.cfg.input_scale
        h = self.embed(x)
        for layer in self.layers:
            # The explicit-softmax path of the same block: it has vmap batching rules (fused SDPA
            # does not) and, with 5 tokens, costs no more.
            h, _ = layer(h, None, True)
        h = self.norm(h)
        q, k = self.query(h) * self.head_mask, self.key(h) * self.head_mask
        return q @ k.transpose(-1, -2) * self.inv_scale

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        z = self.logits(coords)
        # A tensor flag rather than a Python branch so stacked models may differ in output type.
        z = torch.where(self.raw_output, z, z - z.amax(dim=-1, keepdim=True))
        return torch.exp(z)


def noam_rate(step: int, d_model: int, factor: float, warmup: int) -> float:
    """Vaswani et al. schedule: factor * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5);
    step >= 1."""
    return factor * d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)


def learning_rates(cfg: SimConfig) -> list[float]:
    """Learning rate for steps 1..cfg.steps under the config's regime."""
    if cfg.regime == "paper":
        return [
            noam_rate(s, cfg.d_model, cfg.noam_factor, cfg.warmup) for s in range(1, cfg.steps + 1)
        ]
    # OneCycleLR's own curve (warm up from lr/25 over 30% of steps, cosine down to lr/2.5e5), read
    # off a throwaway optimiser.
    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(dummy, max_lr=cfg.lr, total_steps=cfg.steps)
    rates = []
    for _ in range(cfg.steps):
        rates.append(dummy.param_groups[0]["lr"])
        dummy.step()
        sched.step()
    return rates


#: SimConfig fields that may differ between models trained together in one stack; all others
#: (architecture apart from d_out, optimiser, schedule, steps, data sizes) must match.
STACKABLE_FIELDS = (
    "d_out",
    "output",
    "seed",
    "data_seed",
    "exponent",
    "augment",
    "box",
    "length_scale",
)


def stack_key(cfg: SimConfig) -> tuple:
    """Configs with equal keys can be trained together by ``train_stack``."""
    return tuple(v for k, v in sorted(cfg.to_dict().items()) if k not in STACKABLE_FIELDS)


def _stacked_l1(
    fn, params, buffers, coords: torch.Tensor, targets: torch.Tensor, chunk: int = 500
) -> torch.Tensor:
    """Mean L1 per model. coords: [M, N, k, n]; targets: [M, N, k, k] -> [M]."""
    total = torch.zeros(coords.shape[0], dtype=torch.float64, device=coords.device)
    with torch.no_grad():
        for i in range(0, coords.shape[1], chunk):
            pred = fn(params, buffers, coords[:, i : i + chunk])
            total += (pred - targets[:, i : i + chunk]).abs().sum(dim=(1, 2, 3)).double()
    return total / targets[0].numel()


def train_stack(cfgs: list[SimConfig], curve: bool = False, device: str = "cpu") -> list[dict]:
    """Train len(cfgs) independent models together, one per config; returns one result per config.

    The models are stacked with ``torch.func.stack_module_state`` and run under ``vmap``; their
    losses are summed, so each model's gradient is exactly its own, and Adam/AdamW update every
    parameter element by element, so stacking changes nothing but speed (tiny 5-point models are
    dominated by per-operation overhead on CPU). Each model has its own seeded generators for
    initialisation, batch order and rotations, so its result does not depend on what it was
    stacked with (up to floating-point summation order).

    Each result reports ``test_l1`` and ``train_l1`` of the weights with the best validation L1
    (checked every ``eval_every`` steps and at the end), so models are chosen on validation and
    measured on held-out test structures. With ``curve=True`` a result also holds its learning
    curve (step, train L1 in the canonical frame, validation L1). Random numbers are drawn on the
    CPU, so results do not depend on the device beyond floating-point differences.
    """
    from torch.func import functional_call, stack_module_state

    if len({stack_key(c) for c in cfgs}) != 1:
        raise ValueError(
            "train_stack needs configs that differ only in " + ", ".join(STACKABLE_FIELDS)
        )
    base_cfg = cfgs[0]
    slots = max(c.d_out for c in cfgs)
    models, gens, data = [], [], []
    for c in cfgs:
        torch.manual_seed(c.seed)  # parameter init, as for a model trained alone
        models.append(PointCloudAttention(c).pad_head(slots))
        gens.append(torch.Generator().manual_seed(c.seed))
        data.append(make_point_clouds(c))
    splits = {
        s: (
            torch.stack([d[s].coords for d in data]).to(device),
            torch.stack([d[s].targets for d in data]).to(device),
        )
        for s in ("train", "valid", "test")
    }
    params, buffers = stack_module_state([mod.to(device) for mod in models])
    params = {k: v.detach().requires_grad_() for k, v in params.items()}
    template = copy.deepcopy(models[0]).to("meta")

    def one(p, b, x):
        return functional_call(template, (p, b), (x,))

    fn = torch.vmap(one)
    if base_cfg.regime == "paper":
        opt = torch.optim.Adam(params.values(), lr=0.0, betas=(0.9, 0.98), eps=1e-8)
    else:
        opt = torch.optim.AdamW(params.values(), lr=base_cfg.lr, weight_decay=base_cfg.weight_decay)
    rates = learning_rates(base_cfg)
    m = len(cfgs)
    n_train = splits["train"][0].shape[1]
    augment = [c.augment for c in cfgs]
    best_valid = torch.full((m,), math.inf, dtype=torch.float64, device=device)
    best_step = torch.zeros(m, dtype=torch.long)
    best_params = {k: v.detach().clone() for k, v in params.items()}
    diverged = torch.zeros(m, dtype=torch.bool, device=device)
    history = [{"step": [], "train_l1": [], "valid_l1": []} for _ in cfgs]
    eye = torch.eye(base_cfg.n_dims)
    models_dim = torch.arange(m, device=device)[:, None]
    t0 = time.perf_counter()
    for step in range(1, base_cfg.steps + 1):
        idx = torch.stack(
            [torch.randint(n_train, (base_cfg.batch_size,), generator=g) for g in gens]
        ).to(device)
        x, y = (t[models_dim, idx] for t in splits["train"])  # [M, B, k, n], [M, B, k, k]
        rots = torch.stack(
            [
                random_rotation(base_cfg.batch_size, g, dim=base_cfg.n_dims)
                if a
                else eye.expand(base_cfg.batch_size, -1, -1)
                for g, a in zip(gens, augment)
            ]
        ).to(device)
        x = x @ rots.transpose(-1, -2)
        for g in opt.param_groups:
            g["lr"] = rates[step - 1]
        per_model = (fn(params, buffers, x) - y).abs().mean(dim=(1, 2, 3))
        diverged |= ~torch.isfinite(per_model.detach())
        loss = torch.nan_to_num(per_model, nan=0.0, posinf=0.0).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % base_cfg.eval_every == 0 or step == base_cfg.steps:
            v = _stacked_l1(fn, params, buffers, *splits["valid"])
            if curve:
                tr = _stacked_l1(fn, params, buffers, *splits["train"])
                for i, h in enumerate(history):
                    h["step"].append(step)
                    h["train_l1"].append(float(tr[i]))
                    h["valid_l1"].append(float(v[i]))
            better = (v < best_valid) & ~diverged
            if better.any():
                best_valid = torch.where(better, v, best_valid)
                best_step = torch.where(better.cpu(), torch.tensor(step), best_step)
                for k, p in params.items():
                    sel = better.view(-1, *([1] * (p.dim() - 1)))
                    best_params[k] = torch.where(sel, p.detach(), best_params[k])
    seconds = time.perf_counter() - t0
    test = _stacked_l1(fn, best_params, buffers, *splits["test"])
    train = _stacked_l1(fn, best_params, buffers, *splits["train"])
    results = []
    for i, c in enumerate(cfgs):
        ok = bool(torch.isfinite(best_valid[i]))
        r = {
            "valid_l1": float(best_valid[i]),
            "test_l1": float(test[i]) if ok else math.inf,
            "train_l1": float(train[i]) if ok else math.inf,
            "best_step": int(best_step[i]),
            "diverged": bool(diverged[i]),
            "seconds": seconds / m,
            "parameters": sum(p.numel() for p in models[i].parameters())
            - 2 * (slots - c.d_out) * (c.d_model + 1),
        }
        if curve:
            r["curve"] = history[i]
        results.append(r)
    return results


def train_run(cfg: SimConfig, curve: bool = False) -> dict:
    """Train one model (a stack of one); see ``train_stack``."""
    return train_stack([cfg], curve=curve)[0]
