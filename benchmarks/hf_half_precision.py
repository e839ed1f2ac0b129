"""Max |difference| of a float16 transformers load of an `export --format hf` folder against the
native float32 model, on 1ORC (tests/data): what README says about `dtype=torch.float16`.

    coordformer export -c small-coords --format hf --out /tmp/small-coords-hf
    python benchmarks/hf_half_precision.py /tmp/small-coords-hf
"""

import argparse

import torch
from transformers import AutoModel, AutoModelForMaskedLM

import coordformer.model.hf_model  # noqa: F401 - registers model_type "coordformer"
from coordformer import CoordFormer, read_structure
from coordformer.data.batching import chains_to_batch

ap = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
)
ap.add_argument("folder", help="a folder written by `coordformer export --format hf`")
folder = ap.parse_args().folder
native = CoordFormer.from_pretrained(folder)
tokens, coords, mask = chains_to_batch(read_structure("tests/data/1orc.pdb"))
with torch.no_grad():
    ref = native(tokens, coords, padding_mask=mask)
    enc = AutoModel.from_pretrained(folder, dtype=torch.float16)
    mlm = AutoModelForMaskedLM.from_pretrained(folder, dtype=torch.float16)
    h = enc(tokens, coords=coords.half(), attention_mask=mask).last_hidden_state.float()
    lg = mlm(tokens, coords=coords.half(), attention_mask=mask).logits.float()
m = mask[..., None]
hidden, logits = ((h - ref.hidden).abs() * m).max(), ((lg - ref.logits).abs() * m).max()
print(f"hidden {hidden:.4f}, logits {logits:.4f}")
