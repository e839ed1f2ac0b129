"""Read protein chains (backbone N, CA, C, O) from PDB and mmCIF files with gemmi.

Everything that can go wrong with an input file is reported as :class:`StructureReadError`
(naming the file and the reason); no other exception type escapes :func:`read_structure`.

This module must not import torch: it runs in data-preparation worker processes.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import gemmi
import numpy as np

from coordformer.alphabet import UNKNOWN_LETTER, normalize_letter
from coordformer.constants import BACKBONE_ATOMS, SEQRES_MODES
from coordformer.errors import OptionError
from coordformer.io.chains import (
    Chain,
    ChainsNotFoundError,
    StructureReadError,
    is_archive_id,
    is_placeholder_id,
    normalize_chain_id,
    normalize_entry,
    short_reason,
)
from coordformer.io.files import (
    STRUCTURE_SUFFIXES,
    detect_format,
    file_stem,
    is_structure_file,
    read_bytes,
)
from coordformer.io.sources import read_id_list  # noqa: F401 - importable from here before the io split

__all__ = [
    "Chain",
    "StructureReadError",
    "STRUCTURE_SUFFIXES",
    "read_structure",
    "SEQRES_MODES",
    "is_archive_id",
    "is_structure_file",
    "normalize_chain_id",
    "read_id_list",
]

_N_ATOMS = len(BACKBONE_ATOMS)
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_PROTEIN_TYPES = (gemmi.PolymerType.PeptideL, gemmi.PolymerType.PeptideD)
#: A per-chain file name (1PAA-K.pdb, 1paa_K.cif, 1PAA.K.pdb): PDB id, separator, author chain id.
_STEM_CHAIN_RE = re.compile(r"^([0-9][A-Za-z0-9]{3})[-_.:]([A-Za-z0-9]{1,4})$")

# One 8-column PDB coordinate field: digits, spaces, '.', sign, with at least one digit.
_PDB_FIELD = rb"(?= {0,7}[-+]?[\d.]{0,7}\d)[ \d.+-]{8}"
#: An ATOM/HETATM record whose x, y, z (columns 31-54) are not three numbers, or whose
#: occupancy / B-factor columns (55-66, optional) contain anything but a number. Searched
#: over b"\n" + data; gemmi itself silently reads such fields as 0.
_BAD_PDB_ATOM_RE = re.compile(
    rb"\n(?:ATOM  |HETATM).{24}(?!"
    + _PDB_FIELD * 3
    + rb"(?:[ \d.+-]{12}|[ \d.+-]{0,11}\r?(?:\n|$)))"
)

#: An ATOM/HETATM record whose occupancy columns (55-60) are blank while the line goes on (a
#: B-factor or element follows): gemmi would read 0, i.e. "not observed", and drop every atom; a
#: blank occupancy is unknown, read as 1 (as a line that ends before the column is).
_BLANK_OCC_RE = re.compile(rb"^((?:ATOM  |HETATM).{48}) {6}(?=[^\r\n])", re.MULTILINE)

#: Residue names of molecular-dynamics force fields (AMBER, CHARMM, GROMACS) for protonation and
#: disulfide states, absent from the CCD-derived table: their amino acid.
_FORCE_FIELD_LETTERS = {
    **dict.fromkeys(("HIE", "HID", "HIP", "HSD", "HSE", "HSP", "HIH"), "H"),
    **dict.fromkeys(("CYX", "CYM", "CYF"), "C"),
    "ASH": "D",
    "GLH": "E",
    "LYN": "K",
}

#: Words of the wwPDB ``_exptl.method`` values (and PDB ``EXPDTA``) that name an experiment:
#: X-ray / neutron / fibre / powder diffraction, solution and solid-state NMR, electron
#: microscopy and crystallography, solution scattering, EPR, fluorescence transfer, infrared
#: spectroscopy. "THEORETICAL MODEL" and the methods of model archives contain none of them.
_EXPERIMENTAL_WORDS = re.compile(
    r"DIFFRACTION|NMR|MICROSCOPY|CRYSTALLOGRAPHY|SCATTERING|\bEPR\b|FLUORESCENCE|SPECTROSCOPY"
)


def experimental_method(declared: str) -> str | None:
    """The experimental method a file declares (``_exptl.method`` / ``EXPDTA``, several joined by
    ";" or ","), normalised to single spaces, when it names an experiment; None for "THEORETICAL
    MODEL", an empty value and anything else (so that predicted models keep their pLDDT)."""
    text = " ".join(str(declared or "").upper().split())
    return text if _EXPERIMENTAL_WORDS.search(text) else None


