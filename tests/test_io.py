"""Tests for coordformer.io: PDB/mmCIF reading (gemmi) and chain_set JSONL I/O.

Fixtures in tests/data/ are real PDB entries (see tests/data/SOURCES.md).
"""

from __future__ import annotations

import ast
import gzip
import json
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from coordformer.io import (
    STRUCTURE_SUFFIXES,
    Chain,
    StructureReadError,
    count_lines,
    find_sources,
    is_chain_set,
    iter_chain_set,
    iter_chain_set_lines,
    normalize_chain_id,
    read_id_list,
    read_structure,
    write_chain_set,
)

DATA = Path(__file__).parent / "data"

# Independent of the implementation: standard residues plus the modified ones in the fixtures.
THREE_TO_ONE = {
    "ALA": "A", "ARG": "R", "ASN": "N", "ASP": "D", "CYS": "C", "GLN": "Q", "GLU": "E",
    "GLY": "G", "HIS": "H", "ILE": "I", "LEU": "L", "LYS": "K", "MET": "M", "PHE": "F",
    "PRO": "P", "SER": "S", "THR": "T", "TRP": "W", "TYR": "Y", "VAL": "V", "MSE": "M",
}  # fmt: skip


def seqres(path: Path, chain: str) -> str:
    """One-letter sequence from the SEQRES records of a PDB file."""
    names = []
    for line in path.read_text().splitlines():
        if line.startswith("SEQRES") and line[11] == chain:
            names += line[19:].split()
    return "".join(THREE_TO_ONE[n] for n in names)


def pdb_atoms(text: str, chain: str, atom: str, model: int = 1) -> dict[str, np.ndarray]:
    """{residue id: xyz} of one atom name in one MODEL of PDB text, parsed by hand."""
    current, out = 1, {}
    for line in text.splitlines():
        if line.startswith("MODEL"):
            current = int(line[10:14])
        elif line.startswith(("ATOM  ", "HETATM")) and current == model:
            if line[21] == chain and line[12:16].strip() == atom:
                rid = line[22:27].strip()
                out.setdefault(
                    rid, np.array([float(line[30:38]), float(line[38:46]), float(line[46:54])])
                )
    return out


def replace_line(text: str, pattern: str, repl) -> str:
    """Apply ``repl`` to each line matching ``pattern`` (asserts that at least one matched)."""
    lines = text.splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if re.search(pattern, line)]
    assert hits, pattern
    for i in hits:
        lines[i] = repl(lines[i])
    return "".join(lines)


# --------------------------------------------------------------------------- structures


def test_mmcif_chain_shapes_sequence_and_ids():
    (chain,) = read_structure(DATA / "1A8O.cif")
    assert isinstance(chain, Chain)
    assert chain.id == "1A8O.A"
    assert chain.source == str(DATA / "1A8O.cif")
    assert chain.coords.shape == (70, 4, 3) and chain.coords.dtype == np.float32
    assert chain.b_factors.shape == (70,) and chain.b_factors.dtype == np.float32
    assert len(chain) == 70
    # every residue of the SEQRES is observed in 1A8O; MSE counts as M
    assert chain.sequence == seqres(DATA / "1A8O.pdb", "A")
    assert chain.residue_ids[:2] == ["151", "152"] and chain.residue_ids[-1] == "220"
    assert chain.atom_mask.shape == (70, 4) and chain.atom_mask.all()
    assert chain.b_factors[0] == pytest.approx(18.64, abs=1e-3)  # CA of MSE 151


def test_pdb_and_mmcif_of_the_same_entry_agree():
    (p,) = read_structure(DATA / "1A8O.pdb")
    (c,) = read_structure(DATA / "1A8O.cif")
    assert p.id == c.id == "1A8O.A"
    assert p.sequence == c.sequence
    assert p.residue_ids == c.residue_ids
    np.testing.assert_array_equal(p.coords, c.coords)
    np.testing.assert_array_equal(p.b_factors, c.b_factors)
    # spot check against the file text: CA of ASP 152
    ca = pdb_atoms((DATA / "1A8O.pdb").read_text(), "A", "CA")
    np.testing.assert_allclose(p.coords[1, 1], ca["152"], atol=1e-3)


