"""read_structure on the file layouts that used to lose or corrupt residues silently (an audit of
the PDB/mmCIF reader, session 17): every case is a tiny hand-written file."""

import numpy as np
import pytest

from coordformer.io.structures import CHAIN_BREAK_CN, read_structure

# backbone offsets of one residue along x (Angstrom); consecutive residues 3.8 A apart, so that
# the C of one and the N of the next are 1.33 A apart (a peptide bond)
_OFFSETS = {"N": (0.0, 0.0), "CA": (1.45, 0.0), "C": (2.47, 0.0), "O": (2.47, 1.23)}


def _atom(serial, name, resn, chain, num, x, y=0.0, occ="  1.00", alt=" ", rec="ATOM", seg=""):
    nm = f" {name:<3}" if len(name) < 4 else name
    return (
        f"{rec:<6}{serial:>5} {nm}{alt}{resn:>3} {chain}{num:>4}    "
        f"{x:8.3f}{y:8.3f}{0.0:8.3f}{occ:>6}{20.0:6.2f}      {seg:<4}{name[0]:>2}"
    )


def _residues(names, chain="A", start=1, x0=0.0, rec=None, seg="", occ="  1.00", serial=1):
    lines = []
    for i, resn in enumerate(names):
        for name, (dx, dy) in _OFFSETS.items():
            r = rec or ("HETATM" if resn in ("HOH", "MSE", "HIE", "CYX", "ASH") else "ATOM")
            lines.append(
                _atom(
                    serial, name, resn, chain, start + i, x0 + 3.8 * i + dx, dy, occ, rec=r, seg=seg
                )
            )
            serial += 1
    return lines


def _read(tmp_path, lines, name="x.pdb", **kw):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\nEND\n")
    return read_structure(path, **kw)


def test_residues_after_a_water_numbered_inside_the_chain_are_kept(tmp_path):
    water = [_atom(90, "O", "HOH", "A", 4, 50.0, rec="HETATM")]
    lines = (
        _residues(["ALA", "GLY", "SER"])
        + water
        + _residues(["VAL", "MSE", "LEU"], start=5, x0=11.4, serial=20)
    )
    # a free amino acid after the last ATOM record is a ligand, not part of the chain
    lines += ["TER"] + _residues(["ALA"], start=101, x0=80.0, rec="HETATM", serial=60)
    (chain,) = _read(tmp_path, lines)
    assert chain.sequence == "AGSVML" and chain.residue_ids == ["1", "2", "3", "5", "6", "7"]


def test_two_chains_under_one_id_are_split_where_numbering_restarts_without_a_bond(tmp_path):
    first = _residues(["ALA", "GLY", "SER"])
    apart = _residues(["VAL", "LEU"], start=1, x0=40.0, serial=30)
    chains = _read(tmp_path, first + ["TER"] + apart, "two.pdb")
    assert [(c.id, c.sequence) for c in chains] == [("two.A", "AGS"), ("two.A2", "VL")]
    # a restart of the numbering across a peptide bond is one chain (circular permutants)
    bonded = _residues(["VAL", "LEU"], start=1, x0=3 * 3.8, serial=30)
    (one,) = _read(tmp_path, first + bonded, "one.pdb")
    assert one.sequence == "AGSVL" and CHAIN_BREAK_CN > 1.33
    # a selection by the new id finds the second chain
    (sel,) = _read(tmp_path, first + ["TER"] + apart, "two.pdb", chains=["A2"])
    assert sel.sequence == "VL"


def test_chains_told_apart_by_segment_id_are_named_by_it(tmp_path):
    lines = _residues(["ALA", "GLY", "SER"], chain=" ", seg="PROA") + _residues(
        ["VAL", "LEU"], chain=" ", start=1, x0=3 * 3.8, seg="PROB", serial=30
    )
    chains = _read(tmp_path, lines, "md.pdb")
    assert [(c.id, c.sequence) for c in chains] == [("md.PROA", "AGS"), ("md.PROB", "VL")]


def test_force_field_residue_names_are_their_amino_acid(tmp_path):
    (chain,) = _read(tmp_path, _residues(["ALA", "HIE", "CYX", "ASH", "GLY"]))
    assert chain.sequence == "AHCDG"


def test_blank_or_all_zero_occupancies_do_not_erase_atoms(tmp_path):
    (blank,) = _read(tmp_path, _residues(["ALA", "GLY"], occ=""), "blank.pdb")
    assert np.isfinite(blank.coords).all()
    (zero,) = _read(tmp_path, _residues(["ALA", "GLY"], occ="  0.00"), "zero.pdb")
    assert np.isfinite(zero.coords).all()
    # one atom at zero occupancy among observed ones is still unobserved
    lines = _residues(["ALA", "GLY"])
    lines[1] = lines[1][:54] + "  0.00" + lines[1][60:]
    (one,) = _read(tmp_path, lines, "one.pdb")
    assert np.isnan(one.coords[0, 1]).all() and np.isfinite(one.coords[1]).all()