# --------------------------------------------------------------------------- parsing


def _parse_pdb(src: str, data: bytes) -> gemmi.Structure:
    bad = _BAD_PDB_ATOM_RE.search(b"\n" + data)
    if bad is not None:
        lineno = data.count(b"\n", 0, bad.start()) + 1
        line = bad.group(0)[1:].decode("ascii", "replace").rstrip()
        raise StructureReadError(
            src, f"line {lineno}: truncated or non-numeric coordinate fields in {line[:66]!r}"
        )
    data = _BLANK_OCC_RE.sub(rb"\1  1.00", data)
    try:
        return gemmi.read_pdb_string(data)
    except Exception as e:  # gemmi raises RuntimeError/ValueError with a line number
        raise StructureReadError(src, f"PDB parse error: {short_reason(e)}") from None


def _parse_cif(src: str, data: bytes) -> tuple[gemmi.Structure, str]:
    try:
        doc = gemmi.cif.read_string(data)
    except Exception as e:
        raise StructureReadError(src, f"mmCIF parse error: {short_reason(e)}") from None
    block = None
    for b in doc:
        if b.find_values("_atom_site.Cartn_x"):
            block = b
            break
    if block is None:
        raise StructureReadError(src, "mmCIF has no _atom_site coordinates")
    # gemmi reads no atom at all from a loop without these columns (files written by hand or by
    # tools that know no occupancy); '?' (unknown) reads as occupancy 1 and no alternate location
    table = block.find_mmcif_category("_atom_site.")
    missing = [
        f"_atom_site.{tag}"
        for tag in _OPTIONAL_ATOM_SITE
        if table.loop is not None and f"_atom_site.{tag}" not in list(table.tags)
    ]
    if missing:
        table.loop.add_columns(missing, "?")
    try:
        st = gemmi.make_structure_from_block(block)
    except Exception as e:
        raise StructureReadError(src, f"mmCIF structure error: {short_reason(e)}") from None
    if "_atom_site.B_iso_or_equiv" in missing:  # gemmi would put a made-up 20 there
        for model in st:
            for ch in model:
                for res in ch:
                    for atom in res:
                        atom.b_iso = float("nan")
    return st, block.name


#: RCSB's biological-assembly PDB files: ``1abc.pdb1``, ``1abc.pdb2.gz``, ...
_ASSEMBLY_FILE_RE = re.compile(r"\.pdb\d+(\.gz)?$", re.IGNORECASE)


def is_assembly_file(path: str | Path) -> bool:
    """Whether a file name is that of an RCSB biological-assembly PDB file (``.pdb1``,
    ``.pdb2.gz``, ...), whose MODEL records are the copies of the assembly, not an ensemble."""
    return bool(_ASSEMBLY_FILE_RE.search(Path(path).name))


def _merge_assembly_copies(st: gemmi.Structure) -> None:
    """Move the chains of models 2, 3, ... of an assembly file into model 1, each named after its
    chain and model (``A-2``, as RCSB names the copies in its mmCIF assembly files), so that the
    copies are chains of one assembly rather than dropped as further models."""
    first = st[0]
    for k in range(1, len(st)):
        for ch in st[k]:
            copy = ch.clone()
            copy.name = f"{ch.name}-{st[k].num}" if ch.name.strip() else f"-{st[k].num}"
            first.add_chain(copy)
    while len(st) > 1:
        del st[len(st) - 1]