def test_modified_residue_mse_maps_to_met_and_keeps_coordinates():
    (chain,) = read_structure(DATA / "1A8O.pdb")  # MSE are HETATM records here
    for rid in ("151", "185", "214", "215"):
        i = chain.residue_ids.index(rid)
        assert chain.sequence[i] == "M"
        assert chain.atom_mask[i].all()
    (c2,) = read_structure(DATA / "5i55.cif")  # MSE 1, parent from _pdbx_struct_mod_residue
    assert c2.sequence == "MEFVAKLFKFFKDLLGKFLGNN"


def test_unknown_residue_uses_modres_parent_else_x(tmp_path):
    text = (DATA / "1A8O.pdb").read_text().replace("MSE", "QQQ")  # a name gemmi does not know
    with_modres = tmp_path / "modres.pdb"
    with_modres.write_text(text)
    (c,) = read_structure(with_modres)
    assert c.sequence == seqres(DATA / "1A8O.pdb", "A")  # QQQ -> MET via MODRES
    no_modres = tmp_path / "nomodres.pdb"
    no_modres.write_text("".join(l for l in text.splitlines(True) if not l.startswith("MODRES")))
    (c,) = read_structure(no_modres)
    i = c.residue_ids.index("185")
    assert c.sequence[i] == "X" and c.sequence.count("X") == 4


def test_nmr_first_model_only_and_dna_chains_skipped():
    path = DATA / "1LCD.pdb"  # 3 models; chain A protein, chains B and C DNA
    chains = read_structure(path)
    assert [c.id for c in chains] == ["1LCD.A"]  # no HEADER: entry from the file name
    (chain,) = chains
    assert chain.sequence == seqres(path, "A")
    text = path.read_text()
    model1 = pdb_atoms(text, "A", "CA", model=1)
    model2 = pdb_atoms(text, "A", "CA", model=2)
    expected = np.stack([model1[r] for r in chain.residue_ids])
    np.testing.assert_allclose(chain.coords[:, 1], expected, atol=1e-3)
    other = np.stack([model2[r] for r in chain.residue_ids])
    assert np.abs(chain.coords[:, 1] - other).max() > 0.5


def test_altloc_highest_occupancy_wins(tmp_path):
    path = DATA / "4hhh_frag.pdb"  # CA of CYS C 247: altloc A occ 0.70, altloc B occ 0.30
    chain = {c.id: c for c in read_structure(path)}["4HHH.C"]
    i = chain.residue_ids.index("247")
    np.testing.assert_allclose(chain.coords[i, 1], [15.167, -87.760, -1.390], atol=1e-3)
    # swap the occupancies: now altloc B (second in the file) must be chosen
    text = path.read_text()
    text = replace_line(text, r"^ATOM.{9}CA ACYS C 247", lambda l: l[:54] + "  0.30" + l[60:])
    text = replace_line(text, r"^ATOM.{9}CA BCYS C 247", lambda l: l[:54] + "  0.70" + l[60:])
    swapped = tmp_path / "4hhh_swapped.pdb"
    swapped.write_text(text)
    chain = {c.id: c for c in read_structure(swapped)}["4HHH.C"]
    np.testing.assert_allclose(chain.coords[i, 1], [15.096, -87.747, -1.318], atol=1e-3)
    assert chain.b_factors[i] == pytest.approx(2.0)


def test_microheterogeneity_picks_highest_occupancy_residue(tmp_path):
    path = DATA / "3JQH.cif"  # residue 1: PRO (0.83) / SER (0.17); residue 15: ARG/GLN/GLU
    (chain,) = read_structure(path)
    assert len(chain.residue_ids) == len(set(chain.residue_ids)) == 23
    assert chain.sequence[chain.residue_ids.index("1")] == "P"
    assert chain.sequence[chain.residue_ids.index("15")] == "R"
    np.testing.assert_allclose(chain.coords[0, 1], [3.746, 20.507, 21.289], atol=1e-3)
    text = path.read_text()
    text = replace_line(text, r"^ATOM .* A PRO A 1 ", lambda l: l.replace(" 0.83 ", " 0.13 "))
    text = replace_line(text, r"^ATOM .* B SER A 1 ", lambda l: l.replace(" 0.17 ", " 0.87 "))
    swapped = tmp_path / "3jqh_swapped.cif"
    swapped.write_text(text)
    (chain,) = read_structure(swapped)
    assert chain.sequence[0] == "S"
    np.testing.assert_allclose(chain.coords[0, 1], [3.772, 20.496, 21.302], atol=1e-3)


