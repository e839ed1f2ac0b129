"""Partial structures: FASTA (sequence-only) inputs and unresolved loops go through the same model
with the missing flag set; a loop absent from the file gives the same output as one masked in
memory."""

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
from coordformer.embed import EmbedConfig, embed, read_embeddings
from coordformer.errors import OptionError
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
    text = (
        ">1abc_A some protein\nmkv\nLAU*\n;comment\n"
        ">sp|P1|X_HUMAN\r\nAC DE\r\nFXB\r\n\n>seq3\nWWW\n"
    )
    plain = tmp_path / "s.fasta"
    plain.write_text(text)
    gz = tmp_path / "s.fa.gz"
    gz.write_bytes(gzip.compress(text.encode()))
    for path in (plain, gz):
        chains = read_fasta(path)
        assert [c.id for c in chains] == ["1ABC.A", "sp|P1|X_HUMAN", "seq3"]
        assert [c.sequence for c in chains] == ["MKVLAC", "ACDEFXX", "WWW"]
        for c in chains:
            assert (
                c.coords.shape == (len(c), 4, 3)
                and c.coords.dtype == np.float32
                and np.isnan(c.coords).all()
            )
        assert chains[1].source == f"{path}:5"


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty file"),
        (b"  \n\n", "empty file"),
        (b"MKVL\n>x\nAC\n", "no '>' header"),
        (b">x\n\x00\x01\x02", "binary"),
        (b"\x1f\x8b\x08junk", "gzip"),
    ],
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
    s = prepare(
        [str(d)],
        out,
        PrepareConfig(min_length=1, valid_fraction=0.0, test_fraction=0.0),
        progress=False,
    )
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
        if (
            line.startswith(("ATOM  ", "HETATM"))
            and line[22:27].strip() in loop_ids
            and line[12:16].strip() in BACKBONE
        ):
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
        assert torch.allclose(logits, ref_logits, atol=1e-5) and torch.allclose(
            hidden, ref_hidden, atol=1e-5
        )
    # the missing flag matters: the run with the loop present differs
    assert not torch.allclose(_run(model, chain)[1], ref_hidden, atol=1e-3)


def test_fasta_chain_equals_structure_with_all_coordinates_missing(tmp_path, model, chain):
    (tmp_path / "a.fasta").write_text(f">x\n{chain.sequence.lower()}\n")
    fasta = read_fasta(tmp_path / "a.fasta")[0]
    logits, hidden = _run(model, fasta)
    ref_logits, ref_hidden = _run(model, _masked(chain, slice(None)))
    assert torch.allclose(logits, ref_logits, atol=1e-5) and torch.allclose(
        hidden, ref_hidden, atol=1e-5
    )


# ------------------------------------------------------------------------------------------ (d)


def test_embed_a_fasta_file_end_to_end(tmp_path, model, chain):
    path = tmp_path / "seqs.fasta"
    path.write_text(f">1orc_A\n{chain.sequence}\n>tiny\nMK\n>other\nMKTAYIAKQRQISFVKSHFSRQ\n")
    out = tmp_path / "e.npz"
    res = embed(
        "small-coords", [str(path)], out, EmbedConfig(), progress=False, echo=lambda s: None
    )
    ids, mean = read_embeddings(out)
    assert res["chains"] == 3 and sorted(ids) == ["1ORC.A", "other", "tiny"]
    assert mean.shape == (3, model.config.d_model) and np.isfinite(mean).all()
    # the same numbers as the structure chain with every coordinate missing
    direct = _run(model, _masked(chain, slice(None)))[1].mean(0).numpy()
    assert np.allclose(mean[ids.index("1ORC.A")], direct, atol=1e-4)


def test_evaluate_runs_on_a_dataset_prepared_from_fasta(tmp_path, model):
    from coordformer.eval.mlm import evaluate_mlm

    rng = np.random.default_rng(0)
    seqs = [
        "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), int(n))) for n in rng.integers(30, 80, 12)
    ]
    path = tmp_path / "seqs.fa"
    path.write_text("".join(f">s{i}\n{s}\n" for i, s in enumerate(seqs)))
    prepare(
        [str(path)],
        tmp_path / "ds",
        PrepareConfig(valid_fraction=0.0, test_fraction=0.0),
        progress=False,
    )
    ds = PreparedDataset(tmp_path / "ds")
    assert len(ds) == 12
    m = evaluate_mlm(model, ds, "train", progress=False)
    assert np.isfinite(m["perplexity"]) and 0 <= m["recovery"] <= 1


# ------------------------------------------------------------------------------------------ (e)
# Residues absent from the file altogether (unresolved loops / termini): put back from the
# deposited sequence (PDB SEQRES, mmCIF entity_poly_seq) with read_structure(seqres=...).


def _pdb_without_residues(src, dst, ids: set[str]) -> None:
    """Copy a PDB file, dropping every atom record of the residues ``ids`` (SEQRES stays)."""
    lines = [
        line
        for line in src.read_text().splitlines(keepends=True)
        if not (line.startswith(("ATOM  ", "HETATM", "ANISOU")) and line[22:27].strip() in ids)
    ]
    dst.write_text("".join(lines))