#: _atom_site columns gemmi needs that a minimal mmCIF may lack.
_OPTIONAL_ATOM_SITE = ("label_alt_id", "occupancy", "B_iso_or_equiv")


@lru_cache(maxsize=4096)
def _tabulated_letter(name: str) -> str:
    """One-letter code (20-letter alphabet or X) from gemmi's residue table; '' if not an amino
    acid.

    Modified residues give their parent (gemmi writes them lower-case: MSE->m, SEP->s);
    selenocysteine and pyrrolysine map to their parents C and K; UNK/ASX/GLX give X.
    """
    t = gemmi.find_tabulated_residue(name)
    if t is None or not t.is_amino_acid():
        return ""
    code = t.one_letter_code.strip()
    return normalize_letter(code) if code else ""


def _residue_letter(name: str, parents: dict[str, str]) -> str:
    letter = _tabulated_letter(name)
    if letter:
        return letter
    parent = parents.get(name)
    if parent:
        return _tabulated_letter(parent) or UNKNOWN_LETTER
    return _FORCE_FIELD_LETTERS.get(name, UNKNOWN_LETTER)


def _max_occupancy(res: gemmi.Residue) -> float:
    best = 0.0
    for a in res:
        occ = a.occ
        if occ != occ:  # junk occupancy: reported when the atoms are read
            occ = 1.0
        if occ > best:
            best = occ
    return best


def _has_altloc(res: gemmi.Residue) -> bool:
    return any(a.altloc != "\0" for a in res)


def _pick_microheterogeneity(span: gemmi.ResidueSpan) -> list[gemmi.Residue]:
    """Residues of a polymer span; of point-mutation alternatives (consecutive residues with
    the same author number and insertion code, at least one of them with alternate-location
    atoms), keep the one with the highest occupancy (the first one on ties). Consecutive
    residues that merely share a number (no altlocs: a numbering error) are all kept."""
    out: list[gemmi.Residue] = []
    keys: list[tuple[int, str]] = []
    for res in span:
        sid = res.seqid
        key = (sid.num, sid.icode)
        if keys and keys[-1] == key and (_has_altloc(res) or _has_altloc(out[-1])):
            if _max_occupancy(res) > _max_occupancy(out[-1]):
                out[-1] = res
            continue
        out.append(res)
        keys.append(key)
    return out


def _residue_conformer(res: gemmi.Residue) -> str:
    """The alternate location a residue's backbone is read from: the one with the largest summed
    occupancy of alternate-location backbone atoms, the first in alphabetical order on ties (A
    before B, as gemmi and PyMOL); '' when its backbone has none. One per residue, so that N, CA,
    C and O never come from different conformers."""
    occ: dict[str, float] = {}
    for atom in res:
        if atom.altloc != "\0" and atom.name in BACKBONE_ATOMS:
            w = atom.occ if atom.occ == atom.occ else 0.0  # NaN: reported when the atom is read
            occ[atom.altloc] = occ.get(atom.altloc, 0.0) + w
    if not occ:
        return ""
    return max(sorted(occ), key=lambda k: occ[k])  # max keeps the first of equal keys


def _best_conformer(res: gemmi.Residue, name: str, altloc: str) -> tuple[gemmi.Atom | None, float]:
    """Of the atoms called ``name`` (alternate locations), the one of conformer ``altloc`` (or
    without an altloc); if that conformer lacks the atom, the one with the highest occupancy (the
    first on ties). Zero-occupancy atoms count as missing. Returns (atom or None, occ); an atom
    with a non-numeric (NaN) occupancy is returned at once for the caller to report."""
    best, best_occ = None, 0.0
    for atom in res:
        if atom.name != name:
            continue
        occ = atom.occ
        if occ != occ:
            return atom, occ
        if atom.altloc in ("\0", altloc) and occ > 0.0:
            return atom, occ
        if occ > best_occ:
            best, best_occ = atom, occ
    return best, best_occ


#: A residue-number restart inside a chain id starts a new chain unless the C of the residue before
#: and the N after it are this close (Angstrom; a peptide bond is 1.33 A).
CHAIN_BREAK_CN = 2.5