def test_insertion_codes_kept_in_file_order():
    path = DATA / "1orc.pdb"  # Cro K56-[DGEVK] insertion mutant: 56, 56A .. 56E, 57
    (chain,) = read_structure(path)
    i = chain.residue_ids.index("56")
    assert chain.residue_ids[i : i + 7] == ["56", "56A", "56B", "56C", "56D", "56E", "57"]
    assert chain.sequence[i + 1 : i + 6] == "DGEVK"
    assert chain.sequence in seqres(path, "A")  # observed part of the SEQRES, in order
    assert len(chain) == 64


def test_gzip_and_missing_atoms_are_nan():
    chains = read_structure(DATA / "1lzh.pdb.gz")  # 6 A lysozyme model: CA atoms only
    assert [c.id for c in chains] == ["1LZH.A", "1LZH.B"]
    for c in chains:
        assert len(c) == 129
        assert c.sequence.startswith("KVFGRCELAAAMKRHGLDNYRGYSLGNWVCAAKFESNFNTQATNR")
        mask = c.atom_mask
        assert mask[:, 1].all() and not mask[:, [0, 2, 3]].any()
        assert np.isnan(c.coords[:, [0, 2, 3]]).all() and np.isfinite(c.coords[:, 1]).all()


def test_gzipped_mmcif_and_content_sniffing(tmp_path):
    (ref,) = read_structure(DATA / "1A8O.cif")
    gz = tmp_path / "1a8o.cif.gz"
    gz.write_bytes(gzip.compress((DATA / "1A8O.cif").read_bytes()))
    renamed = tmp_path / "download.txt"  # no known suffix: sniffed as PDB
    shutil.copy(DATA / "1A8O.pdb", renamed)
    mislabelled = tmp_path / "actually_cif.pdb"  # mmCIF content with a .pdb name
    shutil.copy(DATA / "1A8O.cif", mislabelled)
    for path in (gz, renamed, mislabelled):
        (c,) = read_structure(path)
        assert c.id == "1A8O.A" and c.sequence == ref.sequence
        np.testing.assert_array_equal(c.coords, ref.coords)


def test_zero_occupancy_and_residue_without_ca(tmp_path):
    text = (DATA / "1A8O.pdb").read_text()
    text = replace_line(text, r"^ATOM.{9}CA  ASP A 152", lambda l: l[:54] + "  0.00" + l[60:])
    text = "".join(l for l in text.splitlines(True) if not re.match(r"^ATOM.{9}CA  ILE A 153", l))
    path = tmp_path / "edited.pdb"
    path.write_text(text)
    (c,) = read_structure(path)
    assert len(c) == 70  # both residues still count
    for rid in ("152", "153"):
        i = c.residue_ids.index(rid)
        assert np.isnan(c.coords[i, 1]).all() and np.isnan(c.b_factors[i])
        assert c.atom_mask[i].tolist() == [True, False, True, True]
    assert c.atom_mask.sum() == 70 * 4 - 2


def test_unknown_occupancy_question_mark_counts_as_present(tmp_path):
    text = (DATA / "1A8O.cif").read_text()
    first = text[text.index("\nATOM ") + 1 :].split("\n", 1)[0]  # N of MSE 151, occupancy 1.00
    assert " 1.00 18.03 " in first
    path = tmp_path / "unknown_occ.cif"
    path.write_text(text.replace(first, first.replace(" 1.00 18.03 ", " ? 18.03 "), 1))
    (c,) = read_structure(path)
    assert c.atom_mask[0, 0]
    np.testing.assert_allclose(c.coords[0, 0], [19.594, 32.367, 28.012], atol=1e-3)


