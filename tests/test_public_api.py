"""The top-level API (``coordformer.load_model``, ``read_structure``, ``Batch``, ``CoordFormer``,
``__version__``): the same objects as in their modules, loaded on first use so that ``import
coordformer`` and ``coordformer.io`` stay without torch."""

import subprocess
import sys

import pytest

import coordformer
from conftest import DATA


def _imports_torch(code: str) -> bool:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}; import sys; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.strip() == "True"


def test_top_level_names_are_the_modules_own():
    from coordformer.batch import Batch
    from coordformer.io import read_structure
    from coordformer.model.checkpoints import load_model
    from coordformer.model.core import CoordFormer

    top = (
        coordformer.load_model,
        coordformer.read_structure,
        coordformer.Batch,
        coordformer.CoordFormer,
    )
    assert top == (load_model, read_structure, Batch, CoordFormer)
    assert set(coordformer.__all__) == {
        "load_model",
        "read_structure",
        "Batch",
        "CoordFormer",
        "__version__",
    }
    assert set(coordformer.__all__) <= set(dir(coordformer))
    # tab completion shows the API, not the module's own helpers
    assert not {"Any", "annotations", "importlib", "_LAZY"} & set(dir(coordformer))
    assert isinstance(coordformer.__version__, str)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        coordformer.nope  # noqa: B018


def test_the_top_level_api_works_end_to_end():
    import torch

    from coordformer.constants import token_of

    chain = coordformer.read_structure(DATA / "1orc.pdb")[0]
    model, meta = coordformer.load_model("small-coords")
    assert isinstance(model, coordformer.CoordFormer) and meta["name"] == "small-coords"
    tokens = torch.tensor([[token_of(a) for a in chain.sequence]])
    assert model(tokens).logits.shape[:2] == tokens.shape


def test_importing_the_package_or_io_does_not_import_torch():
    assert not _imports_torch("import coordformer")
    assert not _imports_torch("import coordformer.io")
    assert not _imports_torch("import coordformer; coordformer.read_structure")
    assert _imports_torch("import coordformer; coordformer.CoordFormer")