def _cif_without_residues(src, dst, label_seq_ids: set[str]) -> None:
    """Copy an mmCIF file, dropping the _atom_site rows of polymer residues with these
    label_seq_id."""
    lines, cols, in_loop = [], [], False
    for line in src.read_text().splitlines(keepends=True):
        if line.startswith("_atom_site."):
            cols.append(line.split()[0])
            in_loop = True
        elif in_loop and line.startswith(("ATOM", "HETATM")):
            if line.split()[cols.index("_atom_site.label_seq_id")] in label_seq_ids:
                continue
        elif in_loop and cols and not line.startswith(("ATOM", "HETATM")):
            in_loop = False
        lines.append(line)
    dst.write_text("".join(lines))


def test_seqres_puts_back_a_loop_missing_from_a_pdb_file(tmp_path, model, chain):
    """1ORC.A with residues 16-23 deleted from the file: seqres="gaps" restores the full chain,
    with exactly those residues missing, and the model sees what it sees for the loop masked in
    memory."""
    _pdb_without_residues(DATA / "1orc.pdb", tmp_path / "cut.pdb", set(chain.residue_ids[LOOP]))
    cut = read_structure(tmp_path / "cut.pdb")[0]
    assert len(cut) == len(chain) - 8 and cut.observed is None
    gaps = read_structure(tmp_path / "cut.pdb", seqres="gaps")[0]
    assert gaps.sequence == chain.sequence
    expected = np.ones(len(chain), bool)
    expected[LOOP] = False
    assert np.array_equal(gaps.observed, expected)
    assert np.isnan(gaps.coords[LOOP]).all() and np.array_equal(
        gaps.coords[expected], chain.coords[expected], equal_nan=True
    )
    assert gaps.residue_ids[LOOP] == [""] * 8 and gaps.residue_ids[:3] == ["3", "4", "5"]
    assert np.isnan(gaps.b_factors[LOOP]).all() and np.array_equal(
        gaps.b_factors[expected], chain.b_factors[expected]
    )

    ref_logits, ref_hidden = _run(model, _masked(chain, LOOP))
    logits, hidden = _run(model, gaps)
    assert torch.allclose(logits, ref_logits, atol=1e-5) and torch.allclose(
        hidden, ref_hidden, atol=1e-5
    )


def test_seqres_all_adds_the_unmodelled_termini(chain):
    """1ORC's SEQRES has 71 residues; the file models 3-61 (with the 56A-E insertion): "gaps"
    changes nothing, "all" adds ME at the N terminus and KKTTA at the C terminus."""
    gaps = read_structure(DATA / "1orc.pdb", seqres="gaps")[0]
    assert gaps.sequence == chain.sequence and gaps.observed.all()
    full = read_structure(DATA / "1orc.pdb", seqres="all")[0]
    assert full.sequence == "ME" + chain.sequence + "KKTTA"
    assert np.array_equal(np.flatnonzero(~full.observed), [0, 1, 66, 67, 68, 69, 70])
    assert (
        np.isnan(full.coords[~full.observed]).all()
        and not np.isnan(full.coords[full.observed][:, 1]).any()
    )


def test_seqres_all_stops_at_terminal_caps(tmp_path, chain):
    """Entity sequences list caps (ACE, NH2) as residues; "all" adds the unmodelled amino acids of
    the termini, not the caps (they would become X)."""
    lines = (DATA / "1orc.pdb").read_text().splitlines(keepends=True)
    names = [n for ln in lines if ln.startswith("SEQRES") for n in ln[19:].split()]
    names = ["ACE", *names, "NH2"]
    seqres = [
        f"SEQRES {i // 13 + 1:3d} A {len(names):4d}  "
        + " ".join(names[i : i + 13]).ljust(51)
        + "\n"
        for i in range(0, len(names), 13)
    ]
    first = next(i for i, ln in enumerate(lines) if ln.startswith("SEQRES"))
    rest = [ln for ln in lines if not ln.startswith("SEQRES")]
    (tmp_path / "capped.pdb").write_text("".join(rest[:first] + seqres + rest[first:]))
    full = read_structure(tmp_path / "capped.pdb", seqres="all")[0]
    assert full.sequence == "ME" + chain.sequence + "KKTTA"


def test_seqres_from_mmcif_entity_sequence(tmp_path):
    """mmCIF: label_seq_id places residues in entity_poly_seq; 1A8O with label_seq 33-38 deleted
    (author 183-188, selenomethionine MSE 185 among them)."""
    whole = read_structure(DATA / "1A8O.cif")[0]
    _cif_without_residues(DATA / "1A8O.cif", tmp_path / "cut.cif", {str(k) for k in range(33, 39)})
    assert len(read_structure(tmp_path / "cut.cif")[0]) == len(whole) - 6
    gaps = read_structure(tmp_path / "cut.cif", seqres="gaps")[0]
    assert whole.sequence[34] == "M"
    assert gaps.sequence == whole.sequence  # the inserted MSE is read as M too
    assert np.array_equal(np.flatnonzero(~gaps.observed), np.arange(32, 38))
    keep = gaps.observed
    assert np.array_equal(gaps.coords[keep], whole.coords[keep], equal_nan=True)
    # the PDB-format file of the same entry, cut the same way, agrees (gemmi aligns it to SEQRES)
    pdb_whole = read_structure(DATA / "1A8O.pdb")[0]
    _pdb_without_residues(
        DATA / "1A8O.pdb", tmp_path / "cut.pdb", set(pdb_whole.residue_ids[32:38])
    )
    pdb_gaps = read_structure(tmp_path / "cut.pdb", seqres="gaps")[0]
    assert pdb_gaps.sequence == gaps.sequence and np.array_equal(pdb_gaps.observed, gaps.observed)