def test_chain_filter(tmp_path):
    (b,) = read_structure(DATA / "1lzh.pdb.gz", chains=["B"])
    assert b.id == "1LZH.B"
    assert [c.id for c in read_structure(DATA / "1lzh.pdb.gz", chains="A")] == ["1LZH.A"]
    with pytest.raises(StructureReadError, match="requested chains"):
        read_structure(DATA / "1lzh.pdb.gz", chains=["b"])  # chain ids are case-sensitive
    with pytest.raises(StructureReadError):
        read_structure(DATA / "1LCD.pdb", chains=["B"])  # B is DNA


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    pdb = (DATA / "1A8O.pdb").read_text()
    cif = (DATA / "1A8O.cif").read_text()
    files: dict[str, bytes] = {}
    files["empty.pdb"] = b""
    files["blank.cif"] = b"   \n\n  \n"
    start = pdb.index("\nATOM ", pdb.index("\nATOM ") + 2000) + 1
    files["truncated.pdb"] = pdb[: start + 41].encode()  # cut inside the coordinates
    row = cif.index("\nATOM ", cif.index("\nATOM ") + 3000) + 1
    files["truncated.cif"] = cif[: row + 20].encode()  # cut inside an _atom_site row
    files["junk.pdb"] = bytes((i * 97 + 13) % 256 for i in range(4096))  # has NUL bytes
    files["junk2.pdb"] = bytes(range(1, 256)) * 16  # binary without NUL
    files["junk.cif"] = b"hello world\nthis is not a structure\n"
    files["notes.txt"] = b"hello world\nthis is not a structure\n"
    files["truncated.pdb.gz"] = (DATA / "1lzh.pdb.gz").read_bytes()[:4000]
    files["badheader.cif.gz"] = b"\x1f\x8b" + b"not really gzip" * 10
    line = next(l for l in pdb.splitlines(True) if l.startswith("ATOM"))
    files["nonnumeric.pdb"] = pdb.replace(line, line[:30] + "  abc.de" + line[38:]).encode()
    first = cif[cif.index("\nATOM ") + 1 :].split("\n", 1)[0]
    assert " 19.594 " in first
    files["nonnumeric.cif"] = cif.replace(first, first.replace(" 19.594 ", " abc "), 1).encode()
    assert " 1.00 18.03 " in first
    files["nonnumeric_occ.cif"] = cif.replace(
        first, first.replace(" 1.00 18.03 ", " x 18.03 "), 1
    ).encode()
    # found by tests/test_fuzz.py: a valid mmCIF number beyond float32 became inf in the coords
    files["overflow.cif"] = cif.replace(first, first.replace(" 19.594 ", " 1e40 "), 1).encode()
    files["hetatm_only.pdb"] = (DATA / "ions.pdb").read_bytes()
    files["water_only.pdb"] = "".join(
        l for l in pdb.splitlines(True) if l.startswith("HETATM") and "HOH" in l
    ).encode()
    files["dna_only.pdb"] = "".join(
        l
        for l in (DATA / "1LCD.pdb").read_text().splitlines(True)
        if not (l.startswith(("ATOM", "HETATM")) and l[21] == "A")
    ).encode()
    files["no_atom_site.cif"] = b"data_x\n_cell.length_a 10.0\n_cell.length_b 10.0\n"
    out = {}
    for name, data in files.items():
        p = tmp_path / name
        p.write_bytes(data)
        out[name] = p
    out["missing.pdb"] = tmp_path / "missing.pdb"
    out["folder.pdb"] = tmp_path / "folder.pdb"
    out["folder.pdb"].mkdir()
    return out


BAD_REASONS = {
    "empty.pdb": "empty",
    "blank.cif": "empty",
    "truncated.pdb": "truncated or non-numeric",
    "truncated.cif": "parse error",
    "junk.pdb": "binary",
    "junk2.pdb": "no atoms",
    "junk.cif": "parse error",
    "notes.txt": "unrecognised format",
    "truncated.pdb.gz": "gzip",
    "badheader.cif.gz": "gzip",
    "nonnumeric.pdb": "non-numeric",
    "nonnumeric.cif": "non-numeric",
    "nonnumeric_occ.cif": "non-numeric occupancy",
    "overflow.cif": "out of range",
    "hetatm_only.pdb": "no protein chain",
    "water_only.pdb": "no protein chain",
    "dna_only.pdb": "no protein chain",
    "no_atom_site.cif": "no _atom_site",
    "missing.pdb": "cannot read",
    "folder.pdb": "cannot read",
}


@pytest.mark.parametrize("name", sorted(BAD_REASONS))
def test_bad_input_raises_structure_read_error(tmp_path, name):
    path = _bad_files(tmp_path)[name]
    with pytest.raises(StructureReadError) as info:
        read_structure(path)
    err = info.value
    assert err.source == str(path)
    assert str(err).startswith(f"{path}: ")
    assert BAD_REASONS[name] in err.reason


def test_structure_read_error_pickles():
    err = StructureReadError("a/b.pdb", "no protein chain")
    back = pickle.loads(pickle.dumps(err))
    assert (back.source, back.reason, str(back)) == (
        "a/b.pdb",
        "no protein chain",
        "a/b.pdb: no protein chain",
    )


def test_structure_suffixes():
    assert {".pdb", ".ent", ".cif", ".mmcif"} <= set(STRUCTURE_SUFFIXES)
    assert {s + ".gz" for s in (".pdb", ".ent", ".cif", ".mmcif")} <= set(STRUCTURE_SUFFIXES)