def _polymer_residues(
    ch: gemmi.Chain, span: gemmi.ResidueSpan, parents: dict[str, str]
) -> list[gemmi.Residue]:
    """The polymer residues of ``ch``: gemmi's polymer span, which ends at the first non-polymer
    residue, plus the amino acids with a CA after it up to the chain's last such ATOM record (a
    water or ligand numbered inside the chain otherwise cuts it short; HETATM modified residues
    in between are kept). Waters (HOH, SOL), ligands and free amino-acid ligands after the last
    ATOM record are left out."""
    residues = list(span)
    if not residues:
        return residues
    every = list(ch)
    end = residues[-1].seqid
    last = next(i for i in range(len(every) - 1, -1, -1) if every[i].seqid == end)

    def amino(r: gemmi.Residue) -> bool:
        named = _tabulated_letter(r.name) or parents.get(r.name) or r.name in _FORCE_FIELD_LETTERS
        return bool(named or r.het_flag == "A" and r.find_atom("N", "*")) and bool(
            r.find_atom("CA", "*")
        )

    rest = [r for r in every[last + 1 :] if amino(r)]
    stop = max((i for i, r in enumerate(rest) if r.het_flag == "A"), default=-1)
    return residues + rest[: stop + 1]


def _split_chains(residues: list[gemmi.Residue]) -> list[list[gemmi.Residue]]:
    """``residues`` cut where one chain ends and another begins under the same chain id: at a
    change of segment id, or where the residue number goes back without a peptide bond
    (``CHAIN_BREAK_CN``)."""
    parts = [residues[:1]]
    for prev, res in zip(residues, residues[1:]):
        new_segment = prev.segment.strip() != res.segment.strip()
        restart = res.seqid.num < prev.seqid.num
        if restart and not new_segment:
            c, n = prev.find_atom("C", "*"), res.find_atom("N", "*")
            restart = c is None or n is None or c.pos.dist(n.pos) > CHAIN_BREAK_CN
        if new_segment or restart:
            parts.append([])
        parts[-1].append(res)
    return parts


def _part_names(name: str, parts: list[list[gemmi.Residue]], taken: set[str]) -> list[str]:
    """A chain id per part of :func:`_split_chains`: the chain id for the first; for the others
    the segment id when the chain id is blank (CHARMM / GROMACS files), else the chain id and the
    part's number; never an id another chain of the model has."""
    if len(parts) == 1:
        return [name]
    taken = taken - {name}
    out = []
    for k, part in enumerate(parts):
        seg = part[0].segment.strip()
        cand = seg if not name.strip() and seg else name if k == 0 else f"{name}{k + 1}"
        base, j = cand, 1
        while cand in taken or cand in out:
            j += 1
            cand = f"{base}_{j}"
        out.append(cand)
    return out


