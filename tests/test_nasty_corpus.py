"""A corpus of nasty real-world inputs, prepared in ONE run (issue 7).

One folder (plus sub-folders, to check recursion) holds one small file per case: real fixtures
from tests/data (copied or edited at run time) and synthetic PDB / mmCIF text, next to plainly bad
files. ``prepare`` must finish, keep every good chain (with the length / sequence the reader
documents), log every bad input in skipped.tsv with its reason, and the counts must add up.

Reader behaviour these expectations rely on (coordformer.io.structures.read_structure):

* first model only; per atom the highest-occupancy alternate location; zero occupancy = missing;
* the sequence holds the *observed* residues only (no gap filling from SEQRES; residue_ids keep
  the author numbers, so a gap shows as a jump in the numbering);
* modified residues map to their parent (MSE->M, SEP->S, DAL->A, SEC->C, PYL->K), unknown -> X;
* a chain of linked standard amino acids written entirely as HETATM records is still a protein
  polymer (gemmi classifies the chain by its residues, not by the record name); a lone HETATM
  amino acid, waters, ions and ligands are not protein chains;
* chain ids are case-sensitive ('A' and 'a' are different chains); entry = HEADER id or mmCIF
  block name when that is a PDB / AlphaFold DB id, else the file stem (a made-up name such as
  HEADER 'ZERO' or data_odd is ignored);
* files in folders are picked by suffix; other files (README.txt) and hidden files are ignored,
  not logged.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

from coordformer.config import PrepareConfig
from coordformer.data.prepare import DUPLICATE, MISSING_CA, TOO_SHORT, prepare
from coordformer.data.store import PreparedDataset
from coordformer.io import read_structure

DATA = Path(__file__).parent / "data"
BACKBONE = ("N", "CA", "C", "O")
SIX = ["ALA", "GLY", "SER", "THR", "VAL", "LEU"]  # -> AGSTVL


# ----------------------------------------------------------------------------------------------
# writing PDB / mmCIF text
# ----------------------------------------------------------------------------------------------


def atom_line(
    serial, name, resn, chain, num, xyz, het=False, icode=" ", alt=" ", occ=1.0, b=20.0
) -> str:
    rec = "HETATM" if het else "ATOM  "
    x, y, z = xyz
    return (
        f"{rec}{serial:5d} {name:<4}{alt}{resn:>3} {chain}{num:4d}{icode}   "
        f"{x:8.3f}{y:8.3f}{z:8.3f}{occ:6.2f}{b:6.2f}          {name[0]:>2}"
    )


def xyz_of(i: int, k: int, offset: float = 0.0) -> tuple[float, float, float]:
    """Position of backbone atom k of the i-th residue written (distinct for every atom)."""
    return (3.8 * i + 0.5 * k + offset, 1.0 * k + 0.1 * i, 0.25 * i)


def pdb_chain(
    chain, resns, nums=None, het=False, start=1, offset=0.0, occ=None, alts=None
) -> list[str]:
    """ATOM lines for N, CA, C, O of each residue; ``occ[i]`` may be a float or a 4-tuple."""
    nums = list(nums) if nums is not None else list(range(1, len(resns) + 1))
    out, serial = [], start
    for i, (resn, num) in enumerate(zip(resns, nums)):
        o = occ[i] if occ is not None else 1.0
        for k, a in enumerate(BACKBONE):
            ok = o[k] if isinstance(o, tuple) else o
            alt = alts[i] if alts is not None else " "
            out.append(
                atom_line(
                    serial, a, resn, chain, num, xyz_of(i, k, offset), het=het, alt=alt, occ=ok
                )
            )
            serial += 1
    return out


def pdb_text(*blocks: list[str], header: str | None = None) -> str:
    lines = [f"HEADER    {'TEST':<40}01-JAN-00   {header}"] if header else []
    for blk in blocks:
        lines += blk + ["TER"]
    return "\n".join(lines + ["END"]) + "\n"


def cif_text(block: str, chains: list[tuple[str, list[str]]], het: bool = False) -> str:
    cols = (
        "group_PDB id type_symbol label_atom_id label_alt_id label_comp_id label_asym_id "
        "label_entity_id label_seq_id pdbx_PDB_ins_code Cartn_x Cartn_y Cartn_z occupancy "
        "B_iso_or_equiv auth_seq_id auth_asym_id pdbx_PDB_model_num"
    ).split()
    lines = [f"data_{block}", "loop_"] + [f"_atom_site.{c}" for c in cols]
    serial = 1
    for n, (auth, resns) in enumerate(chains):
        label = "ABCDEFGH"[n]
        for i, resn in enumerate(resns):
            for k, a in enumerate(BACKBONE):
                x, y, z = xyz_of(i, k, 50.0 * n)
                rec = "HETATM" if het else "ATOM"
                lines.append(
                    f"{rec} {serial} {a[0]} {a} . {resn} {label} {n + 1} {i + 1} ? "
                    f"{x:.3f} {y:.3f} {z:.3f} 1.00 20.00 {i + 1} {auth} 1"
                )
                serial += 1
    return "\n".join(lines + ["#"]) + "\n"


# ----------------------------------------------------------------------------------------------
# the corpus
# ----------------------------------------------------------------------------------------------

# good files: relative path -> {chain id: (length, sequence or None)}
GOOD: dict[str, dict[str, tuple[int, str | None]]] = {
    # multi-model NMR (3 models; chains B, C are DNA). No HEADER: the entry is the file stem.
    "nmr_1lcd.pdb": {"nmr_1lcd.A": (51, "MKPVTLYDVAEYAGVSYQTVSRVVNQASHVSAKTREKVEAAMAELNYIPNR")},
    # alternate locations (CA of CYS 247 A 0.70 / B 0.30), two short chains, no SEQRES
    "altloc_4hhh.pdb": {"4HHH.C": (6, "GTCEEM"), "4HHH.D": (7, "AGTCEEM")},
    # point-mutation microheterogeneity with altlocs: one residue per number
    "microhet_3jqh.cif": {"3JQH.A": (23, "PEKSKLQEIYQELTRLKAAVGEL")},
    # insertion codes 56A-56E
    "icode_1orc.pdb": {"1ORC.A": (64, None)},
    # gzipped, CA atoms only (N, C, O missing -> NaN)
    "ca_only_1lzh.pdb.gz": {"1LZH.A": (129, None), "1LZH.B": (129, None)},
    # MSE (non-standard, parent from _pdbx_struct_mod_residue), ligands and waters
    "mse_5i55.cif": {"5I55.A": (22, "MEFVAKLFKFFKDLLGKFLGNN")},
    # 1A8O (MSE as HETATM in the chain) with CRLF line endings
    "crlf_1a8o.pdb": {"1A8O.A": (70, None)},
    # synthetic cases
    "zero_occ.pdb": {
        "zero_occ.A": (6, "AGSTVL")
    },  # HEADER id 'ZERO' is not a PDB id: the file stem
    # every atom at occupancy 0 (VMD and other tools write 0.00 when they know none): read as
    # unknown occupancy, not as nothing observed
    "all_zero_occ.pdb": {"all_zero_occ.A": (6, "AGSTVL")},
    "gap.pdb": {"gap.A": (10, "AGSTVAGSTV")},
    "dup_numbers.pdb": {"dup_numbers.A": (6, "AGSTVL")},
    "nonstd.pdb": {"nonstd.A": (8, "AXASXCKM")},
    "hetatm_peptide.pdb": {"hetatm_peptide.A": (6, "AGSTVL")},
    "hetatm_peptide.cif": {"9HPC.A": (6, "AGSTVL")},  # block name data_9hpc (a PDB id)
    "waters_in_chain.pdb": {"waters_in_chain.A": (6, "AGSTVL")},
    "lower_ids.pdb": {"lower_ids.A": (6, "AGSTVL"), "lower_ids.a": (5, "GSTVL")},
    "odd_ids.cif": {
        "odd_ids.A": (6, "AGSTVL"),
        "odd_ids.a": (5, "AGSTV"),
        "odd_ids.AA": (7, "AGSTVLA"),
        "odd_ids.x1": (8, "AGSTVLAG"),
    },  # block name data_odd is not a PDB id: the file stem
    "crlf.pdb": {"crlf.A": (6, "AGSTVL")},
    "cr_only.pdb": {"cr_only.A": (6, "AGSTVL")},
    "crlf.cif": {
        "crlf.B": (6, "AGSTVL")
    },  # block data_crlf_cif ignored; crlf.pdb has chain A, so no clash
    "mixed.pdb": {"mixed.A": (6, "AGSTVL")},  # chain B is too short: filtered, see FILTERED
    # sub-folders (recursion), including a chain_set JSONL file
    "sub/set.jsonl": {"1A2X.B": (31, None), "1AIE.A": (31, None), "1AJJ.A": (37, None)},
    "sub/deeper/blank_chain.pdb": {"blank_chain.": (6, "AGSTVL")},  # blank PDB chain id
}

# chains that are read but filtered: chain id -> category (first word(s) of the reason)
FILTERED = {
    "no_ca.A": MISSING_CA,  # every CA at occupancy 0 (the other atoms observed) -> all CA missing
    "mixed.B": TOO_SHORT,  # 3 residues < min_length 5
    "1A8O.A": DUPLICATE,  # sub/1a8o_copy.cif repeats crlf_1a8o.pdb (sorted first: kept)
}
FILTERED_FILES = {"no_ca.pdb": ["no_ca.A"], "sub/1a8o_copy.cif": ["1A8O.A"]}

# bad files: relative path -> substring of the reason in skipped.tsv
BAD = {
    "empty.pdb": "empty file",
    "blank.cif": "empty file",
    "truncated.pdb.gz": "gzip",
    "junk.cif": "binary",
    "junk_text.cif": "parse error",
    "waters_ligands.pdb": "no protein chain",
    "ions.pdb": "no protein chain",
    "dna_only.pdb": "no protein chain",
    "sub/truncated.cif": "parse error",
    "sub/bad_coords.pdb": "non-numeric",
}

#: not sources: not read, but each named in skipped.tsv with the reason (issue 20, item 8)
IGNORED = {
    "README.txt": "neither PDB nor mmCIF",
    ".hidden.pdb": "hidden",
    "sub/notes.md": "neither PDB nor mmCIF",
}


def build_corpus(root: Path) -> Path:
    d = root / "corpus"
    (d / "sub" / "deeper").mkdir(parents=True)
    files: dict[str, bytes | str] = {}

    # real fixtures, copied or edited
    files["nmr_1lcd.pdb"] = (DATA / "1LCD.pdb").read_bytes()
    files["altloc_4hhh.pdb"] = (DATA / "4hhh_frag.pdb").read_bytes()
    files["microhet_3jqh.cif"] = (DATA / "3JQH.cif").read_bytes()
    files["icode_1orc.pdb"] = (DATA / "1orc.pdb").read_bytes()
    files["ca_only_1lzh.pdb.gz"] = (DATA / "1lzh.pdb.gz").read_bytes()
    files["mse_5i55.cif"] = (DATA / "5i55.cif").read_bytes()
    files["crlf_1a8o.pdb"] = (
        (DATA / "1A8O.pdb").read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    )
    files["sub/1a8o_copy.cif"] = (DATA / "1A8O.cif").read_bytes()
    files["sub/set.jsonl"] = (DATA / "chain_set_small.jsonl").read_bytes()

    # zero occupancy: residue 3 entirely, residue 4 only its CA
    occ = [1.0, 1.0, 0.0, (1.0, 0.0, 1.0, 1.0), 1.0, 1.0]
    files["zero_occ.pdb"] = pdb_text(pdb_chain("A", SIX, occ=occ), header="ZERO")
    files["all_zero_occ.pdb"] = pdb_text(pdb_chain("A", SIX, occ=[0.0] * 6))
    files["no_ca.pdb"] = pdb_text(pdb_chain("A", SIX, occ=[(1.0, 0.0, 1.0, 1.0)] * 6))
    # residues 6-14 missing in the middle (no SEQRES)
    files["gap.pdb"] = pdb_text(
        pdb_chain("A", SIX[:5] * 2, nums=[1, 2, 3, 4, 5, 15, 16, 17, 18, 19])
    )
    # duplicate residue number 3 (SER 3, THR 3), no alternate locations: a numbering error
    files["dup_numbers.pdb"] = pdb_text(pdb_chain("A", SIX, nums=[1, 2, 3, 3, 4, 5]))
    files["nonstd.pdb"] = pdb_text(
        pdb_chain("A", ["ALA", "UNK", "DAL", "SEP", "ZZZ", "SEC", "PYL", "MSE"])
    )
    files["hetatm_peptide.pdb"] = pdb_text(pdb_chain("A", SIX, het=True))
    files["hetatm_peptide.cif"] = cif_text("9hpc", [("A", SIX)], het=True)
    waters = [
        atom_line(900 + i, "O", "HOH", "A", 101 + i, (0.0, 5.0 * i, 9.0), het=True)
        for i in range(3)
    ]
    heme = [
        atom_line(950, "FE", "HEM", "C", 1, (9.0, 9.0, 9.0), het=True),
        atom_line(951, "NA", "HEM", "C", 1, (9.0, 8.0, 9.0), het=True),
    ]
    free_ala = pdb_chain("B", ["ALA"], het=True, start=960, offset=30.0)  # a lone HETATM amino acid
    files["waters_in_chain.pdb"] = pdb_text(pdb_chain("A", SIX) + waters, free_ala, heme)
    files["lower_ids.pdb"] = pdb_text(
        pdb_chain("A", SIX), pdb_chain("a", SIX[1:], start=100, offset=40.0)
    )
    odd = [("A", SIX), ("a", SIX[:5]), ("AA", SIX + ["ALA"]), ("x1", SIX + ["ALA", "GLY"])]
    files["odd_ids.cif"] = cif_text("odd", odd)
    lf = pdb_text(pdb_chain("A", SIX))
    files["crlf.pdb"] = lf.replace("\n", "\r\n")
    files["cr_only.pdb"] = lf.replace("\n", "\r")
    files["crlf.cif"] = cif_text("crlf_cif", [("B", SIX)]).replace("\n", "\r\n")
    files["mixed.pdb"] = pdb_text(
        pdb_chain("A", SIX), pdb_chain("B", ["GLY", "ALA", "SER"], start=100, offset=40.0)
    )
    files["sub/deeper/blank_chain.pdb"] = pdb_text(pdb_chain(" ", SIX))

    # plainly bad files
    one_a8o = (DATA / "1A8O.pdb").read_text()
    cif = (DATA / "1A8O.cif").read_text()
    files["empty.pdb"] = b""
    files["blank.cif"] = b"  \r\n\n\t\n"
    files["truncated.pdb.gz"] = (DATA / "1lzh.pdb.gz").read_bytes()[:3000]
    files["junk.cif"] = bytes((i * 131 + 7) % 256 for i in range(2048))  # binary, has NUL bytes
    files["junk_text.cif"] = "hello\nthis is not 'a structure\n"
    files["waters_ligands.pdb"] = "\n".join(waters + heme) + "\nEND\n"
    files["ions.pdb"] = (DATA / "ions.pdb").read_bytes()
    files["dna_only.pdb"] = "".join(
        ln
        for ln in (DATA / "1LCD.pdb").read_text().splitlines(True)
        if not (ln.startswith(("ATOM", "HETATM")) and ln[21] == "A")
    )
    row = cif.index("\nATOM ", cif.index("\nATOM ") + 3000) + 1
    files["sub/truncated.cif"] = cif[: row + 20]  # cut inside an _atom_site row
    line = next(ln for ln in one_a8o.splitlines(True) if ln.startswith("ATOM"))
    files["sub/bad_coords.pdb"] = one_a8o.replace(line, line[:30] + "  abc.de" + line[38:])

    # not sources at all
    files["README.txt"] = "notes about this corpus\n"
    files[".hidden.pdb"] = pdb_text(pdb_chain("A", SIX))
    files["sub/notes.md"] = "# notes\n"

    tables = [set(GOOD), set(BAD), set(FILTERED_FILES), set(IGNORED)]
    assert set(files) == set().union(*tables) and sum(map(len, tables)) == len(
        files
    )  # each file in one table
    for rel, content in files.items():
        p = d / rel
        if isinstance(content, str):
            p.write_bytes(content.encode())  # write_text would translate "\n" on some platforms
        else:
            p.write_bytes(content)
    return d


def read_tsv_rows(path: Path, header: str) -> list[list[str]]:
    lines = path.read_text().splitlines()
    assert lines[0] == header
    return [ln.split("\t") for ln in lines[1:]]


# ----------------------------------------------------------------------------------------------
# tests
# ----------------------------------------------------------------------------------------------


def test_nasty_corpus_prepares_in_one_run(tmp_path):
    corpus = build_corpus(tmp_path)
    out = tmp_path / "ds"
    summary = prepare(
        [corpus],
        out,
        PrepareConfig(min_length=5, split="random", seed=0),
        workers=1,
        progress=False,
    )

    res = {rel: str((corpus / rel).resolve()) for rel in [*GOOD, *BAD, *FILTERED_FILES]}
    ds = PreparedDataset(out)

    # -- every good chain is in the dataset, with the documented length / sequence, and nothing else
    expected = {
        cid: (rel, L, seq) for rel, chains in GOOD.items() for cid, (L, seq) in chains.items()
    }
    assert sorted(ds.ids) == sorted(expected)
    assert len(ds.ids) == len(set(ds.ids))
    for cid, (rel, L, seq) in expected.items():
        i = ds.ids.index(cid)
        assert int(ds.lengths[i]) == L, cid
        assert len(ds.sequence(i)) == L, cid
        if seq is not None:
            assert ds.sequence(i) == seq, cid
        src = ds.source(i)
        if rel.endswith(".jsonl"):  # chain_set records name their line: PATH:LINE
            src, line = src.rsplit(":", 1)
            assert line.isdigit(), ds.source(i)
        assert str(Path(src).resolve()) == res[rel], cid
        assert ds.coords(i).shape == (L, 4, 3)
    # the kept copy of 1A8O is the first one in path order (CRLF file), not the sub-folder duplicate
    assert str(Path(ds.source(ds.ids.index("1A8O.A"))).resolve()) == res["crlf_1a8o.pdb"]
    # 'A' and 'a' are two chains with different coordinates
    xa, xl = ds.coords(ds.ids.index("lower_ids.A")), ds.coords(ds.ids.index("lower_ids.a"))
    np.testing.assert_allclose(
        xl, xa[:5] + np.array([40.0, 0.0, 0.0], dtype=np.float32), atol=1e-3
    )  # 'a' written 40 A away

    # -- CA-only chains: CA present, N / C / O missing
    for cid in ("1LZH.A", "1LZH.B"):
        x = ds.coords(ds.ids.index(cid))
        assert np.isfinite(x[:, 1]).all()
        assert np.isnan(x[:, [0, 2, 3]]).all()

    # -- zero occupancy: residue 3 fully missing, residue 4 lacks only its CA; written coords kept
    x = ds.coords(ds.ids.index("zero_occ.A"))
    assert np.isnan(x[2]).all()
    assert np.isnan(x[3, 1]).all() and np.isfinite(x[3, [0, 2, 3]]).all()
    np.testing.assert_allclose(x[0, 1], xyz_of(0, 1), atol=1e-3)
    np.testing.assert_allclose(x[5, 3], xyz_of(5, 3), atol=1e-3)

    # -- gap: only the 10 observed residues, all atoms present, coordinates in file order
    x = ds.coords(ds.ids.index("gap.A"))
    assert np.isfinite(x).all()
    np.testing.assert_allclose(x[:, 1], [xyz_of(i, 1) for i in range(10)], atol=1e-3)

    # -- duplicate residue number: both residues numbered 3 are kept, in file order
    x = ds.coords(ds.ids.index("dup_numbers.A"))
    np.testing.assert_allclose(x[:, 1], [xyz_of(i, 1) for i in range(6)], atol=1e-3)

    # -- CRLF / CR-only / LF files give the same coordinates
    for cid in ("crlf.A", "cr_only.A", "hetatm_peptide.A", "mixed.A"):
        np.testing.assert_allclose(
            ds.coords(ds.ids.index(cid)),
            np.array([[xyz_of(i, k) for k in range(4)] for i in range(6)]),
            atol=1e-3,
        )

    # -- skipped.tsv: every bad input with its reason, every filtered chain with its category
    rows = read_tsv_rows(out / "skipped.tsv", "input\treason")
    assert all(len(r) == 2 for r in rows)
    by_input: dict[str, list[str]] = {}
    for inp, reason in rows:
        by_input.setdefault(inp, []).append(reason)
    for rel, why in BAD.items():
        hits = [
            reason
            for inp, reasons in by_input.items()
            for reason in reasons
            if str(Path(inp).resolve()) == res[rel]
        ]
        assert len(hits) == 1, (rel, by_input)
        assert why in hits[0], (rel, hits[0])
    for cid, category in FILTERED.items():
        hits = [
            (inp, r)
            for inp, reasons in by_input.items()
            for r in reasons
            if inp.startswith(f"{cid} [")
        ]
        assert len(hits) == 1, (cid, hits)
        assert hits[0][1].startswith(f"{category}:"), hits
    for rel, cids in FILTERED_FILES.items():
        assert any(inp == f"{cids[0]} [{res[rel]}]" for inp in by_input), rel
    assert len(rows) == len(BAD) + len(FILTERED) + len(IGNORED)
    for rel, why in IGNORED.items():
        (reason,) = by_input[str(corpus / rel)]
        assert why in reason, (rel, reason)
        assert not any(ds.source(i).endswith(rel.split("/")[-1]) for i in range(len(ds)))

    # -- counts add up (summary, manifest, chains.tsv, splits)
    n_sources = len(GOOD) + len(BAD) + len(FILTERED_FILES)
    assert summary.n_sources == n_sources
    assert summary.n_units == n_sources  # one unit per file; the 3-record JSONL is one chunk
    assert summary.inputs_skipped == len(BAD) + len(IGNORED)
    assert summary.chains_filtered == {TOO_SHORT: 1, MISSING_CA: 1, DUPLICATE: 1}
    assert summary.chains_kept == len(expected) == len(ds)
    assert summary.chains_read == summary.chains_kept + sum(summary.chains_filtered.values())
    assert summary.chains_read == len(expected) + len(FILTERED)
    assert summary.n_skipped == len(rows)
    assert summary.n_residues == sum(L for _, L, _ in expected.values()) == int(ds.lengths.sum())
    assert sum(summary.splits.values()) == summary.chains_kept
    manifest = json.loads((out / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["sources"] == n_sources
    assert counts["chains_read"] == summary.chains_read
    assert counts["chains_kept"] == summary.chains_kept == manifest["n_chains"]
    assert counts["inputs_skipped"] == summary.inputs_skipped
    assert counts["chains_filtered"] == summary.chains_filtered
    assert counts["chains_read"] == counts["chains_kept"] + sum(counts["chains_filtered"].values())
    assert manifest["n_residues"] == summary.n_residues
    assert sum(manifest["splits"].values()) == manifest["n_chains"]
    chains_tsv = read_tsv_rows(out / "chains.tsv", "id\tlength\tsource")
    assert [r[0] for r in chains_tsv] == ds.ids
    assert sorted(r[0] for r in chains_tsv) == sorted(expected)
    split_ids = [
        cid
        for name in ("train", "valid", "test")
        for cid in (out / "splits" / f"{name}.txt").read_text().split()
    ]
    assert sorted(split_ids) == sorted(expected)


def _write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode())
    return path


def _same_chain(a, b) -> None:
    assert a.id == b.id and a.sequence == b.sequence and a.residue_ids == b.residue_ids
    np.testing.assert_array_equal(a.coords, b.coords)
    np.testing.assert_array_equal(a.b_factors, b.b_factors)


def test_duplicate_numbers_lowercase_ids_and_line_endings(tmp_path):
    # duplicate residue numbers without alternate locations: a numbering error, both residues kept
    (c,) = read_structure(
        _write(tmp_path / "dup.pdb", pdb_text(pdb_chain("A", SIX, nums=[1, 2, 3, 3, 4, 5])))
    )
    assert c.sequence == "AGSTVL"
    assert c.residue_ids == ["1", "2", "3", "3", "4", "5"]
    np.testing.assert_allclose(c.coords[3, 1], xyz_of(3, 1), atol=1e-3)
    # the same with alternate locations (B 0.6 > A 0.4) is point-mutation microheterogeneity: one
    # residue
    occ = [1.0, 1.0, 0.4, 0.6, 1.0, 1.0]
    alts = [" ", " ", "A", "B", " ", " "]
    (m,) = read_structure(
        _write(
            tmp_path / "mh.pdb",
            pdb_text(pdb_chain("A", SIX, nums=[1, 2, 3, 3, 4, 5], occ=occ, alts=alts)),
        )
    )
    assert m.sequence == "AGTVL" and m.residue_ids == ["1", "2", "3", "4", "5"]
    np.testing.assert_allclose(m.coords[2, 1], xyz_of(3, 1), atol=1e-3)
    # numbering that restarts within a chain id with no peptide bond across the restart (these
    # residues are 3.4 A apart, C to N): two chains written under one id, every residue kept
    r = read_structure(
        _write(
            tmp_path / "restart.pdb",
            pdb_text(pdb_chain("A", SIX + SIX[:2], nums=[1, 2, 3, 4, 1, 2, 3, 4])),
        )
    )
    assert [(x.id, x.sequence) for x in r] == [("restart.A", "AGST"), ("restart.A2", "VLAG")]
    assert r[1].residue_ids == ["1", "2", "3", "4"]

    # lowercase / multi-character chain ids stay distinct, case-sensitively
    chains = read_structure(
        _write(
            tmp_path / "ids.pdb",
            pdb_text(pdb_chain("a", SIX), pdb_chain("A", SIX[:5], start=50, offset=40.0)),
        )
    )
    assert [(x.id, x.sequence) for x in chains] == [("ids.a", "AGSTVL"), ("ids.A", "AGSTV")]
    np.testing.assert_allclose(chains[1].coords[0, 1], xyz_of(0, 1, 40.0), atol=1e-3)
    assert [x.id for x in read_structure(tmp_path / "ids.pdb", chains=["a"])] == ["ids.a"]
    chains = read_structure(
        _write(
            tmp_path / "ids.cif",
            cif_text("ids2", [("A", SIX), ("a", SIX), ("aA", SIX), ("1", SIX)]),
        )
    )
    assert [x.id for x in chains] == [
        "ids.A",
        "ids.a",
        "ids.aA",
        "ids.1",
    ]  # data_ids2 is not a PDB id: file stem
    assert chains[0].ignored_entry == "ids2"

    # CRLF (and CR-only) line endings give exactly the chain of the LF file
    for src, name in (
        (DATA / "1A8O.pdb", "1a8o"),
        (DATA / "4hhh_frag.pdb", "4hhh"),
        (DATA / "1A8O.cif", "1a8o_cif"),
    ):
        suffix = src.suffix
        lf = src.read_bytes().replace(b"\r\n", b"\n")
        ref = read_structure(_write(tmp_path / f"{name}_lf{suffix}", lf.decode()))
        for kind, eol in (("crlf", b"\r\n"), ("cr", b"\r")):
            p = tmp_path / f"{name}_{kind}{suffix}"
            p.write_bytes(lf.replace(b"\n", eol))
            got = read_structure(p)
            assert len(got) == len(ref), (name, kind)
            for a, b in zip(got, ref):
                _same_chain(a, b)
    # gzipped CRLF as well
    gz = tmp_path / "syn_crlf.pdb.gz"
    gz.write_bytes(gzip.compress(pdb_text(pdb_chain("A", SIX)).replace("\n", "\r\n").encode()))
    (g,) = read_structure(gz)
    (lf_chain,) = read_structure(_write(tmp_path / "syn_crlf.pdb", pdb_text(pdb_chain("A", SIX))))
    _same_chain(g, lf_chain)