IO_SRC = Path(__file__).parents[1] / "src" / "coordformer" / "io"


def test_io_modules_do_not_import_torch():
    names = sorted(p.name for p in IO_SRC.glob("*.py"))
    concepts = {"chains.py", "files.py", "sources.py", "structures.py", "chain_set.py", "fasta.py"}
    assert concepts | {"__init__.py"} <= set(names)
    for name in names:
        tree = ast.parse((IO_SRC / name).read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
        assert "torch" not in imported and "lightning" not in imported, name


def _io_imports(name: str) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every ``from coordformer.X import ...`` in io/``name``."""
    out = []
    for node in ast.walk(ast.parse((IO_SRC / name).read_text())):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith("coordformer")
        ):
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.ImportFrom) and node.level:
            out.append(("coordformer.io." + (node.module or ""), [a.name for a in node.names]))
    return out


def test_io_modules_form_layers_without_cycles_or_private_imports():
    """chains <- files <- sources <- the three readers (peers) <- __init__ / fetch; nothing private
    crosses a module boundary, and the alphabet is the only source of letter rules."""
    graph = {}
    for p in IO_SRC.glob("*.py"):
        deps = set()
        for module, names in _io_imports(p.name):
            assert not [n for n in names if n.startswith("_")], (p.name, module, names)
            if module.startswith("coordformer.io."):
                deps.add(module.rsplit(".", 1)[1])
        graph[p.stem] = deps
    readers = {"structures", "chain_set", "fasta"}
    for r in readers:
        assert not graph[r] & (readers - {r}), (r, graph[r])
    assert graph["chains"] == set()
    assert graph["files"] <= {"chains"} and graph["sources"] <= {"chains", "files"}

    def visit(node, path):
        assert node not in path, f"import cycle: {' -> '.join(path + [node])}"
        for dep in graph.get(node, ()):
            visit(dep, path + [node])

    for node in graph:
        visit(node, [])
    # outside io, nothing imports a private io name either
    for p in IO_SRC.parent.rglob("*.py"):
        if p.parent == IO_SRC:
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and "io" in node.module.split("."):
                private = {a.name for a in node.names if a.name.startswith("_")}
                assert not private, (p, node.module, private)


# --------------------------------------------------------------------------- chain_set


def test_read_chain_set_fixture():
    path = DATA / "chain_set_small.jsonl"
    chains = list(iter_chain_set(path))
    assert all(isinstance(c, Chain) for c in chains)
    assert [c.id for c in chains] == ["1A2X.B", "1AIE.A", "1AJJ.A"]
    assert [len(c) for c in chains] == [31, 31, 37]
    assert chains[0].sequence == "EEKRNRAITARRQHLKSVMLQIAATELEKEE"
    assert chains[0].source == f"{path}:1" and chains[2].source == f"{path}:3"
    first = json.loads(path.read_text().splitlines()[0])
    np.testing.assert_allclose(chains[0].coords[0, 0], first["coords"]["N"][0], atol=1e-5)
    np.testing.assert_allclose(chains[0].coords[-1, 3], first["coords"]["O"][-1], atol=1e-5)
    for c in chains:
        assert c.coords.dtype == np.float32 and c.atom_mask.all()


def _assert_same_chains(a: list[Chain], b: list[Chain]) -> None:
    assert [c.id for c in a] == [c.id for c in b]
    for x, y in zip(a, b):
        assert x.sequence == y.sequence
        np.testing.assert_array_equal(x.coords, y.coords)  # NaN positions must match too
        if x.b_factors is None:
            assert y.b_factors is None
        else:
            np.testing.assert_allclose(x.b_factors, y.b_factors, atol=0.006)
        assert x.residue_ids == y.residue_ids


@pytest.mark.parametrize("name", ["out.jsonl", "out.jsonl.gz"])
def test_chain_set_round_trip(tmp_path, name):
    chains = (
        read_structure(DATA / "1lzh.pdb.gz")  # NaN atoms
        + read_structure(DATA / "1orc.pdb")  # insertion codes
        + [c for c in iter_chain_set(DATA / "chain_set_small.jsonl")]  # no b-factors / ids
    )
    out = tmp_path / name
    assert write_chain_set(iter(chains), out) == len(chains)
    assert is_chain_set(out)
    raw = gzip.decompress(out.read_bytes()) if name.endswith(".gz") else out.read_bytes()
    assert b"null" in raw and b"NaN" not in raw  # strict JSON
    back = list(iter_chain_set(out))
    assert all(isinstance(c, Chain) for c in back)
    _assert_same_chains(chains, back)
    assert back[0].source == f"{out}:1"
    # writing what was read gives identical bytes (deterministic, also for gzip)
    again = tmp_path / ("again" + name[3:])
    write_chain_set(back, again)
    assert again.read_bytes() == out.read_bytes()


def test_write_rounds_coordinates(tmp_path):
    coords = np.full((2, 4, 3), 1.23456, dtype=np.float32)
    coords[1, 0] = np.nan
    out = tmp_path / "r.jsonl"
    write_chain_set([Chain("X1.A", "AG", coords, "mem")], out)
    rec = json.loads(out.read_text())
    assert rec["coords"]["N"] == [[1.235, 1.235, 1.235], [None, None, None]]
    assert rec["name"] == "X1.A" and rec["seq"] == "AG"


def test_chain_set_bad_lines_yield_errors_and_continue(tmp_path):
    good = (DATA / "chain_set_small.jsonl").read_text().splitlines()[0]
    rec = json.loads(good)
    n = len(rec["seq"])
    mismatch = dict(rec, seq=rec["seq"] + "A")
    nonnum = json.loads(good)
    nonnum["coords"]["CA"][3] = ["a", 1.0, 2.0]
    nocoords = {"name": "1ABC.A", "seq": "ACD"}
    nulls = json.loads(good)
    nulls["coords"]["N"][0] = None
    nulls["coords"]["O"][1] = [None, None, None]
    nan_lit = good.replace(str(rec["coords"]["C"][2]).replace(" ", ""), "[NaN,NaN,NaN]", 1)
    assert nan_lit != good
    lines = [
        good,  # 1 ok
        "{not json",  # 2
        json.dumps(mismatch),  # 3
        json.dumps(nonnum),  # 4
        "",  # 5 blank: skipped
        json.dumps(nocoords),  # 6
        "[1, 2, 3]",  # 7
        json.dumps(nulls),  # 8 ok, with NaN
        nan_lit,  # 9 ok, with NaN
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    items = list(iter_chain_set(path))
    kinds = [type(x).__name__ for x in items]
    assert kinds == ["Chain"] + ["StructureReadError"] * 5 + ["Chain", "Chain"]
    errors = [x for x in items if isinstance(x, StructureReadError)]
    assert [e.source for e in errors] == [f"{path}:{i}" for i in (2, 3, 4, 6, 7)]
    assert "length mismatch" in errors[1].reason
    assert "non-numeric" in errors[2].reason
    with_nulls, with_nan = items[-2], items[-1]
    assert len(with_nulls) == n
    assert np.isnan(with_nulls.coords[0, 0]).all() and np.isnan(with_nulls.coords[1, 3]).all()
    assert with_nulls.atom_mask.sum() == 4 * n - 2
    assert np.isnan(with_nan.coords[2, 2]).all() and with_nan.atom_mask.sum() == 4 * n - 1


def test_chain_set_regressions_found_by_fuzzing(tmp_path):
    rec = json.loads((DATA / "chain_set_small.jsonl").read_text().splitlines()[0])
    n = len(rec["seq"])
    nested = [[rec["coords"][atom][i] for atom in ("N", "CA", "C", "O")] for i in range(n)]
    nested[2][1] = [1e300, 0.0, 0.0]  # finite in JSON, inf as float32
    overflow = dict(rec, coords=nested)
    # str.upper() turns 'ß' into 'SS', which made the sequence longer than the coordinates
    unicode_seq = dict(rec, seq="ß\u0131" + rec["seq"][2:])
    path = tmp_path / "fuzzed.jsonl"
    path.write_text(json.dumps(overflow) + "\n" + json.dumps(unicode_seq) + "\n")
    err, chain = iter_chain_set(path)
    assert isinstance(err, StructureReadError) and "infinite or too large" in err.reason
    assert isinstance(chain, Chain) and chain.sequence == "XX" + rec["seq"][2:]
    assert chain.coords.shape == (n, 4, 3)


def test_chain_set_line_ranges_and_count(tmp_path):
    path = DATA / "chain_set_small.jsonl"
    assert count_lines(path) == 3
    full = [c.id for c in iter_chain_set(path)]
    parts = [c.id for a, b in ((0, 1), (1, 2), (2, 10)) for c in iter_chain_set_lines(path, a, b)]
    assert parts == full
    assert [c.id for c in iter_chain_set_lines(path, 1, 3)] == full[1:]
    assert list(iter_chain_set_lines(path, 3, 5)) == []
    gz = tmp_path / "cs.jsonl.gz"
    gz.write_bytes(gzip.compress(path.read_bytes().rstrip(b"\n")))  # no final newline
    assert count_lines(gz) == 3
    assert [c.id for c in iter_chain_set_lines(gz, 2, 3)] == full[2:]
    assert (c.source for c in iter_chain_set_lines(gz, 2, 3)).__next__() == f"{gz}:3"


def test_chain_set_unreadable_files(tmp_path):
    with pytest.raises(StructureReadError, match="cannot open"):
        iter_chain_set(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(b"\x1f\x8b" + b"garbage" * 20)
    with pytest.raises(StructureReadError) as info:
        iter_chain_set(bad)
    assert info.value.source == str(bad)
    # truncated gzip: the records before the damage, then one error record
    full = tmp_path / "full.jsonl.gz"
    chains = [
        c
        for f in ("1A8O.pdb", "1orc.pdb", "1lzh.pdb.gz", "5i55.cif")
        for c in read_structure(DATA / f)
    ]
    write_chain_set(chains, full)
    data = full.read_bytes()
    trunc = tmp_path / "trunc.jsonl.gz"
    trunc.write_bytes(data[: int(len(data) * 0.8)])
    items = list(iter_chain_set(trunc))
    assert len(items) >= 3
    assert all(isinstance(x, Chain) for x in items[:-1])
    _assert_same_chains(items[:-1], chains[: len(items) - 1])
    assert isinstance(items[-1], StructureReadError)
    assert items[-1].source == f"{trunc}:{len(items)}" and "truncated" in items[-1].reason
    with pytest.raises(StructureReadError):
        count_lines(trunc)


def test_is_chain_set(tmp_path):
    assert is_chain_set(DATA / "chain_set_small.jsonl")
    gz = tmp_path / "x.json.gz"
    gz.write_bytes(gzip.compress(b"\n" + (DATA / "chain_set_small.jsonl").read_bytes()))
    assert is_chain_set(gz)
    assert not is_chain_set(DATA / "1A8O.cif")
    other = tmp_path / "other.jsonl"
    other.write_text('{"a": 1}\n')
    assert not is_chain_set(other)
    wrong_suffix = tmp_path / "cs.txt"
    shutil.copy(DATA / "chain_set_small.jsonl", wrong_suffix)
    assert not is_chain_set(wrong_suffix)
    assert not is_chain_set(tmp_path / "missing.jsonl")


# --------------------------------------------------------------------------- ids and sources


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("12as-A", "12AS.A"),
        ("12AS.A", "12AS.A"),
        ("12AS_A", "12AS.A"),
        ("12as.a", "12AS.a"),  # chain case kept
        (" 1abc-AA ", "1ABC.AA"),
        ("1abc", "1ABC"),
        ("AF-P12345-F1.A", "AF-P12345-F1.A"),  # not a PDB id: entry unchanged
        ("my_model.B", "my_model.B"),
        ("abcd_A", "abcd_A"),  # not a PDB id (must start with a digit)
    ],
)
def test_normalize_chain_id(raw, expected):
    assert normalize_chain_id(raw) == expected


def test_read_id_list(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_text(
        "# excluded chains\n\n12as-A\t1.1.1.1\n1abc_B,GO:0003674\n  2XYZ.c  # comment\n12AS.A\n"
    )
    assert read_id_list(path) == ["12AS.A", "1ABC.B", "2XYZ.c"]
    # a list written across lines: every id counts (only the first did, and the others, test
    # chains given to --exclude, stayed in train unlogged)
    across = tmp_path / "across.txt"
    across.write_text("1ORC.A, 1LCD.A\n1LZH.A 1LZH.B\nAF-P69905-F1\t3abc_B\nmy.A other.B\n")
    assert read_id_list(across) == [
        "1ORC.A",
        "1LCD.A",
        "1LZH.A",
        "1LZH.B",
        "AF-P69905-F1",
        "3ABC.B",
        "my.A",
    ]
    # a table's header row is not an id (DeepFRI's nrPDB-EC_2020.04_test.csv starts this way);
    # a list of ids that are not archive ids keeps its first
    table = tmp_path / "test.csv"
    table.write_text("PDB-chain,<30%,<40%,<50%,<70%,<95%\n2FOR-A,0,0,1,1,1\n5U4N-A,0,0,0,0,1\n")
    assert read_id_list(table) == ["2FOR.A", "5U4N.A"]
    names = tmp_path / "names.txt"
    names.write_text("seq_one x\nseq_two y\n")
    assert read_id_list(names) == ["seq_one", "seq_two"]
    # a real id of one's own above archive ids is never taken for a header
    mixed = tmp_path / "mixed.txt"
    mixed.write_text("my_model.B\t1.1.1.1\n1ABC_A\t2.7.7.7\n")
    assert read_id_list(mixed) == ["my_model.B", "1ABC.A"]
    across2 = tmp_path / "across2.txt"
    across2.write_text("my.A other.B\n1ORC.A 1LCD.A\n")
    assert read_id_list(across2) == ["my.A", "1ORC.A", "1LCD.A"]
    with pytest.raises(StructureReadError):
        read_id_list(tmp_path / "missing.txt")


def test_find_sources_recursion(tmp_path):
    root = tmp_path / "in"
    (root / "b" / "deep").mkdir(parents=True)
    (root / "a").mkdir()
    (root / ".hidden").mkdir()
    shutil.copy(DATA / "1A8O.pdb", root / "b" / "deep" / "x.pdb")
    shutil.copy(DATA / "1lzh.pdb.gz", root / "a" / "y.pdb.gz")
    shutil.copy(DATA / "5i55.cif", root / "z.CIF")
    shutil.copy(DATA / "1A8O.pdb", root / ".hidden" / "h.pdb")
    (root / "cs.jsonl.gz").write_bytes(gzip.compress((DATA / "chain_set_small.jsonl").read_bytes()))
    (root / "notes.txt").write_text("not a structure")
    (root / "meta.json").write_text('{"a": 1}')
    (root / "empty").mkdir()
    sniffable = tmp_path / "model_output"
    shutil.copy(DATA / "1A8O.pdb", sniffable)
    readme = tmp_path / "README.md"
    readme.write_text("hello")
    sources, problems = find_sources([root, tmp_path / "nope", readme, sniffable, root / "z.CIF"])
    assert sources == [
        root / "a" / "y.pdb.gz",
        root / "b" / "deep" / "x.pdb",
        root / "cs.jsonl.gz",
        root / "z.CIF",
        sniffable,
    ]
    # every entry not read is named with its reason (hidden ones are listed, not searched)
    assert [p for p, _ in problems] == [
        str(root / ".hidden"),
        str(root / "meta.json"),
        str(root / "notes.txt"),
        str(tmp_path / "nope"),
        str(readme),
    ]
    reasons = dict(problems)
    assert "hidden" in reasons[str(root / ".hidden")]
    assert "not chain_set" in reasons[str(root / "meta.json")]
    assert "no such file" in reasons[str(tmp_path / "nope")]
    again, _ = find_sources([root])
    assert again == sources[:4]  # deterministic
    _, problems = find_sources([root / "empty"])
    assert problems and "no structure" in problems[0][1]


def test_per_chain_file_names_give_the_entry_and_chain(tmp_path):
    """1PAA-K.pdb (one file per chain, no HEADER, as split by chain) gives 1PAA.K, the id label
    files use, not 1PAA-K.K (issue 20); only when the file holds that chain."""
    from coordformer.io import read_structure

    text = "".join(
        l
        for l in (DATA / "1orc.pdb").read_text().splitlines(keepends=True)
        if not l.startswith("HEADER")
    )
    for name, expected in (
        ("1PAA-A.pdb", "1PAA.A"),
        ("1paa_A.pdb.gz", "1PAA.A"),
        ("1paa.A.ent", "1PAA.A"),
        ("1PAA-K.pdb", "1PAA-K.A"),
        ("model-A.pdb", "model-A.A"),
    ):
        path = tmp_path / name
        path.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
        assert [c.id for c in read_structure(path)] == [expected], name


def test_pdb_archive_file_names_give_the_entry_id(tmp_path):

    from coordformer.io import read_structure

    target = tmp_path / "pdb1abc.ent"
    src = DATA / "1orc.pdb"
    # Drop the HEADER so the id must come from the file name, as for many archive mirrors.
    target.write_text(
        "".join(l for l in src.read_text().splitlines(keepends=True) if not l.startswith("HEADER"))
    )
    chains = read_structure(target)
    assert chains[0].id.startswith("1ABC.")