def _chain_from_span(
    src: str, chain_id: str, residues: list[gemmi.Residue], parents: dict[str, str]
) -> Chain:
    n = len(residues)
    nan = float("nan")
    flat = [nan] * (n * _N_ATOMS * 3)
    bfac = [nan] * n
    letters = []
    ids = []
    for i, res in enumerate(residues):
        letters.append(_residue_letter(res.name, parents))
        sid = res.seqid
        ids.append(f"{sid.num}{sid.icode}" if sid.icode != " " else str(sid.num))
        conformer = None
        for k, name in enumerate(BACKBONE_ATOMS):
            atom = res.find_atom(name, "*")  # first atom of that name, any altloc
            if atom is None:
                continue
            if atom.altloc != "\0":  # alternate locations: the residue's conformer
                if conformer is None:
                    conformer = _residue_conformer(res)
                atom, occ = _best_conformer(res, name, conformer)
                if atom is None:
                    continue
            else:
                occ = atom.occ
            if occ != occ:  # gemmi reads '?' as 1.0 but junk as NaN
                raise StructureReadError(
                    src,
                    f"chain {chain_id} residue {res.name} {ids[-1]} atom {name}: "
                    "non-numeric occupancy",
                )
            if not occ > 0.0:  # zero occupancy = missing
                continue
            pos = atom.pos
            x, y, z = pos.x, pos.y, pos.z
            if x != x or y != y or z != z:
                raise StructureReadError(
                    src,
                    f"chain {chain_id} residue {res.name} {ids[-1]} atom {name}: "
                    "missing or non-numeric coordinate",
                )
            if abs(x) > _FLOAT32_MAX or abs(y) > _FLOAT32_MAX or abs(z) > _FLOAT32_MAX:
                # mmCIF numbers like 1e40 parse fine but would become inf in the float32 array
                raise StructureReadError(
                    src,
                    f"chain {chain_id} residue {res.name} {ids[-1]} atom {name}: "
                    f"coordinate out of range ({x:g}, {y:g}, {z:g})",
                )
            j = (i * _N_ATOMS + k) * 3
            flat[j] = x
            flat[j + 1] = y
            flat[j + 2] = z
            if k == 1:
                bfac[i] = atom.b_iso
    coords = np.array(flat, dtype=np.float32).reshape(n, _N_ATOMS, 3)
    return Chain(
        id=chain_id,
        sequence="".join(letters),
        coords=coords,
        source=src,
        b_factors=np.array(bfac, dtype=np.float32),
        residue_ids=ids,
    )


def _seqres_positions(residues: list[gemmi.Residue], full_len: int) -> np.ndarray | None:
    """0-based positions of ``residues`` in their entity's full sequence (gemmi's label_seq), or
    None when they cannot be placed: a residue without label_seq, out of range, or not strictly
    after the previous one (two residues claiming one sequence position)."""
    pos = np.empty(len(residues), dtype=np.int64)
    prev = 0
    for i, res in enumerate(residues):
        k = res.label_seq
        if k is None or not prev < k <= full_len:
            return None
        pos[i] = k - 1
        prev = k
    return pos


def _insert_unobserved(
    chain: Chain,
    residues: list[gemmi.Residue],
    full_sequence: Sequence[str],
    parents: dict[str, str],
    mode: str,
) -> Chain | None:
    """``chain`` lengthened to its deposited sequence: the residues the file has no coordinates for
    are put back in place, with NaN coordinates and B-factors, residue id "" and ``observed`` False.
    ``mode`` "gaps": only between the first and last observed residue; "all": the termini too, up to
    the first non-amino-acid entry (a cap such as ACE or NH2). None when the observed residues
    cannot be placed in the sequence."""
    pos = _seqres_positions(residues, len(full_sequence))
    if pos is None:
        return None
    first, last = int(pos[0]), int(pos[-1])
    if mode == "all":
        # unmodelled termini, but not terminal caps (ACE, NH2, ...), which entity sequences list too
        def amino(k: int) -> bool:
            name = full_sequence[k].split(",")[0]
            return bool(_tabulated_letter(name) or parents.get(name))

        while first > 0 and amino(first - 1):
            first -= 1
        while last < len(full_sequence) - 1 and amino(last + 1):
            last += 1
    n = last - first + 1
    # an entry like "PRO,SER" is point-mutation microheterogeneity: the first is the main one
    letters = [
        _residue_letter(full_sequence[k].split(",")[0], parents) for k in range(first, last + 1)
    ]
    idx = pos - first
    for i, j in enumerate(idx.tolist()):
        letters[j] = chain.sequence[i]  # the residue actually modelled wins over the deposited one
    coords = np.full((n, _N_ATOMS, 3), np.nan, dtype=np.float32)
    coords[idx] = chain.coords
    bfac = np.full(n, np.nan, dtype=np.float32)
    if chain.b_factors is not None:
        bfac[idx] = chain.b_factors
    ids = [""] * n
    for i, j in enumerate(idx.tolist()):
        ids[j] = chain.residue_ids[i] if chain.residue_ids is not None else ""
    observed = np.zeros(n, dtype=bool)
    observed[idx] = True
    return Chain(
        id=chain.id,
        sequence="".join(letters),
        coords=coords,
        source=chain.source,
        b_factors=bfac,
        residue_ids=ids,
        observed=observed,
    )


