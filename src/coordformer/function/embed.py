"""Moved to coordformer.embed; removed once function/finetune.py imports the new place."""

from ..embed import EmbedConfig, embed, iter_pooled, iter_windowed, read_embeddings, residue_key  # noqa: F401
