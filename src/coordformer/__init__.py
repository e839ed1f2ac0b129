"""coordformer: Transformers that attend to Euclidean distance via linear coordinate embeddings.

The public API at the top level::

    import coordformer

    model, meta = coordformer.load_model("small-coords")  # a shipped name, checkpoint or folder
    chains = coordformer.read_structure("1orc.pdb")        # io.Chain per protein chain
    model = coordformer.CoordFormer.from_pretrained("small-coords")

``Batch`` is the typed batch the model takes (``model(**batch.inputs())``). The names load their
modules on first use, so ``import coordformer`` (and ``coordformer.io``, which reads files without
torch) stays light; everything else lives in the subpackages (``io``, ``data``, ``model``,
``embed`` ...).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> the module that defines it, imported on first access (PEP 562). By name, not by
#: import statements: data.prepare and hub import this package for __version__, and must not
#: reach torch through it (the import contracts of pyproject.toml read import statements).
_LAZY = {
    "load_model": "coordformer.model.checkpoints",
    "read_structure": "coordformer.io",
    "Batch": "coordformer.batch",
    "CoordFormer": "coordformer.model.core",
}

__all__ = ["Batch", "CoordFormer", "__version__", "load_model", "read_structure"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    # the public names and the subpackages imported so far, not this module's own helpers
    loaded = {
        k for k, v in globals().items() if getattr(v, "__name__", "").startswith(__name__ + ".")
    }
    return sorted({*__all__, *(k for k in loaded if not k.startswith("_"))})