@pytest.mark.parametrize(
    "occ_a, occ_b, conformer",
    [((0.6, 0.4), (0.4, 0.6), "A"), ((0.3, 0.3), (0.7, 0.7), "B"), ((0.5, 0.5), (0.5, 0.5), "A")],
)
def test_one_conformer_per_residue(tmp_path, occ_a, occ_b, conformer):
    x = {"A": 10.0, "B": 20.0}
    # B listed first: ties go to A whatever the order
    lines = [
        _atom(1, "N", "GLY", "A", 1, x["B"], occ=f"{occ_b[0]:6.2f}", alt="B"),
        _atom(2, "N", "GLY", "A", 1, x["A"], occ=f"{occ_a[0]:6.2f}", alt="A"),
        _atom(3, "CA", "GLY", "A", 1, x["A"] + 1.45, occ=f"{occ_a[1]:6.2f}", alt="A"),
        _atom(4, "CA", "GLY", "A", 1, x["B"] + 1.45, occ=f"{occ_b[1]:6.2f}", alt="B"),
        _atom(5, "C", "GLY", "A", 1, 30.0),
    ]
    (chain,) = _read(tmp_path, lines)
    assert chain.coords[0, 0, 0] == pytest.approx(x[conformer])
    assert chain.coords[0, 1, 0] == pytest.approx(x[conformer] + 1.45)


def test_mmcif_polymers_sharing_an_author_chain_id_are_all_kept(tmp_path):
    head = "data_1ABC\nloop_\n_entity.id\n_entity.type\n1 polymer\n2 polymer\nloop_\n" + "".join(
        f"_atom_site.{k}\n"
        for k in (
            "group_PDB id type_symbol label_atom_id label_alt_id label_comp_id "
            "label_asym_id label_entity_id label_seq_id Cartn_x Cartn_y Cartn_z occupancy "
            "B_iso_or_equiv auth_seq_id auth_asym_id pdbx_PDB_model_num"
        ).split()
    )
    rows, serial = [], 1
    for asym, entity, names, x0, first in (
        ("A", 1, "ALA GLY SER", 0.0, 1),
        ("B", 2, "LYS ARG", 40.0, 101),
    ):
        for i, resn in enumerate(names.split()):
            for name, (dx, dy) in _OFFSETS.items():
                rows.append(
                    f"ATOM {serial} {name[0]} {name} . {resn} {asym} {entity} {i + 1} "
                    f"{x0 + 3.8 * i + dx:.3f} {dy:.3f} 0.000 1.0 50.0 {first + i} A 1"
                )
                serial += 1
    path = tmp_path / "x.cif"
    path.write_text(head + "\n".join(rows) + "\n")
    (chain,) = read_structure(path)
    assert chain.sequence == "AGSKR" and chain.residue_ids[-1] == "102"


def test_mmcif_without_occupancy_altloc_or_b_columns_is_read(tmp_path):
    # a minimal mmCIF (hand-written, or from tools that know no occupancy): gemmi reads no atom
    # from a loop that lacks these columns
    cols = (
        "group_PDB id type_symbol label_atom_id label_comp_id label_asym_id label_entity_id "
        "label_seq_id Cartn_x Cartn_y Cartn_z auth_seq_id auth_asym_id"
    ).split()
    rows = []
    for i, resn in enumerate(("ALA", "GLY", "SER")):
        for k, (name, (dx, dy)) in enumerate(_OFFSETS.items()):
            rows.append(
                f"ATOM {4 * i + k + 1} {name[0]} {name} {resn} A 1 {i + 1} "
                f"{3.8 * i + dx:.3f} {dy:.3f} 0.000 {i + 1} A"
            )
    path = tmp_path / "model.cif"
    path.write_text(
        "data_model\nloop_\n" + "".join(f"_atom_site.{c}\n" for c in cols) + "\n".join(rows) + "\n"
    )
    (chain,) = read_structure(path)
    assert chain.sequence == "AGS" and np.isfinite(chain.coords).all()
    assert np.isnan(chain.b_factors).all()  # no B-factor column: unknown, not gemmi's default 20


def _models(*models):
    lines = []
    for k, body in enumerate(models, start=1):
        lines += [f"MODEL     {k:>4}", *body, "ENDMDL"]
    return lines


@pytest.mark.parametrize("name", ["1abc.pdb1", "1abc.pdb2.gz", "1ABC.PDB1"])
def test_biological_assembly_files_keep_every_copy(tmp_path, name):
    """RCSB's assembly PDB files hold one copy of the asymmetric unit per MODEL: every copy is a
    chain of the assembly (named as RCSB's mmCIF assembly files name them), not a dropped model."""
    import gzip

    copy1 = _residues(["ALA", "GLY", "LEU"], chain="A") + _residues(["SER", "LYS"], chain="B")
    copy2 = _residues(["ALA", "GLY", "LEU"], chain="A", x0=40.0) + _residues(
        ["SER", "LYS"], chain="B", x0=40.0
    )
    text = "\n".join(_models(copy1, copy2)) + "\nEND\n"
    path = tmp_path / name
    path.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    chains = read_structure(path)
    assert [c.id for c in chains] == ["1ABC.A", "1ABC.B", "1ABC.A-2", "1ABC.B-2"]
    assert chains[2].sequence == "AGL" and chains[3].sequence == "SK"
    assert np.allclose(chains[2].coords - chains[0].coords, [40.0, 0.0, 0.0])
    assert [c.id for c in read_structure(path, chains=["A-2"])] == ["1ABC.A-2"]


def test_an_nmr_ensemble_keeps_its_first_model(tmp_path):
    first = _residues(["ALA", "GLY", "LEU"])
    second = _residues(["ALA", "GLY", "LEU"], x0=0.5)
    chains = _read(tmp_path, _models(first, second), name="2abc.pdb")
    assert [c.id for c in chains] == ["2ABC.A"]
    assert np.isclose(chains[0].coords[0, 1, 0], 1.45)
