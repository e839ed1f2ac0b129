"""CoordFormer: a plain pre-LayerNorm Transformer encoder whose input is token embedding +
sinusoidal position + a linear embedding of 3D coordinates.

One class with switches (``use_coords``, ``coord_mode``); attention maps and hidden states are
returned on request. Attention runs on ``torch.nn.functional.scaled_dot_product_attention`` so
fused (flash / memory-efficient) kernels are used where available; the explicit softmax path is
taken only when attention maps are asked for.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..batch import Varlen
from ..config import ModelConfig
from ..constants import AA_OFFSET, CA_INDEX, PAD
from ..errors import OptionError, SequenceTooLong, UsageError
from ..geometry import centre, centre_segments

#: SDPA kernels allowed when a padding mask is passed. cuDNN's fused attention is left out: its
#: backward returns NaN in dQ when an explicit mask is given, L % 128 == 64 and some query row's
#: log-sum-exp is below ln(FLT_MAX) ~ -88.7 (pytorch/pytorch#196678; H100/H200 from torch 2.11).
#: Padding query rows are never scored, so nothing keeps their logits from drifting that low; one
#: such row in one batch of the right length NaNs the whole step. That was the Gaussian-recipe
#: divergence at step 10,600 and the skipped steps at paper size (docs/RESULTS.md, "Non-finite
#: steps"). Flash takes no mask, so on CUDA the memory-efficient kernel runs; unmasked batches keep
#: the default choice.
MASKED_SDPA_BACKENDS = (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)

#: Channels reserved for the coordinate features when first-layer Gaussian heads are initialised:
#: x, y, z, |x|^2, missing flag, each written as +f and -f (see ``_init_gaussian_heads``).
_N_RESERVED = 10


def sinusoidal_table(max_len: int, dim: int) -> torch.Tensor:
    """Vaswani et al. position table. Returns [max_len, dim] float32."""
    pos = torch.arange(max_len, dtype=torch.float64).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    table = torch.zeros(max_len, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * div)
    table[:, 1::2] = torch.cos(pos * div)[:, : dim // 2]
    return table.float()


def position_table(config: ModelConfig) -> torch.Tensor:
    """The model's fixed position embeddings [max_len, d_model] float32: sinusoidal, with the last
    channels left empty when first-layer Gaussian heads reserve them for coordinate features."""
    d = config.d_model
    reserved = _N_RESERVED if config.gaussian_init_heads else 0
    table = torch.zeros(config.max_len, d)
    table[:, : d - reserved] = sinusoidal_table(config.max_len, d - reserved)
    return table


def plddt_uncertainty(plddt: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """[B, L, 1] feature (100 - pLDDT) / 100 clipped to [0, 1]; 0 where pLDDT is unknown (NaN, or
    ``plddt`` None): an experimental structure counts as certain. ``like``: [B, L, ...] for shape,
    dtype and device."""
    if plddt is None:
        return like.new_zeros((*like.shape[:2], 1))
    u = ((100.0 - plddt.to(like.dtype)) / 100.0).clamp(0.0, 1.0)
    return torch.nan_to_num(u, nan=0.0).unsqueeze(-1)


def coordinate_features(
    coords: torch.Tensor, config: ModelConfig, plddt: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-residue input features for the linear coordinate embedding.

    Args:
        coords: [B, L, 4, 3] Angstrom (N, CA, C, O), already centred (and rotated when training);
            NaN where an atom is missing or at padding. In "ca" mode [B, L, 1, 3] (CA only) is
            accepted too.
        plddt: [B, L] pLDDT (0-100, NaN unknown) or None; read only with ``config.plddt_feature``.
    Returns:
        [B, L, F] float: for each used atom (x, y, z) / coord_scale with 0 where missing, then a
        missing flag per atom; with ``plddt_feature`` (100 - pLDDT) / 100 (0 where unknown);
        optionally |x_CA / coord_scale|^2 last. F = config.n_coord_features.
    """
    if config.coord_mode == "backbone" or coords.shape[2] == 1:
        atoms = coords  # backbone: [B, L, 4, 3]; ca: CA already selected, [B, L, 1, 3]
    else:
        atoms = coords[:, :, CA_INDEX : CA_INDEX + 1]
    missing = torch.isnan(atoms).any(dim=-1)  # [B, L, A]
    xyz = torch.where(missing.unsqueeze(-1), torch.zeros_like(atoms), atoms) / config.coord_scale
    feats = [xyz.flatten(2), missing.to(xyz.dtype)]
    if config.plddt_feature:
        feats.append(plddt_uncertainty(plddt, xyz))
    if config.coord_norm_feature:
        ca = xyz[:, :, 1] if config.coord_mode == "backbone" else xyz[:, :, 0]
        feats.append((ca * ca).sum(-1, keepdim=True))
    return torch.cat(feats, dim=-1)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Fused softmax(q k^T / sqrt(d)) v. q, k, v: [B, H, L, d]; mask: [B, 1, 1, L] bool (True = key
    attended) or None. Returns [B, H, L, d]. With a mask, cuDNN's kernel is excluded (see
    ``MASKED_SDPA_BACKENDS``)."""
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    with sdpa_kernel(list(MASKED_SDPA_BACKENDS)):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


@dataclass(frozen=True)
class StaticRows:
    """The fixed shape that training batches without padding take under CUDA graphs
    (``CoordFormer.static_rows``): every step's real residues, padded to ``tokens`` with rows of
    zeros that form their own chains of at most ``max_seqlen``, and ``chains`` entries of
    ``cu_seqlens`` (zero-length chains at the end). ``max_seqlen`` bounds every chain (the crop
    length)."""

    tokens: int
    max_seqlen: int
    chains: int

    @classmethod
    def for_budget(cls, tokens: int, max_seqlen: int, shortest: int) -> StaticRows:
        """The shape for batches of at most ``tokens`` residues whose chains have ``shortest`` to
        ``max_seqlen`` residues each."""
        # A bound from the data, not a guess: every entry of cu_seqlens costs the flash kernel a
        # block of scratch and a thread block per head, used or not (a bound of tokens // 8 gave
        # 2,081 chains at 16k tokens, most of them empty). Plus the filler's chains.
        return cls(tokens, max_seqlen, tokens // max(shortest, 1) + -(-tokens // max_seqlen) + 1)

    def pad(self, varlen: Varlen, fill_row: int) -> Varlen | None:
        """``varlen`` padded to this shape; the filler reads row ``fill_row`` (zeros). None when
        the batch does not fit (more residues or chains, or a longer chain): it then runs as it
        is. Shapes are read on the host and the padding is built on the device: no sync."""
        n_tok = varlen.token_index.shape[0]
        n_chains = varlen.cu_seqlens.shape[0] - 1
        pad = self.tokens - n_tok
        tail = -(-pad // self.max_seqlen) if pad > 0 else 0
        if pad < 0 or varlen.max_seqlen > self.max_seqlen or n_chains + tail > self.chains:
            return None
        dev = varlen.token_index.device
        index = torch.cat(
            [varlen.token_index, torch.full((pad,), fill_row, dtype=torch.long, device=dev)]
        )
        ends = torch.arange(1, tail + 1, device=dev) * self.max_seqlen + n_tok
        cu = torch.cat(
            [
                varlen.cu_seqlens,
                ends.clamp(max=self.tokens).to(torch.int32),
                torch.full(
                    (self.chains - n_chains - tail,), self.tokens, dtype=torch.int32, device=dev
                ),
            ]
        )
        return Varlen(index, cu, self.max_seqlen)


def varlen_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, varlen: Varlen
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v within each chain of a batch without padding. q, k, v: [T, H, d],
    the chains one after another as ``varlen.cu_seqlens`` says. Returns [T, H, d].

    On a CUDA device in half precision (bf16 / fp16 autocast) this is FlashAttention's
    variable-length kernel (``torch.nn.attention.varlen.varlen_attn``): no mask, no padding, and
    no host sync. Elsewhere (the CPU, float32) each chain goes through SDPA in turn, which reads the
    chain boundaries on the host: the same result, for tests and small runs."""
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        from torch.nn.attention.varlen import varlen_attn

        cu, n = varlen.cu_seqlens, varlen.max_seqlen
        return varlen_attn(q, k, v, cu, cu, n, n)
    if q.is_cuda:
        warnings.warn(
            f"varlen attention in {q.dtype} on a GPU runs chain by chain (the flash kernel takes "
            "bf16 or fp16): train with --precision bf16-mixed, or without --varlen",
            stacklevel=2,
        )
    return _varlen_reference(q, k, v, varlen.cu_seqlens)