def read_structure(
    path: str | Path,
    chains: Sequence[str] | None = None,
    seqres: str = "off",
    left_out: list[str] | None = None,
) -> list[Chain]:
    """Protein chains of the first model of a PDB or mmCIF file (plain or gzipped); of every model
    in an RCSB biological-assembly file (``1abc.pdb1``: :func:`is_assembly_file`), whose models are
    the assembly's copies, named ``A-2``, ``B-2``, ... after the first.

    Per protein polymer chain (in file order): one-letter sequence (modified residues as
    their parent, unknown as X) and N, CA, C, O coordinates, [L, 4, 3] float32, NaN where
    an atom is missing or has zero occupancy (a blank PDB occupancy column is 1, and so is every
    occupancy of a file that sets them all to 0). Alternate locations: one conformer per residue,
    the one with the highest summed backbone occupancy (A before B on ties); point-mutation
    alternatives: the residue with the highest occupancy. Force-field names of protonation states
    (HIE, HSD, CYX, ASH, GLH, LYN, ...) are their amino acid. Waters, ligands and nucleic-acid
    chains are skipped; polymer residues after a water or ligand numbered inside the chain are
    kept. Two chains written under one chain id are told apart where the segment id (columns
    73-76) changes, or where the residue numbering restarts without a peptide bond (C-N over
    ``CHAIN_BREAK_CN`` A): the later part is named by its segment id where the chain id is blank,
    else by the chain id and its part number (A, A2, ...).

    Chain ids are ``ENTRY.CHAIN`` (author chain id). ENTRY is the file's own entry name (PDB
    HEADER id code, mmCIF data block name) when it is an archive id (:func:`is_archive_id`: a PDB,
    extended PDB or AlphaFold DB id), else the file name without its endings (``pdb1abc.ent.gz``
    -> 1abc); an ignored name is kept in ``Chain.ignored_entry``. PDB ids are upper-cased.

    ``chains`` selects author chain ids (case-sensitive); requested chains that are absent
    are ignored, but an error is raised if none of them is a protein chain of the file. When the
    file is read, the ids (``ENTRY.CHAIN``) of its protein chains that ``chains`` leaves out are
    appended to ``left_out`` (if given), so that callers can account for them.

    ``seqres``: "off" (default) gives the residues that have coordinates in the file. "gaps"
    puts back the residues of the deposited sequence (mmCIF ``entity_poly_seq``, PDB
    ``SEQRES``) that the file lacks between its first and last modelled residue (unresolved
    loops); "all" also those at the termini. Inserted residues have NaN coordinates and
    ``Chain.observed`` False, so a coordinate model sees them as missing-coordinate residues.
    A chain whose file has no deposited sequence, or whose residues cannot be placed in it,
    is returned as modelled, with ``observed`` None.

    Raises StructureReadError (and no other exception) for unreadable or unusable input.
    """
    src = str(path)
    if isinstance(chains, str):
        chains = [chains]
    if seqres not in SEQRES_MODES:
        raise OptionError("seqres", seqres, f"must be one of {', '.join(SEQRES_MODES)}")
    try:
        out, unselected = _read_structure(src, path, chains, seqres)
    except StructureReadError:
        raise
    except MemoryError:
        raise StructureReadError(src, "out of memory while reading") from None
    except Exception as e:  # never let anything else escape (gemmi / numpy surprises)
        raise StructureReadError(src, f"unexpected {type(e).__name__}: {short_reason(e)}") from None
    if left_out is not None:
        left_out.extend(unselected)
    return out


