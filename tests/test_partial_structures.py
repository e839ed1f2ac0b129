"""Partial structures: FASTA (sequence-only) inputs and unresolved loops go through the same model
with the missing flag set; a loop absent from the file gives the same output as one masked in memory."""

import gzip
import shutil

import numpy as np
import pytest
import torch
from conftest import DATA

from coordformer.config import PrepareConfig
from coordformer.data.batching import chains_to_batch
from coordformer.data.prepare import prepare
from coordformer.data.store import PreparedDataset
from coordformer.function.embed import EmbedConfig, embed, read_embeddings
from coordformer.io import (
    Chain,
    StructureReadError,
    find_sources,
    iter_chain_set,
    iter_fasta,
    read_fasta,
    read_structure,
    write_chain_set,
)
from coordformer.model.checkpoints import load_model

BACKBONE = {"N", "CA", "C", "O"}
LOOP = slice(13, 21)  # residues 16-23 of 1ORC.A (QTKTAKDL): no glycine, so each keeps its CB


@pytest.fixture(scope="module")
def model():
    return load_model("small-coords")[0].float().eval()


@pytest.fixture(scope="module")
def chain():
    return read_structure(DATA / "1orc.pdb")[0]


@torch.no_grad()
def _run(model, c: Chain):
    """(logits [L, V], hidden [L, D]) of one chain, coordinates as stored (NaN = missing)."""
    out = model(*chains_to_batch([c]))
    return out.logits[0], out.hidden[0]


def _masked(c: Chain, rows) -> Chain:
    coords = c.coords.copy()
    coords[rows] = np.nan
    return Chain(id=c.id, sequence=c.sequence, coords=coords, source="memory")


# ------------------------------------------------------------------------------------------ (a)


def test_fasta_records_lowercase_gzip_and_ids(tmp_path):
    text = ">1abc_A some protein\nmkv\nLAU*\n;comment\n>sp|P1|X_HUMAN\r\nAC DE\r\nFXB\r\n\n>seq3\nWWW\n"
    plain = tmp_path / "s.fasta"
    plain.write_text(text)
    gz = tmp_path / "s.fa.gz"
    gz.write_bytes(gzip.compress(text.encode()))
    for path in (plain, gz):
        chains = read_fasta(path)
        assert [c.id for c in chains] == ["1ABC.A", "sp|P1|X_HUMAN", "seq3"]
        assert [c.sequence for c in chains] == ["MKVLAC", "ACDEFXX", "WWW"]
        for c in chains:
            assert c.coords.shape == (len(c), 4, 3) and c.coords.dtype == np.float32 and np.isnan(c.coords).all()
        assert chains[1].source == f"{path}:5"


@pytest.mark.parametrize(
    "content, reason",
    [(b"", "empty file"), (b"  \n\n", "empty file"), (b"MKVL\n>x\nAC\n", "no '>' header"),
     (b">x\n\x00\x01\x02", "binary"), (b"\x1f\x8b\x08junk", "gzip")],
)
def test_bad_fasta_files_raise_naming_the_file(tmp_path, content, reason):
    path = tmp_path / "bad.fasta"
    path.write_bytes(content)
    with pytest.raises(StructureReadError, match=reason) as e:
        read_fasta(path)
    assert e.value.source == str(path)


def test_empty_and_idless_records_are_reported_not_fatal(tmp_path):
    path = tmp_path / "s.faa"
    path.write_text(">a\nMKV\n>empty\n>\nACD\n>b\n*\n>c\nWW\n")
    items = list(iter_fasta(path))
    assert [c.id for c in items if isinstance(c, Chain)] == ["a", "c"]
    errors = [e for e in items if isinstance(e, StructureReadError)]
    assert [e.source for e in errors] == [f"{path}:3", f"{path}:4", f"{path}:6"]
    assert "empty sequence" in errors[0].reason and "no id" in errors[1].reason
    with pytest.raises(StructureReadError, match="empty sequence"):
        read_fasta(path)


# ------------------------------------------------------------------------------------------ (b)


def test_prepare_keeps_fasta_chains_in_a_mixed_folder(tmp_path, chain):
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(DATA / "1orc.pdb", d / "1orc.pdb")
    (d / "seqs.fasta").write_text(f">only_seq\n{chain.sequence}\n>short\nMKVLA\n>empty\n")
    assert [p.name for p in find_sources([d])[0]] == ["1orc.pdb", "seqs.fasta"]
    # the default max_missing_ca (0.5) still filters structure chains, but not FASTA records
    mostly_missing = _masked(chain, slice(0, 50))
    mostly_missing.id = "HALF.A"
    write_chain_set([mostly_missing], d / "half.jsonl")
    out = tmp_path / "ds"
    s = prepare([str(d)], out, PrepareConfig(min_length=1, valid_fraction=0.0, test_fraction=0.0), progress=False)
    ds = PreparedDataset(out)
    assert sorted(ds.ids) == ["1ORC.A", "only_seq", "short"]
    assert s.chains_filtered == {"missing CA": 1} and s.inputs_skipped == 1
    i = ds.index_of("only_seq")
    assert np.isnan(ds.coords(i)).all() and bytes(ds.seq_bytes(i)).decode() == chain.sequence
    assert np.isnan(ds.coords(ds.index_of("short"))).all()
    assert np.isfinite(ds.coords(ds.index_of("1ORC.A"))).all()
    skipped = (out / "skipped.tsv").read_text()
    assert "seqs.fasta:5" in skipped and "HALF.A" in skipped