@torch.compiler.disable
def _varlen_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor
) -> torch.Tensor:
    """``varlen_attention`` chain by chain through SDPA. It reads the chain starts on the host;
    compilation leaves it alone (it is no part of a GPU graph), so a compiled layer does not
    guard on them."""
    bounds = cu_seqlens.tolist()
    out = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end == start:  # the zero-length chains that pad StaticRows
            continue
        # [1, H, n, d]: SDPA's fused CPU kernel takes four dimensions (three go to its math path)
        qi, ki, vi = (t[start:end].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        out.append(F.scaled_dot_product_attention(qi, ki, vi)[0].transpose(0, 1))
    return torch.cat(out) if out else q.new_zeros(q.shape)


class SelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads, self.d_head = config.n_heads, config.d_head
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.out = nn.Linear(config.d_model, config.d_model)
        self.dropout = config.dropout

    def forward(
        self, x: torch.Tensor, key_mask: torch.Tensor | Varlen | None, need_attention: bool = False
    ):
        """x: [B, L, D]; key_mask: [B, L] bool (True = real token), [B, 1, L, L] bool (packed rows),
        or a :class:`Varlen` when x is [1, T, D], the real residues of a batch without its padding.
        Returns ([B, L, D], [B, H, L, L] | None)."""
        b, l, _ = x.shape
        if isinstance(key_mask, Varlen):
            if self.dropout and self.training:
                raise UsageError("varlen attention has no attention dropout: set dropout to 0")
            qkv = self.qkv(x[0]).view(l, 3, self.n_heads, self.d_head)
            q, k, v = qkv.permute(1, 0, 2, 3).contiguous().unbind(0)  # [T, H, d] each
            y = varlen_attention(q, k, v, key_mask)
            return self.out(y.reshape(1, l, -1)), None
        q, k, v = self.qkv(x).view(b, l, 3, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4)
        # [B, L] key mask, or an already built [B, 1, L, L] mask (packed rows: block-diagonal)
        mask = (
            key_mask[:, None, None, :] if key_mask is not None and key_mask.dim() == 2 else key_mask
        )
        if need_attention:
            logits = (q @ k.transpose(-1, -2)) / math.sqrt(self.d_head)
            if mask is not None:
                logits = logits.masked_fill(~mask, float("-inf"))
            attn = logits.softmax(dim=-1)
            y = attn @ v
        else:
            attn = None
            y = attention(q, k, v, mask, self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, l, -1)), attn