def test_seqres_microheterogeneity_keeps_the_modelled_residue():
    """3JQH: entity position 4 is PRO,SER (the file models PRO at 0.83); "all" puts back the 144
    residues the test file lacks but keeps the modelled choice at each modelled position."""
    modelled = read_structure(DATA / "3JQH.cif")[0]
    full = read_structure(DATA / "3JQH.cif", seqres="all")[0]
    assert len(full) == 167 and int(full.observed.sum()) == len(modelled)
    assert "".join(np.array(list(full.sequence))[full.observed]) == modelled.sequence
    assert full.sequence[:4] == "GELP"


def test_seqres_without_a_deposited_sequence_keeps_the_chain_as_modelled(tmp_path):
    """4hhh_frag.pdb has no SEQRES: the chains come back as modelled, flagged observed=None, and
    prepare counts them in its summary instead of failing."""
    for c in read_structure(DATA / "4hhh_frag.pdb", seqres="all"):
        assert c.observed is None and c.sequence in ("GTCEEM", "AGTCEEM")
    with pytest.raises(OptionError, match="seqres=yes: must be one of off, gaps, all"):
        read_structure(DATA / "1orc.pdb", seqres="yes")  # still a ValueError too


def test_seqres_failure_keeps_the_modelled_chain(monkeypatch, chain):
    """Whatever goes wrong while putting residues back, the file still gives its modelled chain."""
    from coordformer.io import structures

    def broken(*a, **k):
        raise IndexError("odd deposited sequence")

    monkeypatch.setattr(structures, "_insert_unobserved", broken)
    (c,) = read_structure(DATA / "1orc.pdb", seqres="all")
    assert c.observed is None and c.sequence == chain.sequence


def test_prepare_and_embed_with_seqres(tmp_path, chain):
    from coordformer.embed import read_embeddings

    src = tmp_path / "in"
    src.mkdir()
    _pdb_without_residues(DATA / "1orc.pdb", src / "cut.pdb", set(chain.residue_ids[LOOP]))
    shutil.copy(DATA / "4hhh_frag.pdb", src)
    cfg = dict(min_length=1, valid_fraction=0.0, test_fraction=0.0, max_missing_ca=1.0)
    s = prepare([str(src)], tmp_path / "off", PrepareConfig(**cfg), progress=False)
    assert s.n_residues == len(chain) - 8 + 13 and "seqres" not in s.format()
    s = prepare([str(src)], tmp_path / "gaps", PrepareConfig(**cfg, seqres="gaps"), progress=False)
    assert s.n_residues == len(chain) + 13
    assert (s.seqres_residues_inserted, s.seqres_chains_filled, len(s.seqres_unavailable)) == (
        8,
        1,
        2,
    )
    assert (
        "8 unobserved residues put back in 1 chains; 2 chains without a usable deposited sequence"
        in s.format()
    )
    ds = PreparedDataset(tmp_path / "gaps")
    i = ds.index_of("1ORC.A")
    assert ds.sequence(i) == chain.sequence and np.isnan(ds.coords(i)[LOOP]).all()
    assert (
        ds.manifest["config"]["seqres"] == "gaps"
        and ds.manifest["counts"]["seqres_residues_inserted"] == 8
    )
    # an interrupted run cannot be resumed with another seqres mode
    from coordformer.data.prepare import PrepareError

    (tmp_path / "gaps2" / ".work").mkdir(parents=True)
    (tmp_path / "gaps2" / ".work" / "state.json").write_text("{}")
    with pytest.raises(PrepareError):
        prepare([str(src)], tmp_path / "gaps2", PrepareConfig(**cfg, seqres="all"), progress=False)

    out = tmp_path / "e.h5"
    embed(
        "small-coords-sd",
        [str(src / "cut.pdb")],
        out,
        EmbedConfig(per_residue=True, seqres="gaps"),
        progress=False,
        echo=lambda s: None,
    )
    import h5py

    with h5py.File(out) as f:
        assert f["residues/1ORC.A"].shape[0] == len(chain)
        assert f["sequences"][0].decode() == chain.sequence
        has_ca = np.ones(len(chain), bool)
        has_ca[LOOP] = False  # the put-back loop was embedded without coordinates
        assert np.array_equal(f["residue_has_ca/1ORC.A"][()], has_ca)
    ids, _ = read_embeddings(out)
    assert ids == ["1ORC.A"]