# ------------------------------------------------------------------------------------------ (c)


def _pdb_without_loop_backbone(src, dst, chain: Chain) -> None:
    """Copy a PDB file, dropping the N/CA/C/O atoms of LOOP (side-chain atoms stay, so the
    residues, and thus the sequence, stay)."""
    loop_ids = set(chain.residue_ids[LOOP])
    lines = []
    for line in src.read_text().splitlines(keepends=True):
        if line.startswith(("ATOM  ", "HETATM")) and line[22:27].strip() in loop_ids and line[12:16].strip() in BACKBONE:
            continue
        lines.append(line)
    dst.write_text("".join(lines))


def test_masked_loop_in_the_file_equals_masking_in_memory(tmp_path, model, chain):
    assert "G" not in chain.sequence[LOOP]
    _pdb_without_loop_backbone(DATA / "1orc.pdb", tmp_path / "loop.pdb", chain)
    from_pdb = read_structure(tmp_path / "loop.pdb")[0]
    in_memory = _masked(chain, LOOP)
    assert from_pdb.sequence == chain.sequence
    assert np.array_equal(from_pdb.atom_mask, in_memory.atom_mask)
    # the same loop as null coordinates in a chain_set record
    write_chain_set([in_memory], tmp_path / "loop.jsonl")
    from_jsonl = next(iter_chain_set(tmp_path / "loop.jsonl"))

    ref_logits, ref_hidden = _run(model, in_memory)
    for c in (from_pdb, from_jsonl):
        logits, hidden = _run(model, c)
        assert torch.allclose(logits, ref_logits, atol=1e-5) and torch.allclose(hidden, ref_hidden, atol=1e-5)
    # the missing flag matters: the run with the loop present differs
    assert not torch.allclose(_run(model, chain)[1], ref_hidden, atol=1e-3)


def test_fasta_chain_equals_structure_with_all_coordinates_missing(tmp_path, model, chain):
    (tmp_path / "a.fasta").write_text(f">x\n{chain.sequence.lower()}\n")
    fasta = read_fasta(tmp_path / "a.fasta")[0]
    logits, hidden = _run(model, fasta)
    ref_logits, ref_hidden = _run(model, _masked(chain, slice(None)))
    assert torch.allclose(logits, ref_logits, atol=1e-5) and torch.allclose(hidden, ref_hidden, atol=1e-5)


# ------------------------------------------------------------------------------------------ (d)


def test_embed_a_fasta_file_end_to_end(tmp_path, model, chain):
    path = tmp_path / "seqs.fasta"
    path.write_text(f">1orc_A\n{chain.sequence}\n>tiny\nMK\n>other\nMKTAYIAKQRQISFVKSHFSRQ\n")
    out = tmp_path / "e.npz"
    res = embed("small-coords", [str(path)], out, EmbedConfig(), progress=False, echo=lambda s: None)
    ids, mean = read_embeddings(out)
    assert res["chains"] == 3 and sorted(ids) == ["1ORC.A", "other", "tiny"]
    assert mean.shape == (3, model.config.d_model) and np.isfinite(mean).all()
    # the same numbers as the structure chain with every coordinate missing
    direct = _run(model, _masked(chain, slice(None)))[1].mean(0).numpy()
    assert np.allclose(mean[ids.index("1ORC.A")], direct, atol=1e-4)


def test_evaluate_runs_on_a_dataset_prepared_from_fasta(tmp_path, model):
    from coordformer.eval.mlm import evaluate_mlm

    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), int(n))) for n in rng.integers(30, 80, 12)]
    path = tmp_path / "seqs.fa"
    path.write_text("".join(f">s{i}\n{s}\n" for i, s in enumerate(seqs)))
    prepare([str(path)], tmp_path / "ds", PrepareConfig(valid_fraction=0.0, test_fraction=0.0), progress=False)
    ds = PreparedDataset(tmp_path / "ds")
    assert len(ds) == 12
    m = evaluate_mlm(model, ds, "train", progress=False)
    assert np.isfinite(m["perplexity"]) and 0 <= m["recovery"] <= 1