class EncoderLayer(nn.Module):
    """Pre-LN block: x + Attn(LN(x)), then x + FF(LN(x))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.d_model)
        self.attn = SelfAttention(config)
        self.ln2 = nn.LayerNorm(config.d_model)
        self.ff = nn.Sequential(
            nn.Linear(config.d_model, config.d_ff),
            nn.GELU(),
            nn.Linear(config.d_ff, config.d_model),
        )
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x, key_mask, need_attention=False):
        h, attn = self.attn(self.ln1(x), key_mask, need_attention)
        x = x + self.drop(h)
        x = x + self.drop(self.ff(self.ln2(x)))
        return x, attn


_LM_PREFIX = "lm.model."


def _is_lm_key(name: str, prefix: str = "") -> bool:
    return name.startswith(prefix + _LM_PREFIX)


def _drop_frozen_lm_state(module, state_dict, prefix, local_metadata) -> None:
    """state_dict post hook: leave a frozen conditioning
    LM's weights out (see coordformer.model.lm)."""
    for k in [k for k in state_dict if _is_lm_key(k, prefix)]:
        del state_dict[k]


def _ignore_missing_lm_state(module, incompatible_keys) -> None:
    """load_state_dict post hook: a frozen LM's weights are not expected in the state loaded."""
    keep = [
        k
        for k in incompatible_keys.missing_keys
        if not (k.startswith(_LM_PREFIX) or "." + _LM_PREFIX in k)
    ]
    incompatible_keys.missing_keys[:] = keep


@dataclass
class CoordFormerOutput:
    """logits: [B, L, V] ([N, V] when the forward got ``logits_at``); hidden: final hidden states
    [B, L, D] (after the last LayerNorm);
    representations: {layer: [B, L, D]} for requested layers (0 = embeddings);
    attentions: list of [B, H, L, L] per layer when requested, else None."""

    logits: torch.Tensor
    hidden: torch.Tensor
    representations: dict[int, torch.Tensor] = field(default_factory=dict)
    attentions: list[torch.Tensor] | None = None