def _read_structure(
    src: str, path: str | Path, chains: Sequence[str] | None, seqres: str = "off"
) -> tuple[list[Chain], list[str]]:
    """(the chains read, the protein chains ``chains`` left out)."""
    data = read_bytes(path)
    if not data or data.isspace():
        raise StructureReadError(src, "empty file")
    if b"\x00" in data:
        raise StructureReadError(src, "binary data, not a PDB or mmCIF text file")
    if b"\r" in data:  # gemmi ends PDB records and CIF comments at LF only: a CR-only file
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")  # read as one line
    fmt = detect_format(Path(src).name, data)
    if fmt is None:
        raise StructureReadError(src, "unrecognised format (neither PDB nor mmCIF)")
    if fmt == "cif":
        st, named = _parse_cif(src, data)
    else:
        st = _parse_pdb(src, data)
        named = st.info["_entry.id"] if "_entry.id" in st.info else ""
    named = named.strip()
    method = experimental_method(st.info["_exptl.method"] if "_exptl.method" in st.info else "")
    ignored = None
    if is_archive_id(named):
        entry = normalize_entry(named)
    else:  # a generic or made-up name (data_model): the file name tells files apart
        stem = file_stem(src)
        entry = normalize_entry(stem)
        per_chain = _STEM_CHAIN_RE.match(stem)
        if per_chain and len(st) and any(ch.name == per_chain.group(2) for ch in st[0]):
            entry = per_chain.group(
                1
            ).upper()  # 1PAA-K.pdb holding chain K: 1PAA.K, as label files name it
        if named and not is_placeholder_id(named) and named.lower() != entry.lower():
            ignored = named

    if len(st) == 0:
        raise StructureReadError(src, "no models / no atoms found")
    if len(st) > 1 and is_assembly_file(src):
        _merge_assembly_copies(st)
    while len(st) > 1:  # first model only (an NMR ensemble); dropping the rest saves work below
        del st[len(st) - 1]
    if st[0].count_atom_sites() == 0:
        raise StructureReadError(src, f"no atoms found (empty or not a {fmt.upper()} file?)")
    if st[0].count_occupancies() == 0:
        # every atom at occupancy 0 is a writing tool's placeholder (models, docking poses), not
        # a structure of which nothing was observed
        for ch in st[0]:
            for res in ch:
                for atom in res:
                    atom.occ = 1.0
    st.merge_chain_parts()
    st.setup_entities()
    if seqres != "off":
        # mmCIF files carry label_seq_id already; for PDB files gemmi aligns each chain to SEQRES
        st.assign_label_seq_id(False)

    parents: dict[str, str] = {}
    for mod in st.mod_residues:
        if mod.parent_comp_id and mod.parent_comp_id not in ("?", "."):
            parents.setdefault(mod.res_id.name, mod.parent_comp_id)

    wanted = set(chains) if chains is not None else None
    out: list[Chain] = []
    protein_names: list[str] = []
    unselected: list[str] = []
    taken = {ch.name for ch in st[0]}
    for ch in st[0]:
        span = ch.get_polymer()
        if len(span) == 0 or span.check_polymer_type() not in _PROTEIN_TYPES:
            continue
        parts = _split_chains(_pick_microheterogeneity(_polymer_residues(ch, span, parents)))
        for name, residues in zip(_part_names(ch.name, parts, taken), parts):
            protein_names.append(name)
            if wanted is not None and name not in wanted:
                unselected.append(f"{entry}.{name}")
                continue
            chain = _chain_from_span(src, f"{entry}.{name}", residues, parents)
            if seqres != "off":
                try:
                    entity = st.get_entity_of(span)
                    full = list(entity.full_sequence) if entity is not None else []
                    chain = (
                        _insert_unobserved(chain, residues, full, parents, seqres) if full else None
                    ) or chain
                except Exception:  # noqa: BLE001 - an odd deposited sequence must not lose the modelled chain
                    # kept as modelled (observed None), counted as without a usable deposited
                    # sequence
                    pass
            chain.ignored_entry = ignored
            chain.experimental_method = method
            out.append(chain)
    if not protein_names:
        raise StructureReadError(src, "no protein chain")
    if not out:
        raise ChainsNotFoundError(src, sorted(wanted or ()), protein_names)
    return out, unselected
