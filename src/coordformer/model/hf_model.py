"""Optional ``transformers`` integration: CoordFormer as a ``PreTrainedModel``.

transformers is not a dependency of coordformer; install it (``pip install 'coordformer[hf]'``) to
use this module. Importing it registers the ``coordformer`` model type with the Auto classes, so a
folder written by ``coordformer export --format hf`` (or ``CoordFormer.save_pretrained``) loads
with the usual calls, offline, without ``trust_remote_code``::

    import coordformer.model.hf_model  # noqa: F401  (registers "coordformer")
    from transformers import AutoModel, AutoModelForMaskedLM

    mlm = AutoModelForMaskedLM.from_pretrained("path/to/folder")   # logits [B, L, V]
    enc = AutoModel.from_pretrained("path/to/folder")              # last_hidden_state [B, L, D]

Both classes hold the same weights (a whole ``CoordFormer`` under the ``coordformer.`` prefix), so
any folder loads into either (except a language-model-conditioned model's, ``condition_on``: its
ESM-2 loads through ``CoordFormer.from_pretrained`` / ``load_model`` only), and a folder saved
from them loads back into coordformer
(``-c FOLDER`` or ``CoordFormer.from_pretrained``). Inputs are coordformer's: token ids
(``coordformer.constants.VOCAB``; ``coordformer.data.batching.chains_to_batch`` builds them from
chains), ``coords`` [B, L, 4, 3] in Angstrom with NaN where missing, ``attention_mask`` [B, L]
(1 = residue), optional ``position_ids`` [B, L] (residue indices, see ``CoordFormer.embed``) and
``plddt`` [B, L] (for models trained with ``plddt_feature``). The model is not rotation-invariant:
``coords`` are used in the frame given, so pass ``coordformer.geometry.canonical_frame(coords)`` to
get what ``coordformer embed`` and ``score`` compute.
"""

from __future__ import annotations

import dataclasses

import torch

from ..batch import Batch
from ..config import ModelConfig
from ..errors import UsageError
from .core import CoordFormer, position_table
from .hub import MODEL_TYPE

try:
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForMaskedLM,
        PretrainedConfig,
        PreTrainedModel,
    )
    from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput
except ImportError as e:  # pragma: no cover - exercised only where transformers is absent
    raise UsageError(
        "coordformer.model.hf_model needs transformers: pip install 'coordformer[hf]' "
        "(or load folders without it: CoordFormer.from_pretrained)"
    ) from e

_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig))


class CoordFormerConfig(PretrainedConfig):
    """A ``PretrainedConfig`` whose CoordFormer fields (d_model, n_layers, ...) sit at top level, as
    in the config.json that coordformer writes; they are validated by ``ModelConfig``."""

    model_type = MODEL_TYPE

    def __init__(self, **kwargs):
        fields = {k: kwargs.pop(k) for k in list(kwargs) if k in _FIELDS}
        checked = ModelConfig.from_dict(fields).to_dict()  # defaults filled, bad values refused
        super().__init__(**kwargs)
        for k, v in checked.items():
            setattr(self, k, list(v) if isinstance(v, tuple) else v)

    def to_model_config(self) -> ModelConfig:
        return ModelConfig.from_dict({k: getattr(self, k) for k in _FIELDS})


class CoordFormerPreTrainedModel(PreTrainedModel):
    config_class = CoordFormerConfig
    base_model_prefix = "coordformer"
    main_input_name = "input_ids"
    # activation_checkpointing_enable() (gradient_checkpointing_enable()
    # before 5.x) sets CoordFormer.gradient_checkpointing
    supports_gradient_checkpointing = True

    def __init__(self, config: CoordFormerConfig):
        super().__init__(config)
        mc = config.to_model_config()
        if mc.condition_on:
            # its ESM-2 is loaded with from_pretrained, which transformers refuses inside its own
            # (meta-device) from_pretrained: the error would blame the LM's folder
            raise UsageError(
                f"a language-model-conditioned model (`condition_on` {mc.condition_on!r}) does "
                "not load through the transformers Auto classes; use "
                "coordformer.model.CoordFormer.from_pretrained(folder) or "
                "coordformer.load_model(folder)"
            )
        self.coordformer = CoordFormer(mc)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        # CoordFormer initialises its own parameters. What transformers must redo is the fixed
        # position table: a non-persistent buffer, so from_pretrained materialises it empty.
        if isinstance(module, CoordFormer):
            module.positions.copy_(position_table(module.config).to(module.positions.device))

    def _encode(
        self,
        input_ids,
        coords,
        attention_mask,
        position_ids,
        output_attentions,
        output_hidden_states,
        plddt=None,
    ):
        n = self.coordformer.config.n_layers
        optional = {"positions": position_ids, "plddt": plddt}
        batch = (
            Batch.from_tokens(input_ids, coords, **optional)
            if attention_mask is None
            else Batch(input_ids, coords, attention_mask.bool(), **optional)
        )
        out = self.coordformer(
            **batch.inputs(),
            need_attention=bool(output_attentions),
            repr_layers=tuple(range(n + 1)) if output_hidden_states else (),
        )
        hidden = (
            tuple(out.representations[i] for i in range(n + 1)) if output_hidden_states else None
        )
        attentions = tuple(out.attentions) if output_attentions else None
        return out, hidden, attentions


class CoordFormerModel(CoordFormerPreTrainedModel):
    """Encoder outputs: ``last_hidden_state`` [B, L, D] (after the final LayerNorm, what
    ``coordformer embed`` pools); ``hidden_states`` = embeddings + each layer's residual stream.
    ``coords`` are used in the frame given: ``coordformer embed`` first applies
    ``coordformer.geometry.canonical_frame``, and only then are the numbers the same."""

    def forward(
        self,
        input_ids: torch.Tensor,
        coords: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        plddt: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutput:
        out, hidden, attentions = self._encode(
            input_ids,
            coords,
            attention_mask,
            position_ids,
            output_attentions,
            output_hidden_states,
            plddt,
        )
        return BaseModelOutput(
            last_hidden_state=out.hidden, hidden_states=hidden, attentions=attentions
        )


class CoordFormerForMaskedLM(CoordFormerPreTrainedModel):
    """Masked-LM logits [B, L, V]; with ``labels`` [B, L] (-100 = not scored) also the mean
    cross-entropy, as transformers' masked-LM models compute it."""

    def forward(
        self,
        input_ids: torch.Tensor,
        coords: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        plddt: torch.Tensor | None = None,
        **kwargs,
    ) -> MaskedLMOutput:
        out, hidden, attentions = self._encode(
            input_ids,
            coords,
            attention_mask,
            position_ids,
            output_attentions,
            output_hidden_states,
            plddt,
        )
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(
                out.logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100
            )
        return MaskedLMOutput(
            loss=loss, logits=out.logits, hidden_states=hidden, attentions=attentions
        )


AutoConfig.register(MODEL_TYPE, CoordFormerConfig, exist_ok=True)
AutoModel.register(CoordFormerConfig, CoordFormerModel, exist_ok=True)
AutoModelForMaskedLM.register(CoordFormerConfig, CoordFormerForMaskedLM, exist_ok=True)

__all__ = ["CoordFormerConfig", "CoordFormerModel", "CoordFormerForMaskedLM"]