class CoordFormer(nn.Module):
    """Token + position (+ linear coordinate) embedding
    -> pre-LN Transformer encoder -> MLM head."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        d = config.d_model
        conditioned = config.condition_on is not None
        # Conditioned on a language model: its representation (through ``connector``) replaces the
        # token embedding and the sinusoidal positions (ESM-2 has its own rotary positions).
        self.tokens = None if conditioned else nn.Embedding(config.vocab_size, d)
        self.connector = nn.Linear(config.lm_dim, d) if conditioned and config.lm_dim else None
        self.register_buffer("positions", position_table(config), persistent=False)
        self.coord_embed = nn.Linear(config.n_coord_features, d) if config.use_coords else None
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.n_layers))
        self.final_ln = nn.LayerNorm(d)
        self.lm_head = (
            nn.Sequential(nn.Linear(d, config.vocab_size))
            if config.lm_head == "linear"
            else nn.Sequential(
                nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d), nn.Linear(d, config.vocab_size)
            )
        )
        if config.weight_init == "pytorch":
            self._init_as_pytorch()
        else:
            self.apply(self._init_weights)
            for name, p in self.named_parameters():
                if name.endswith("attn.out.weight") or name.endswith("ff.2.weight"):
                    nn.init.normal_(p, std=0.02 / math.sqrt(2 * config.n_layers))
        if config.gaussian_init_heads:
            self._init_gaussian_heads()
        # Attached after the initialisation above so that it keeps its pretrained weights.
        self.lm = None
        if conditioned:
            from .lm import load_conditioner

            self.lm, fp = load_conditioner(config)
            if not config.lm_dim:  # a config written by hand: record the LM it got
                self.config = config = config.replace(lm_dim=self.lm.hidden_size, lm_fingerprint=fp)
                self.connector = nn.Linear(config.lm_dim, d)
                if config.weight_init != "pytorch":  # else it keeps nn.Linear's own
                    self._init_weights(self.connector)
            if not config.unfreeze_lm:
                # A frozen LM is not part of the model's state: checkpoints and exports leave it
                # out, loading re-reads it from config.condition_on (or $COORDFORMER_LM).
                self.register_state_dict_post_hook(_drop_frozen_lm_state)
                self.register_load_state_dict_post_hook(_ignore_missing_lm_state)
        # Activation checkpointing (training only): each layer's activations are recomputed in the
        # backward pass instead of stored, so activation memory no longer grows with depth, for
        # ~1/3 more compute. A run setting (TrainConfig.activation_checkpointing), not architecture.
        self.gradient_checkpointing = False
        # Training batches without padding take this one shape (TrainConfig.cuda_graphs); a run
        # setting like gradient_checkpointing, read in training mode only.
        self.static_rows: StaticRows | None = None

    @torch.no_grad()
    def _init_as_pytorch(self) -> None:
        """PyTorch's own initialisation, as the paper's model had it: nn.Linear's default for
        every Linear (the modules are built with it), nn.MultiheadAttention's for the attention
        input projection (Xavier-uniform weight, zero bias) and output bias (zero), N(0, 1) token
        embeddings (nn.Embedding's default)."""
        for layer in self.layers:
            nn.init.xavier_uniform_(layer.attn.qkv.weight)
            nn.init.zeros_(layer.attn.qkv.bias)
            nn.init.zeros_(layer.attn.out.bias)
        if self.tokens is not None:
            nn.init.normal_(self.tokens.weight, std=1.0)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=1.0)

    @torch.no_grad()
    def _init_gaussian_heads(
        self, coord_amplitude: float = 0.5, missing_penalty: float = 30.0
    ) -> None:
        """Make the first ``gaussian_init_heads`` heads of layer 0 attend by a Gaussian of 3D
        distance.

        The coordinate embedding writes a*f and -a*f, for f = (x, y, z, |x|^2, missing), into the
        last ten channels, which token and position embeddings leave empty. Reading the difference
        of each pair after the first LayerNorm cancels its mean subtraction exactly and leaves
        2*a*f/s_i, with s_i the residue's LayerNorm scale, which the construction takes as one
        typical s: it varies by up to ~20% between residues, so the heads are Gaussian only
        approximately (worse for residues far from the centroid and small sigma; README,
        "Gaussian first-layer initialisation", has the measured sizes). Queries [x_i, 1] and keys
        [x_j, -|x_j|^2/2] (scaled) then give logits x_i.x_j/sigma^2 - |x_j|^2/(2 sigma^2), which
        equal -|x_i - x_j|^2/(2 sigma^2) up to a per-query constant that softmax ignores: head
        dimension n + 1 suffices. Keys with missing coordinates get a large negative logit.
        """
        if self.coord_embed.weight.is_meta:
            # built without storage (transformers' from_pretrained): the weights come from the
            # checkpoint, and the LayerNorm scale below cannot be read off a meta tensor
            return
        c = self.config
        d, dh = c.d_model, c.d_head
        r = d - _N_RESERVED
        self.tokens.weight[:, r:] = 0.0
        # Feature layout (coordinate_features): xyz of each atom, one missing flag per atom, |x|^2.
        n_atoms = 4 if c.coord_mode == "backbone" else 1
        ca = 3 if c.coord_mode == "backbone" else 0
        miss = 3 * n_atoms + (1 if c.coord_mode == "backbone" else 0)
        sources = [ca, ca + 1, ca + 2, c.n_coord_features - 1, miss]
        w = torch.zeros_like(self.coord_embed.weight)
        for k, f in enumerate(sources):
            w[r + k, f] = coord_amplitude
            w[r + 5 + k, f] = -coord_amplitude
        self.coord_embed.weight.copy_(w)
        self.coord_embed.bias.zero_()
        # LayerNorm scale of a typical residue (its std over channels); token + position dominate.
        emb = self.tokens.weight[AA_OFFSET:].unsqueeze(0) + self.positions[:512].unsqueeze(1)
        s = emb.std(dim=-1, unbiased=False).pow(2).mean().sqrt().item()
        a2 = 2 * coord_amplitude  # a difference of a pair reads 2a f / s
        qkv = self.layers[0].attn.qkv

        def read(row: int, k: int, value: float) -> None:
            qkv.weight[row, r + k] = value
            qkv.weight[row, r + 5 + k] = -value

        for h in range(c.gaussian_init_heads):
            sigma = c.gaussian_init_sigmas[h % len(c.gaussian_init_sigmas)] / c.coord_scale
            qo, ko = h * dh, d + h * dh
            for o in (qo, ko):
                qkv.weight[o : o + dh] = 0.0
                qkv.bias[o : o + dh] = 0.0
            # SDPA divides logits by sqrt(dh); q.k must give x_i.x_j / sigma^2.
            g = s * dh**0.25 / (a2 * sigma)
            for k in range(3):
                read(qo + k, k, g)
                read(ko + k, k, g)
            qkv.bias[qo + 3] = 1.0
            read(ko + 3, 3, -math.sqrt(dh) * s / (2 * sigma**2 * a2))
            read(ko + 3, 4, -math.sqrt(dh) * s * missing_penalty / a2)
            if c.gaussian_init_values:
                # Default init scales residual writes down (std 0.02/sqrt(2 n_layers)), so what
                # these heads gather from spatial neighbours would barely reach the stream at first.
                # Unit-scale V (on LayerNorm output, ~unit per channel) and O make the neighbourhood
                # summary as large as a token embedding from step one.
                vo = 2 * d + h * dh
                nn.init.normal_(qkv.weight[vo : vo + dh], std=1.0 / math.sqrt(d))
                out_w = self.layers[0].attn.out.weight
                nn.init.normal_(
                    out_w[:, h * dh : (h + 1) * dh], std=1.0 / math.sqrt(dh * c.gaussian_init_heads)
                )

    def _token_and_position(self, tokens, ablate, positions, check_positions=True):
        """Token embedding + sinusoidal positions (the
        unconditioned model's input), see ``embed``."""
        l = tokens.shape[1]
        x = self.tokens(tokens)
        if "positions" not in ablate:
            if positions is None:
                x = x + self.positions[:l].to(self.tokens.weight.dtype)
            else:
                if check_positions and positions.numel():
                    low, top = int(positions.min()), int(positions.max())
                    if top >= self.config.max_len or low < 0:
                        raise UsageError(
                            f"residue positions must lie in 0..{self.config.max_len - 1} (the "
                            f"model's max_len); got {low}..{top}: "
                            + (
                                "positions count from 0"
                                if low < 0
                                else "use a smaller `chain_gap` or crop"
                            )
                        )
                x = x + self.positions[positions].to(self.tokens.weight.dtype)
        return x

    def embed(
        self,
        tokens: torch.Tensor,
        coords: torch.Tensor | None,
        padding_mask: torch.Tensor | None = None,
        ablate: tuple[str, ...] = (),
        positions: torch.Tensor | None = None,
        plddt: torch.Tensor | None = None,
        segments: torch.Tensor | None = None,
        check_positions: bool = True,
        pieces: torch.Tensor | None = None,
        lm_context: torch.Tensor | None = None,
        lm_columns: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """tokens: [B, L] long; coords: [B, L, 4, 3] Angstrom or None; padding_mask: [B, L] bool
        (True = real). Coordinates are centred on the mean present CA here, so callers may pass
        them in any frame (the batching pipeline already centres; centring twice is harmless).
        ``ablate`` (analysis only) may hold "coords" (coordinate features set to zero: every residue
        at the origin, none flagged missing, so only the sequence signal is left) and/or
        "positions" (sinusoidal positions set to zero: only the 3D signal is left; for a model
        conditioned on a language model, its representation is set to zero instead).
        ``positions``: [B, L] long residue indices for the sinusoidal table (default 0..L-1). Jumps
        in them mark chain breaks: unresolved residues that are not in the input, the gap between
        the chains of a complex, or residues left out by a 3D crop. ``plddt``: [B, L] (0-100, NaN
        unknown), read by models with ``config.plddt_feature`` and ignored by others.
        ``segments``: [B, L] long for packed rows (several chains per row, ``Batch.segments``):
        each segment is centred on its own CAs. ``check_positions``: refuse positions outside
        0..max_len-1 with a UsageError (reads them: a host sync on an accelerator). ``pieces``:
        [B, L] long (``Batch.pieces``), read only by a model conditioned on a language model: the
        runs of a row that the LM reads as sequences of their own (the chains of a complex), -1 at
        padding; default one per segment of a packed row, else one per row. ``lm_context`` [B, W]
        long and ``lm_columns`` [B, L] long (``Batch.lm_context``), read only by a conditioned
        model: the LM reads each row's context instead of its tokens, and each residue takes the
        representation at its column (spatial crops). Returns [B, L, D]."""
        unknown = set(ablate) - {"coords", "positions"}
        if unknown:
            raise OptionError(
                "ablate",
                tuple(ablate),
                f"unknown ablation {sorted(unknown)}; use 'coords' and/or 'positions'",
            )
        l = tokens.shape[1]
        if l > self.config.max_len:
            # forward has no length setting to name: its callers (batchers, windows) have theirs
            raise SequenceTooLong(l, self.config.max_len, option=None)
        if self.lm is not None:
            # The LM representation carries sequence and position; ablating "positions" drops it
            # (only the 3D signal is left). ``positions`` is not read: the LM reads each piece (a
            # chain) as one contiguous sequence, <cls> ... <eos>, so an
            # unresolved stretch inside a chain is skipped over as the chain's sequence has it.
            mask = tokens != PAD if padding_mask is None else padding_mask
            if lm_context is not None:
                if lm_columns is None or lm_columns.shape != tokens.shape:
                    raise UsageError("lm_context needs lm_columns, one column per residue [B, L]")
                h = self.lm.read_context(lm_context, lm_columns)
            else:
                h = self.lm(tokens, mask, segments if pieces is None else pieces)
            x = self.connector(h.to(self.connector.weight.dtype))
            if "positions" in ablate:
                x = torch.zeros_like(x)
        else:
            x = self._token_and_position(tokens, ablate, positions, check_positions)
        if self.coord_embed is not None:
            if coords is None:
                # Structure unknown: every residue carries the
                # missing flag (same path as a FASTA input).
                coords = torch.full((*tokens.shape, 4, 3), float("nan"), device=tokens.device)
            backbone = self.config.coord_mode == "backbone"
            if (
                coords.dim() != 4
                or coords.shape[:2] != tokens.shape
                or coords.shape[3] != 3
                or coords.shape[2] not in ((4,) if backbone else (1, 4))
            ):
                atoms = "4 (N, CA, C, O)" if backbone else "4 (N, CA, C, O) or 1 (CA)"
                raise UsageError(
                    f"coords of shape {tuple(coords.shape)} for tokens {tuple(tokens.shape)}: "
                    f"need [B, L, atoms, 3] Angstrom with atoms {atoms}"
                )
            if not backbone and coords.shape[2] == 4:  # only CA is read: centre 1 atom, not 4
                coords = coords[:, :, CA_INDEX : CA_INDEX + 1]
            # float32 even under bf16 autocast: bf16 keeps ~3 significant digits, which would round
            # coordinates to ~0.25 A and |x|^2 far worse; the K = 4..17 product is cheap.
            with torch.autocast(device_type=x.device.type, enabled=False):
                # a non-finite value (+/-Inf) makes its atom missing, as NaN does (the rule
                # prepare applies, data.sanitize), instead of turning every output of the chain
                # into NaN through the centring
                coords = coords.float()
                coords = torch.where(torch.isinf(coords), float("nan"), coords)
                ref = coords[:, :, 1] if coords.shape[2] > 1 else coords[:, :, 0]
                present = ~torch.isnan(ref).any(-1)
                if padding_mask is not None:
                    present = present & padding_mask
                centred = (
                    centre(coords, present)
                    if segments is None
                    else centre_segments(coords, present, segments)
                )
                feats = coordinate_features(
                    centred, self.config, None if plddt is None else plddt.float()
                )
                if "coords" in ablate:
                    feats = torch.zeros_like(feats)
                # (a model cast to half stays half: features follow the weights' dtype)
                x = x + self.coord_embed(feats.to(self.coord_embed.weight.dtype)).to(x.dtype)
        return x

    def forward(
        self,
        tokens: torch.Tensor,
        coords: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
        need_attention: bool = False,
        repr_layers: tuple[int, ...] = (),
        ablate: tuple[str, ...] = (),
        positions: torch.Tensor | None = None,
        plddt: torch.Tensor | None = None,
        segments: torch.Tensor | None = None,
        padded: bool | None = None,
        logits_at: torch.Tensor | None = None,
        varlen: Varlen | None = None,
        pieces: torch.Tensor | None = None,
        lm_context: torch.Tensor | None = None,
        lm_columns: torch.Tensor | None = None,
    ) -> CoordFormerOutput:
        """
        Args:
            tokens: [B, L] token ids (constants.VOCAB).
            coords: [B, L, 4, 3] backbone coordinates in Angstrom (N, CA, C, O), any frame (centred
                here); NaN where missing. Ignored when ``config.use_coords`` is False.
            padding_mask: [B, L] bool, True for real residues. Defaults to tokens != PAD.
            need_attention: also return per-layer attention maps [B, H, L, L] (slower path).
            repr_layers: layer indices whose hidden states to return (0 = embedding output).
            ablate: inputs to zero for attention analysis, see ``embed``.
            positions: [B, L] long residue indices (default 0..L-1), see ``embed``.
            plddt: [B, L] pLDDT 0-100 (NaN unknown) for models with ``config.plddt_feature``.
            segments: [B, L] long, packed rows only: the chain (0, 1, ...) of each position, -1 at
                padding. Attention is block-diagonal (no position sees another chain) and each
                chain is centred on its own CAs; pass per-chain ``positions`` with it.
            padded: whether any row has padding, when the caller knows it (``Batch.padded``). None:
                the model checks ``padding_mask`` (and the range of ``positions``) itself, which
                waits for the device on GPU; a caller that gives it vouches for its positions.
            logits_at: [N] long flat positions (row * L + column): the LM head runs on these only
                and ``logits`` is [N, V] (masked-LM training scores the masked positions only).
            varlen: the batch's real residues (``Batch.varlen``): the layers then run on those T
                residues only, as one row of chains attending each to itself (FlashAttention's
                variable-length kernel on a GPU), so no FLOP goes to padding. Outputs keep their
                [B, L, ...] shapes, with zeros at padding. Not with ``need_attention``.
            pieces: [B, L] long, for a model conditioned on a language model: the runs its LM
                reads as separate sequences, see ``embed``. Ignored by other models.
            lm_context, lm_columns: for a conditioned model, what its LM reads instead of
                ``tokens`` and where each residue sits in it (spatial crops), see ``embed``.

        A :class:`coordformer.batch.Batch` gives these inputs as
        ``model(**batch.inputs(use_coords))``.
        """
        if padding_mask is None:
            padding_mask = tokens != PAD
        # The positions' range check reads their values, which on an accelerator waits for the
        # device. A caller that read its batch on the host (``padded`` given: Batch.indexed of a
        # batch whose positions coordformer's batchers made) is spared it.
        x = self.embed(
            tokens,
            coords,
            padding_mask,
            ablate,
            positions,
            plddt,
            segments,
            padded is None,
            pieces=pieces,
            lm_context=lm_context,
            lm_columns=lm_columns,
        )
        if varlen is not None:
            key_mask = None  # the layers take the varlen rows below instead of a mask
        elif segments is not None:
            # packed rows: a position attends to its own chain only (padding to padding, so that
            # no softmax row is empty)
            key_mask = (segments[:, :, None] == segments[:, None, :])[:, None]
        else:
            # Without padding, SDPA gets no mask, which lets it pick the flash kernel on GPU
            # (flash takes no arbitrary mask). Asking the device costs a host sync per forward, so a
            # caller that knows (Batch.padded, read on the CPU) says so.
            if padded is None:
                padded = not bool(padding_mask.all())
            key_mask = padding_mask if padded else None
        if any(not 0 <= k <= len(self.layers) for k in repr_layers):
            raise OptionError(
                "repr_layers",
                tuple(repr_layers),
                f"layers are 0 (the embeddings) to {len(self.layers)} for this model",
            )
        reps = {0: x} if 0 in repr_layers else {}
        attns = [] if need_attention else None
        shape = x.shape
        # bound on both paths: a closure cell read before it is set breaks torch.compile's graph
        real = varlen.token_index if varlen is not None else None
        if varlen is not None:
            if need_attention:
                raise OptionError("varlen", "given", "attention maps need the padded path")
            flat = x.flatten(0, 1)
            rows = (
                self.static_rows.pad(varlen, len(flat))
                if self.static_rows and self.training
                else None
            )
            if rows is not None:
                flat = torch.cat([flat, flat.new_zeros(1, flat.shape[1])])  # the filler's zero row
                varlen = rows
            # [B, L, D] -> [1, T, D]: the real residues, chain after chain (then the filler)
            x = flat.index_select(0, varlen.token_index).unsqueeze(0)
            key_mask = varlen

        def padded_again(t: torch.Tensor) -> torch.Tensor:
            if real is None:
                return t
            full = t.new_zeros(shape[0] * shape[1], t.shape[-1])
            return full.index_copy(0, real, t[0, : len(real)]).view(*shape[:2], -1)

        ckpt = (
            self.gradient_checkpointing
            and self.training
            and torch.is_grad_enabled()
            and not need_attention
        )
        for i, layer in enumerate(self.layers, start=1):
            if ckpt:
                x, a = torch.utils.checkpoint.checkpoint(
                    layer, x, key_mask, False, use_reentrant=False
                )
            else:
                x, a = layer(x, key_mask, need_attention)
            if need_attention:
                attns.append(a)
            if i in repr_layers:
                reps[i] = padded_again(x)
        h = padded_again(self.final_ln(x))
        at = h if logits_at is None else h.flatten(0, 1).index_select(0, logits_at)
        return CoordFormerOutput(
            logits=self.lm_head(at), hidden=h, representations=reps, attentions=attns
        )

    def num_parameters(self) -> int:
        """Parameters of the model's own state (a frozen conditioning LM is not counted)."""
        return sum(
            p.numel()
            for n, p in self.named_parameters()
            if not (_is_lm_key(n) and not self.config.unfreeze_lm)
        )

    def save_pretrained(
        self, folder: str | Path, meta: dict | None = None, half: bool = False
    ) -> Path:
        """Write a Hugging Face-style folder (config.json,
        model.safetensors, README.md); see ``hub``."""
        from .hub import save_pretrained  # file formats only; hub never imports this module

        return save_pretrained(self, folder, meta=meta, half=half)

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, map_location: str | torch.device = "cpu"
    ) -> CoordFormer:
        """Load a folder written by ``save_pretrained`` (local, offline) or a shipped model by name
        (``CoordFormer.from_pretrained("small-coords")``); eval mode, float32."""
        from .weights import read_pretrained  # reads files only; weights never imports this module

        return read_pretrained(folder, map_location).build(cls)
