"""Tests for coordformer.data.prepare / store / splits (offline, small synthetic inputs)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from coordformer import io as cio
from coordformer.config import PrepareConfig
from coordformer.constants import DATASET_FORMAT_VERSION
from coordformer.data import prepare as P
from coordformer.data import splits as S
from coordformer.data.prepare import ChainPolicy, Kept, PrepareError, Rejected, prepare
from coordformer.data.store import DatasetFormatError, PreparedDataset

AA = "ACDEFGHIKLMNPQRSTVWY"
THREE = dict(
    zip(
        AA,
        "ALA CYS ASP GLU PHE GLY HIS ILE LYS LEU MET ASN PRO GLN ARG SER THR VAL TRP TYR".split(),
    )
)
ATOMS = ("N", "CA", "C", "O")


# ----------------------------------------------------------------------------------------------
# synthetic inputs
# ----------------------------------------------------------------------------------------------


def backbone(n: int, rng: np.random.Generator) -> np.ndarray:
    """Plausible-ish backbone [n, 4, 3]: a CA random walk with 3.8 A steps, atoms offset around
    CA."""
    steps = rng.normal(size=(n, 3))
    steps *= 3.8 / np.linalg.norm(steps, axis=1, keepdims=True)
    ca = np.cumsum(steps, axis=0)
    offs = np.array([[-1.2, 0.6, 0.3], [0, 0, 0], [1.3, 0.5, -0.2], [1.9, 1.5, 0.4]])
    x = ca[:, None, :] + offs[None] + rng.normal(scale=0.05, size=(n, 4, 3))
    return np.round(x, 3).astype(np.float32)


def random_seq(n: int, rng: np.random.Generator) -> str:
    return "".join(rng.choice(list(AA), size=n))


def record(name: str, seq: str, coords: np.ndarray) -> dict:
    """A CATH chain_set.jsonl-style record (NaN for missing atoms)."""
    c = np.asarray(coords, dtype=np.float64)
    return {
        "name": name,
        "seq": seq,
        "coords": {a: c[:, k].tolist() for k, a in enumerate(ATOMS)},
        "num_chains": 1,
        "CATH": ["1.10.10"],
    }


def write_jsonl(path: Path, lines: list) -> Path:
    with open(path, "w") as f:
        for item in lines:
            f.write((item if isinstance(item, str) else json.dumps(item)) + "\n")
    return path


def make_records(
    n: int, seed: int = 0, lmin: int = 25, lmax: int = 60, prefix: str = "S"
) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        L = int(rng.integers(lmin, lmax + 1))
        out.append(record(f"{prefix}{i:03d}.A", random_seq(L, rng), backbone(L, rng)))
    return out


def write_pdb(path: Path, chains: dict[str, tuple[str, np.ndarray]]) -> Path:
    lines, serial = [], 1
    for cid, (seq, xyz) in chains.items():
        for r, aa in enumerate(seq):
            for k, a in enumerate(ATOMS):
                x, y, z = (float(v) for v in xyz[r, k])
                lines.append(
                    f"ATOM  {serial:5d}  {a:<3} {THREE[aa]} {cid}{r + 1:4d}    "
                    f"{x:8.3f}{y:8.3f}{z:8.3f}{1.0:6.2f}{20.0:6.2f}           {a[0]}"
                )
                serial += 1
        lines.append("TER")
    lines.append("END")
    path.write_text("\n".join(lines) + "\n")
    return path


def expected_chains(paths) -> list:
    """Chains as coordformer.io reads them, in the dataset's order (sorted by source path)."""
    out = []
    for p in sorted((Path(p).resolve() for p in paths), key=str):
        if cio.is_chain_set(p):
            out += [
                c
                for c in cio.iter_chain_set_lines(p, 0, cio.count_lines(p))
                if not isinstance(c, Exception)
            ]
        else:
            out += list(cio.read_structure(p))
    return out


def dataset_arrays(d: Path) -> dict:
    return {n: np.load(d / n) for n in ("seq.npy", "coords.npy", "offsets.npy")}


def read_skipped(d: Path) -> list[list[str]]:
    lines = (d / "skipped.tsv").read_text().splitlines()
    assert lines[0] == "input\treason"
    return [ln.split("\t") for ln in lines[1:]]


def split_ids(d: Path) -> dict[str, list[str]]:
    return {n: (d / "splits" / f"{n}.txt").read_text().split() for n in ("train", "valid", "test")}


QUIET = dict(progress=False)


# ----------------------------------------------------------------------------------------------
# tests
# ----------------------------------------------------------------------------------------------


def test_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    recs = make_records(6, seed=1)
    # one record with a missing residue (all four atoms NaN) and one missing O atom
    L = 40
    xyz = backbone(L, rng)
    xyz[5] = np.nan
    xyz[7, 3] = np.nan
    recs.append(record("MISS.B", random_seq(L, rng), xyz))
    src = tmp_path / "src"
    src.mkdir()
    js = write_jsonl(src / "a_set.jsonl", recs)
    pdb = write_pdb(
        src / "b1xyz.pdb",
        {
            "A": (random_seq(30, rng), backbone(30, rng)),
            "B": (random_seq(35, rng), backbone(35, rng)),
        },
    )
    out = tmp_path / "ds"
    summary = prepare([src], out, PrepareConfig(min_length=10), **QUIET)

    chains = expected_chains([js, pdb])
    assert len(chains) == 9
    ds = PreparedDataset(out)
    assert len(ds) == summary.chains_kept == 9
    assert ds.ids == [c.id for c in chains]
    assert ds.lengths.dtype == np.int64 and ds.lengths.tolist() == [len(c.sequence) for c in chains]
    for i, c in enumerate(chains):
        assert ds.sequence(i) == c.sequence
        assert ds.seq_bytes(i).dtype == np.uint8
        np.testing.assert_array_equal(ds.coords(i), np.asarray(c.coords, dtype=np.float32))
        assert ds.index_of(c.id) == i
    # NaN preserved
    j = ds.index_of(next(c.id for c in chains if c.id.startswith("MISS")))
    assert (
        np.isnan(ds.coords(j)[5]).all()
        and np.isnan(ds.coords(j)[7, 3]).all()
        and np.isfinite(ds.coords(j)[7, :3]).all()
    )
    # arrays are memory-mapped views
    assert isinstance(ds._coords, np.memmap) and np.shares_memory(ds.coords(1), ds._coords)
    m = ds.manifest
    assert m["format_version"] == DATASET_FORMAT_VERSION
    assert m["n_chains"] == 9 and m["n_residues"] == int(ds.lengths.sum()) == ds.n_residues
    assert m["atoms"] == ["N", "CA", "C", "O"]
    assert m["counts"]["sources"] == 2 and m["counts"]["chains_kept"] == 9
    assert ds.config == PrepareConfig(min_length=10)
    assert sum(m["splits"].values()) == 9
    assert sorted(
        np.concatenate([ds.split_indices(n) for n in ("train", "valid", "test")]).tolist()
    ) == list(range(9))
    rows = (out / "chains.tsv").read_text().splitlines()
    assert rows[0] == "id\tlength\tsource" and len(rows) == 10
    assert (out / "prepare.log").read_text().count("chains read") == 1
    assert not (out / ".work").exists() and not (out / ".prepare.lock").exists()
    assert summary.to_dict()["chains_kept"] == 9


def test_determinism_across_workers(tmp_path):
    js1 = write_jsonl(tmp_path / "x.jsonl", make_records(23, seed=2) + ["{not json"])
    js2 = write_jsonl(tmp_path / "w.jsonl", make_records(9, seed=3, prefix="T"))
    cfg = PrepareConfig(valid_fraction=0.2, test_fraction=0.2)
    s1 = prepare([js1, js2], tmp_path / "d1", cfg, workers=1, chunk_lines=4, **QUIET)
    s2 = prepare([js2, js1], tmp_path / "d2", cfg, workers=2, chunk_lines=4, **QUIET)
    assert s1.n_units == s2.n_units == 6 + 3
    a, b = dataset_arrays(tmp_path / "d1"), dataset_arrays(tmp_path / "d2")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    for f in (
        "chains.tsv",
        "skipped.tsv",
        "splits/train.txt",
        "splits/valid.txt",
        "splits/test.txt",
    ):
        assert (tmp_path / "d1" / f).read_text() == (tmp_path / "d2" / f).read_text(), f
    ids = PreparedDataset(tmp_path / "d1").ids
    assert ids[0].startswith("T")  # w.jsonl sorts before x.jsonl
    assert s1.chains_kept == 32 and s1.inputs_skipped == 1


def test_skip_log_and_counts(tmp_path):
    rng = np.random.default_rng(4)
    good = make_records(5, seed=4)
    short = record("SHORT.A", random_seq(5, rng), backbone(5, rng))
    long_ = record("LONG.A", random_seq(90, rng), backbone(90, rng))
    xyz = backbone(40, rng)
    xyz[:30, 1] = np.nan
    noca = record("NOCA.A", random_seq(40, rng), xyz)
    dup = dict(good[0])  # same id again later in the file
    lines = good + [short, long_, noca, "{broken json", '{"name": "X.A"}', dup]
    js = write_jsonl(tmp_path / "set.jsonl", lines)
    garbage = tmp_path / "junk.pdb"
    garbage.write_text("this is not a structure file\n\x00\x01binary")
    missing = tmp_path / "does_not_exist.pdb"
    out = tmp_path / "ds"
    s = prepare(
        [js, garbage, missing],
        out,
        PrepareConfig(min_length=10, max_length=80, max_missing_ca=0.5),
        **QUIET,
    )

    assert s.chains_kept == 5
    assert s.chains_filtered == {"duplicate id": 1, "missing CA": 1, "too long": 1, "too short": 1}
    # two bad JSONL records + the garbage file + the missing path
    assert s.inputs_skipped == 4
    rows = read_skipped(out)
    assert len(rows) == s.n_skipped == 8
    assert all(len(r) == 2 and r[0] and r[1] for r in rows)
    reasons = "\n".join(r[1] for r in rows)
    for word in ("duplicate id", "missing CA", "too long", "too short"):
        assert word in reasons
    inputs = "\n".join(r[0] for r in rows)
    assert str(missing) in inputs and "junk.pdb" in inputs
    m = json.loads((out / "manifest.json").read_text())["counts"]
    assert m["chains_read"] == m["chains_kept"] + sum(m["chains_filtered"].values())
    assert m["inputs_skipped"] == 4 and m["sources"] == 2
    ids = PreparedDataset(out).ids
    assert len(ids) == len(set(ids)) == 5
    assert not any(i.startswith(("SHORT", "LONG", "NOCA")) for i in ids)


def test_unexpected_reader_exception_is_skipped(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    write_pdb(tmp_path / "a1aaa.pdb", {"A": (random_seq(30, rng), backbone(30, rng))})
    write_pdb(tmp_path / "b1bbb.pdb", {"A": (random_seq(30, rng), backbone(30, rng))})
    real = cio.read_structure

    def flaky(path, chains=None, **kw):
        if Path(path).name == "b1bbb.pdb":
            raise RuntimeError("boom")
        return real(path, chains, **kw)

    monkeypatch.setattr(cio, "read_structure", flaky)
    s = prepare([tmp_path], tmp_path / "ds", PrepareConfig(min_length=10), **QUIET)
    assert s.chains_kept == 1 and s.inputs_skipped == 1
    (row,) = read_skipped(tmp_path / "ds")
    assert row[0].endswith("b1bbb.pdb") and "RuntimeError" in row[1] and "boom" in row[1]


def test_chain_policy_filters():
    rng = np.random.default_rng(6)
    policy = ChainPolicy(min_length=10, max_length=50, max_missing_ca=0.25)

    def check(seq, xyz):
        return policy.check(SimpleNamespace(id="Q.A", sequence=seq, coords=xyz, source="q"))

    seq = random_seq(20, rng)
    ok = backbone(20, rng)
    v = check(seq.lower(), ok)
    assert isinstance(v, Kept) and v.seq.tobytes().decode() == seq
    assert v.coords.dtype == np.float32 and v.coords.shape == (20, 4, 3)
    assert check(seq[:9], ok[:9]).reason == "too short"
    assert check(random_seq(51, rng), backbone(51, rng)).reason == "too long"
    inf = ok.copy()
    inf[3, 2, 1] = np.inf  # a non-finite value makes its atom missing; the chain stays
    c = check(seq, inf).coords
    assert np.isnan(c[3, 2]).all() and np.isfinite(c[3, [0, 1, 3]]).all()
    big = ok.copy()
    big[4, 0, 0] = 2e4
    v = check(seq, big)
    assert isinstance(v, Rejected) and v.reason == "bad coordinates" and "2e+04" in v.detail
    assert check(seq, ok[:19]).reason == "bad coordinates"  # shape mismatch
    miss = ok.copy()
    miss[:5, 1] = np.nan  # 25 % missing CA: allowed (not > 0.25)
    assert isinstance(check(seq, miss), Kept)
    miss[5, 1, 2] = np.nan  # 30 %, and a partially-NaN atom counts as missing
    assert check(seq, miss).reason == "missing CA"
    part = ok.copy()
    part[2, 3, 0] = np.nan
    c = check(seq, part).coords
    assert np.isnan(c[2, 3]).all() and np.isfinite(c[2, :3]).all()
    assert check("AXZ*b" * 4, ok).seq.tobytes() == b"AXXXX" * 4


def test_filters_end_to_end(tmp_path):
    rng = np.random.default_rng(7)
    recs = [
        record(f"L{n}.A", random_seq(n, rng), backbone(n, rng)) for n in (10, 19, 20, 30, 40, 41)
    ]
    inf = backbone(30, rng).astype(np.float64)
    inf[2, 1, 0] = 5e4
    recs.append(record("HUGE.A", random_seq(30, rng), inf))
    js = write_jsonl(tmp_path / "f.jsonl", recs)
    s = prepare([js], tmp_path / "ds", PrepareConfig(min_length=20, max_length=40), **QUIET)
    ds = PreparedDataset(tmp_path / "ds")
    assert [ds.lengths[i] for i in range(len(ds))] == [20, 30, 40]
    assert s.chains_filtered == {"too short": 2, "too long": 1, "bad coordinates": 1}


def test_random_split_fractions_and_stability(tmp_path):
    ids = [f"{i:04d}.A" for i in range(20000)]
    cfg = PrepareConfig(valid_fraction=0.1, test_fraction=0.05, seed=3)
    codes = S.random_split(ids, cfg)
    frac = np.bincount(codes, minlength=3) / len(ids)
    assert abs(frac[1] - 0.1) < 0.01 and abs(frac[2] - 0.05) < 0.01
    # assignment of an id does not depend on which other ids are present, but does on the seed
    assert (S.random_split(ids[::7], cfg) == codes[::7]).all()
    assert (S.random_split(ids, cfg.replace(seed=4)) != codes).mean() > 0.1

    js = write_jsonl(tmp_path / "r.jsonl", make_records(300, seed=8, lmin=20, lmax=24))
    cfg = PrepareConfig(valid_fraction=0.2, test_fraction=0.1)
    s = prepare([js], tmp_path / "ds", cfg, **QUIET)
    assert 30 <= s.splits["valid"] <= 90 and 10 <= s.splits["test"] <= 55
    assert sum(s.splits.values()) == 300
    first = split_ids(tmp_path / "ds")
    prepare([js], tmp_path / "ds", cfg, overwrite=True, **QUIET)
    assert split_ids(tmp_path / "ds") == first


def test_exclude_list_never_in_train(tmp_path):
    recs = make_records(12, seed=9)
    recs[3]["name"] = "12AS.A"
    recs[7]["name"] = "13AS.B"
    js = write_jsonl(tmp_path / "e.jsonl", recs)
    ex1 = tmp_path / "ex1.txt"
    ex1.write_text("12AS-A\n")
    ex2 = tmp_path / "ex2.txt"
    ex2.write_text("13AS.B\n99ZZ.Q\n")
    cfg = PrepareConfig(valid_fraction=0.0, test_fraction=0.0, exclude_files=(str(ex1), str(ex2)))
    s = prepare([js], tmp_path / "ds", cfg, **QUIET)
    sp = split_ids(tmp_path / "ds")
    ids12 = cio.normalize_chain_id("12AS.A")
    ids13 = cio.normalize_chain_id("13AS.B")
    assert sp["test"] == [ids12, ids13]
    assert ids12 not in sp["train"] and ids13 not in sp["train"] and len(sp["train"]) == 10
    assert s.excluded_ids_found == 2 and s.excluded_ids_listed == 3
    assert s.splits == {"train": 10, "valid": 0, "test": 2}
    ds = PreparedDataset(tmp_path / "ds")
    assert ds.manifest["counts"]["excluded_ids_found"] == 2
    assert ds.config.exclude_files == (str(ex1), str(ex2))
    with pytest.raises(PrepareError, match="does not exist"):
        prepare(
            [js],
            tmp_path / "ds2",
            cfg.replace(exclude_files=(str(tmp_path / "nope.txt"),)),
            **QUIET,
        )


def mutate(seq: str, n: int, rng) -> str:
    s = list(seq)
    for p in rng.choice(len(s), size=n, replace=False):
        s[p] = AA[(AA.index(s[p]) + 1 + int(rng.integers(19))) % 20]
    return "".join(s)


@pytest.mark.slow  # MMseqs2's cascaded clustering has a fixed cost of several seconds
@pytest.mark.skipif(shutil.which("mmseqs") is None, reason="mmseqs (MMseqs2) not installed")
def test_identity_split_keeps_families_together(tmp_path):
    rng = np.random.default_rng(10)
    recs, family = [], {}
    for f in range(4):
        base = random_seq(80, rng)
        for k in range(6):
            name = f"F{f}M{k}.A"
            family[name] = f
            recs.append(record(name, mutate(base, int(rng.integers(0, 4)), rng), backbone(80, rng)))
    for u in range(20):
        recs.append(record(f"U{u:02d}.A", random_seq(80, rng), backbone(80, rng)))
    order = rng.permutation(len(recs))
    js = write_jsonl(tmp_path / "id.jsonl", [recs[i] for i in order])
    cfg = PrepareConfig(
        split="identity", split_identity=0.5, valid_fraction=0.3, test_fraction=0.3, seed=1
    )
    s = prepare([js], tmp_path / "ds", cfg, workers=1, **QUIET)
    assert 24 <= s.n_clusters <= 40  # 4 families + ~20 singletons
    ds = PreparedDataset(tmp_path / "ds")
    where = {}
    for name in ("train", "valid", "test"):
        for i in ds.split_indices(name):
            where[ds.ids[i]] = name
    assert len(where) == len(ds) == 44
    by_family: dict[int, set] = {}
    for name, f in family.items():
        by_family.setdefault(f, set()).add(where[cio.normalize_chain_id(name)])
    assert all(len(v) == 1 for v in by_family.values()), by_family
    assert (
        len(set(where.values())) >= 2
    )  # the test would be vacuous if everything landed in one split
    assert ds.manifest["n_clusters"] == s.n_clusters


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mmseqs") is None, reason="mmseqs (MMseqs2) not installed")
def test_identity_exclusion_moves_whole_cluster_out_of_train(tmp_path):
    rng = np.random.default_rng(11)
    base = random_seq(90, rng)
    recs = [record(f"1FM{k}.A", mutate(base, 2, rng), backbone(90, rng)) for k in range(5)]
    recs += [record(f"U{u:02d}.A", random_seq(90, rng), backbone(90, rng)) for u in range(10)]
    js = write_jsonl(tmp_path / "fam.jsonl", recs)
    ex = tmp_path / "exclude.txt"
    ex.write_text("1fm0-A\n")  # DeepFRI spelling (and case) of one family member
    cfg = PrepareConfig(
        split="identity",
        split_identity=0.5,
        valid_fraction=0.0,
        test_fraction=0.0,
        seed=0,
        exclude_files=(str(ex),),
    )
    s = prepare([js], tmp_path / "ds", cfg, workers=1, **QUIET)
    ds = PreparedDataset(tmp_path / "ds")
    test_ids = {ds.ids[i] for i in ds.split_indices("test")}
    assert s.excluded_ids_found == 1
    assert {f"1FM{k}.A" for k in range(5)} <= test_ids  # the homologues follow the excluded chain
    assert len(ds.split_indices("train")) == 10


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mmseqs") is None, reason="mmseqs (MMseqs2) not installed")
def test_strict_holdout_leaves_no_train_homologue_in_valid_or_test(tmp_path):
    # families of a 240-residue chain and a 90-residue fragment of it: the fragment covers under
    # 80% of the long chain, so easy-cluster keeps the two apart and they may land in different
    # splits; the strict hold-out must not let a held-out one keep its partner in train
    rng = np.random.default_rng(12)
    recs = []
    for f in range(14):
        full = random_seq(240, rng)
        recs.append(record(f"F{f:02d}.A", full, backbone(240, rng)))
        recs.append(record(f"G{f:02d}.A", full[100:190], backbone(90, rng)))
    js = write_jsonl(tmp_path / "frag.jsonl", recs)
    ex = tmp_path / "exclude.txt"
    ex.write_text("G02.A\nG08.A\n")  # under the cluster hold-out F02 and F08 are in train

    def held_out_with_train_homologue(ds):
        held = [i for s in ("valid", "test") for i in ds.split_indices(s)]
        train = ds.split_indices("train")
        return S.find_homologues(
            [ds.sequence(int(i)) for i in held], [ds.sequence(int(i)) for i in train], 0.3
        )

    common = dict(split="identity", split_identity=0.3, valid_fraction=0.25, test_fraction=0.25)
    prepare([js], tmp_path / "c", PrepareConfig(**common, seed=3), workers=1, **QUIET)
    clusters = PreparedDataset(tmp_path / "c")
    assert held_out_with_train_homologue(clusters)  # else the test below would be vacuous
    cfg = PrepareConfig(**common, seed=3, holdout="strict", exclude_files=(str(ex),))
    s = prepare([js], tmp_path / "s", cfg, workers=1, **QUIET)
    ds = PreparedDataset(tmp_path / "s")
    assert held_out_with_train_homologue(ds) == {}
    test = {ds.ids[i] for i in ds.split_indices("test")}
    train = {ds.ids[i] for i in ds.split_indices("train")}
    # an excluded fragment stays in test, and its full-length partner leaves train: set aside,
    # in no split (in test it would be a held-out chain with train homologues of its own)
    aside = {ds.ids[i] for i in ds.split_indices("aside")}
    assert {"G02.A", "G08.A"} <= test and {"F02.A", "F08.A"} <= aside
    assert not aside & (train | test) and len(aside) == s.holdout_aside == s.splits["aside"]
    assert s.holdout_to_train > 0 and s.holdout_leaks_left == 0
    h = ds.manifest["holdout"]
    assert h["leaks_left"] == 0 and h["moved_to_train"] == s.holdout_to_train
    assert ds.manifest["config"]["holdout"] == "strict" and "strict hold-out" in s.format()
    with pytest.raises(Exception, match="split='identity'"):
        prepare([js], tmp_path / "r", PrepareConfig(holdout="strict"), workers=1, **QUIET)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mmseqs") is None, reason="mmseqs (MMseqs2) not installed")
def test_strict_holdout_moves_no_homologue_of_excluded_sequences_into_train(tmp_path):
    # a held-out full-length chain F whose fragment G is in train: the strict hold-out moves F
    # into train. When F also holds an excluded sequence (its first 100 residues, which G lacks),
    # F must stay out of train; G, its train homologue, is set aside instead
    rng = np.random.default_rng(12)
    full = {f"F{f:02d}.A": random_seq(240, rng) for f in range(14)}
    recs = []
    for fid, seq in full.items():
        recs.append(record(fid, seq, backbone(240, rng)))
        recs.append(record("G" + fid[1:], seq[100:190], backbone(90, rng)))
    js = write_jsonl(tmp_path / "frag.jsonl", recs)
    common = dict(split="identity", split_identity=0.3, valid_fraction=0.25, test_fraction=0.25)
    prepare([js], tmp_path / "c", PrepareConfig(**common, seed=3), workers=1, **QUIET)
    c = PreparedDataset(tmp_path / "c")
    held = {c.ids[i] for s in ("valid", "test") for i in c.split_indices(s)}
    train = {c.ids[i] for i in c.split_indices("train")}
    leaky = sorted(f for f in full if f in held and "G" + f[1:] in train)
    assert leaky  # else the test below would be vacuous
    fasta = tmp_path / "excluded.fasta"
    fasta.write_text("".join(f">{f}-head\n{full[f][:100]}\n" for f in leaky))
    cfg = PrepareConfig(**common, seed=3, holdout="strict", exclude_sequences=(str(fasta),))
    s = prepare([js], tmp_path / "s", cfg, workers=1, **QUIET)
    ds = PreparedDataset(tmp_path / "s")
    train = ds.split_indices("train")
    assert (
        S.find_homologues(
            [ds.sequence(int(i)) for i in train],
            [full[f][:100] for f in leaky],
            0.3,
            S.STRICT_COVERAGE,
        )
        == {}
    )
    held = {ds.ids[i] for s in ("valid", "test") for i in ds.split_indices(s)}
    aside = {ds.ids[i] for i in ds.split_indices("aside")}
    assert set(leaky) <= held and {"G" + f[1:] for f in leaky} <= aside
    assert s.holdout_leaks_left == 0


@pytest.mark.skipif(shutil.which("mmseqs") is None, reason="mmseqs (MMseqs2) not installed")
def test_exclude_sequences_sets_train_homologues_aside(tmp_path, capsys):
    from coordformer.cli import main

    # sequences the dataset lacks (DeepFRI's test FASTA): a train chain holding one as a domain,
    # or a close mutant of one, must leave train; unrelated chains stay
    rng = np.random.default_rng(13)
    listed = [random_seq(120, rng) for _ in range(2)]
    recs = [
        record("H1.A", random_seq(60, rng) + listed[0] + random_seq(60, rng), backbone(240, rng)),
        record("H2.A", mutate(listed[1], 30, rng), backbone(120, rng)),
    ]
    recs += [record(f"U{u:02d}.A", random_seq(100, rng), backbone(100, rng)) for u in range(12)]
    js = write_jsonl(tmp_path / "x.jsonl", recs)
    fasta = tmp_path / "held.fasta"
    fasta.write_text("".join(f">T{k}-A nrPDB_test\n{s}\n" for k, s in enumerate(listed)))
    cfg = PrepareConfig(valid_fraction=0.0, test_fraction=0.0, exclude_sequences=(str(fasta),))
    s = prepare([js], tmp_path / "ds", cfg, workers=1, **QUIET)
    ds = PreparedDataset(tmp_path / "ds")
    aside = {ds.ids[i] for i in ds.split_indices("aside")}
    train = {ds.ids[i] for i in ds.split_indices("train")}
    assert aside == {"H1.A", "H2.A"} and len(train) == 12 and s.excluded_by_sequence == 2
    assert ds.manifest["excluded_by_sequence"] == 2 and "excluded by sequence: 2" in s.format()
    # a missing or malformed file is refused before any work
    bad = tmp_path / "bad.fasta"
    bad.write_text("no header line\n")
    for f in (tmp_path / "none.fasta", bad):
        with pytest.raises(PrepareError, match="exclude-sequences file"):
            prepare([js], tmp_path / "ds2", cfg.replace(exclude_sequences=(str(f),)), **QUIET)
        assert not (tmp_path / "ds2").exists()
    assert (
        main(
            [
                "prepare",
                str(js),
                "--out",
                str(tmp_path / "d3"),
                "--exclude-sequences",
                str(tmp_path / "none.fasta"),
            ]
        )
        == 2
    )
    assert "--exclude-sequences file" in capsys.readouterr().err


def test_identity_split_without_mmseqs(tmp_path, monkeypatch, capsys):
    from coordformer.cli import main

    js = write_jsonl(tmp_path / "m.jsonl", make_records(3))
    monkeypatch.setattr(S.shutil, "which", lambda *a, **k: None)
    with pytest.raises(PrepareError, match=r"apt-get install mmseqs2.*`split='random'`") as e:
        prepare([js], tmp_path / "ds", PrepareConfig(split="identity"), **QUIET)
    assert (e.value.option, e.value.value) == ("split", "identity")
    assert not (tmp_path / "ds" / "manifest.json").exists()
    # the command line names the flags the user typed, not the Python parameter
    assert main(["prepare", str(js), "--out", str(tmp_path / "c"), "--split", "identity"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --split identity: needs MMseqs2") and err.count("\n") == 1
    assert err.endswith("or use --split random\n") and "split=" not in err


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from coordformer.config import PrepareConfig
    from coordformer.data import prepare as P
    from coordformer.data.prepare import consolidate as C, pipeline as PL
    where, n_units, src, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    if where == "units":
        real, done = PL.run_unit, [0]
        def hooked(*a, **k):
            r = real(*a, **k)
            done[0] += 1
            if done[0] >= n_units:
                os.kill(os.getpid(), signal.SIGKILL)
            return r
        PL.run_unit = hooked
    elif where == "parallel":  # kill the parent while worker processes are busy
        real_adv, done = PL._Progress.advance, [0]
        def advance(self, meta):
            real_adv(self, meta)
            done[0] += 1
            if done[0] >= n_units:
                os.kill(os.getpid(), signal.SIGKILL)
        PL._Progress.advance = advance
    else:
        C._before_manifest = lambda out: os.kill(os.getpid(), signal.SIGKILL)
    workers = 2 if where == "parallel" else 1
    if __name__ == "__main__":
        P.prepare(
            [src],
            out,
            PrepareConfig(min_length=10, valid_fraction=0.2, test_fraction=0.2),
            workers=workers,
            progress=False,
            chunk_lines=5,
        )
    """
)


def run_killed(tmp_path, where, n_units, src, out):
    script = tmp_path / "kill_me.py"
    script.write_text(KILL_SCRIPT)
    # worker processes of a killed run must exit on their own (else they would hold the pipes open)
    proc = subprocess.run(
        [sys.executable, str(script), where, str(n_units), str(src), str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr


@pytest.mark.parametrize("where", ["units", "parallel", "consolidation"])
def test_resume_after_sigkill(tmp_path, where):
    recs = make_records(28, seed=11, lmin=12, lmax=30)
    recs.insert(4, "{bad record")
    js = write_jsonl(tmp_path / "k.jsonl", recs)  # 29 lines -> 6 units of <= 5 lines
    cfg = PrepareConfig(min_length=10, valid_fraction=0.2, test_fraction=0.2)
    ref = tmp_path / "ref"
    prepare([js], ref, cfg, chunk_lines=5, **QUIET)

    out = tmp_path / "ds"
    run_killed(tmp_path, where, 3, js, out)
    assert not (out / "manifest.json").exists()
    parts = list((out / ".work" / "parts").glob("*.npz"))
    if where == "parallel":  # workers may finish the units in flight after the parent died
        assert 3 <= len(parts) <= 6
    else:
        assert len(parts) == (3 if where == "units" else 6)
    with pytest.raises(DatasetFormatError, match="unfinished"):
        PreparedDataset(out)

    s = prepare([js], out, cfg, chunk_lines=5, **QUIET)
    assert s.units_resumed == len(parts) and s.n_units == 6
    assert s.chains_kept == 28 and s.inputs_skipped == 1
    ds = PreparedDataset(out)
    assert len(set(ds.ids)) == len(ds.ids) == 28
    a, b = dataset_arrays(ref), dataset_arrays(out)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    for f in (
        "chains.tsv",
        "skipped.tsv",
        "splits/train.txt",
        "splits/valid.txt",
        "splits/test.txt",
    ):
        assert (ref / f).read_text() == (out / f).read_text(), f
    assert not (out / ".work").exists()


def test_resume_refuses_changed_settings(tmp_path):
    js = write_jsonl(tmp_path / "c.jsonl", make_records(12, seed=12, lmin=12, lmax=30))
    out = tmp_path / "ds"
    run_killed(tmp_path, "units", 1, js, out)
    with pytest.raises(PrepareError, match=r"min_length: 10 -> 15.*--overwrite"):
        prepare([js], out, PrepareConfig(min_length=15), chunk_lines=5, **QUIET)
    extra = write_jsonl(tmp_path / "d.jsonl", make_records(2, seed=13))
    with pytest.raises(PrepareError, match="1 added"):
        prepare([js, extra], out, PrepareConfig(min_length=10), chunk_lines=5, **QUIET)
    s = prepare([js], out, PrepareConfig(min_length=15), chunk_lines=5, overwrite=True, **QUIET)
    assert s.units_resumed == 0 and PreparedDataset(out).config.min_length == 15


def test_refuses_to_overwrite_finished_dataset(tmp_path):
    js = write_jsonl(tmp_path / "o.jsonl", make_records(4, seed=14))
    out = tmp_path / "ds"
    prepare([js], out, PrepareConfig(), **QUIET)
    before = (out / "chains.tsv").read_text()
    with pytest.raises(PrepareError, match="already holds a prepared dataset"):
        prepare([js], out, PrepareConfig(min_length=30), **QUIET)
    assert (out / "chains.tsv").read_text() == before
    s = prepare([js], out, PrepareConfig(min_length=1000, max_length=2000), overwrite=True, **QUIET)
    assert s.chains_kept == 0
    ds = PreparedDataset(out)  # an empty dataset is still readable
    assert len(ds) == 0 and ds.split_indices("train").size == 0
    with pytest.raises(PrepareError, match="no structure files"):
        prepare([tmp_path / "nothing_here"], tmp_path / "ds3", **QUIET)


def test_dataset_format_checks(tmp_path):
    js = write_jsonl(tmp_path / "v.jsonl", make_records(5, seed=15))
    out = tmp_path / "ds"
    prepare([js], out, PrepareConfig(), **QUIET)
    ds = PreparedDataset(out)
    with pytest.raises(KeyError, match="unknown split 'nope'.*train"):
        ds.split_indices("nope")
    with pytest.raises(IndexError):
        ds.coords(5)
    assert ds.split_names == ["test", "train", "valid"]

    m = json.loads((out / "manifest.json").read_text())
    m["format_version"] = 99
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DatasetFormatError) as e:
        PreparedDataset(out)
    assert (
        "99" in str(e.value)
        and str(DATASET_FORMAT_VERSION) in str(e.value)
        and str(out) in str(e.value)
    )

    m["format_version"] = DATASET_FORMAT_VERSION
    (out / "manifest.json").write_text(json.dumps(m))
    PreparedDataset(out)
    (out / "coords.npy").unlink()
    with pytest.raises(DatasetFormatError, match="coords.npy"):
        PreparedDataset(out)
    with pytest.raises(DatasetFormatError, match="no manifest"):
        PreparedDataset(tmp_path)


def test_concurrent_run_refused_and_log(tmp_path):
    import fcntl

    js = write_jsonl(tmp_path / "l.jsonl", make_records(3, seed=16))
    out = tmp_path / "ds"
    out.mkdir()
    with open(out / ".prepare.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        with pytest.raises(PrepareError, match="another `prepare`"):
            prepare([js], out, PrepareConfig(), **QUIET)
    messages: list[str] = []
    s = prepare([js], out, PrepareConfig(), log=messages.append, **QUIET)
    assert s.chains_kept == 3
    assert any("3 chains" in m or "kept: 3" in m for m in messages)
    assert "kept: 3" in (out / "prepare.log").read_text()


DATA = Path(__file__).parent / "data"


@pytest.mark.skipif(not (DATA / "1A8O.pdb").exists(), reason="tests/data fixtures missing")
def test_real_structure_fixtures(tmp_path):
    out = tmp_path / "ds"
    s = prepare(
        [DATA], out, PrepareConfig(min_length=5, valid_fraction=0.0, test_fraction=0.0), **QUIET
    )
    ds = PreparedDataset(out)
    rows = read_skipped(out)
    # ions.pdb has no protein chain; 1A8O is there as .cif and .pdb: the .cif (sorted first) wins
    assert any(r[0].endswith("ions.pdb") for r in rows)
    dup = [r for r in rows if r[1].startswith("duplicate id")]
    assert (
        len(dup) == 1
        and "1A8O.pdb" in dup[0][0]
        and ds.source(ds.index_of("1A8O.A")).endswith("1A8O.cif")
    )
    assert s.chains_filtered.get("duplicate id") == 1
    assert len(ds.ids) == len(set(ds.ids)) == s.chains_kept >= 10
    assert {"1A8O.A", "1LZH.A", "1LZH.B", "1A2X.B"} <= set(ds.ids)
    assert ds.split_indices("train").tolist() == list(range(len(ds)))
    for path in (DATA / "1lzh.pdb.gz", DATA / "3JQH.cif"):
        for c in cio.read_structure(path):
            i = ds.index_of(c.id)
            assert ds.sequence(i) == c.sequence
            np.testing.assert_array_equal(ds.coords(i), c.coords)
    # CA-only chains: N, C, O missing but kept
    lz = ds.coords(ds.index_of("1LZH.A"))
    assert np.isnan(lz[:, [0, 2, 3]]).all() and np.isfinite(lz[:, 1]).all()


def test_truncated_gzip_chain_set_salvages_records(tmp_path):
    import gzip

    recs = make_records(30, seed=17)
    data = gzip.compress("".join(json.dumps(r) + "\n" for r in recs).encode())
    gz = tmp_path / "cut.jsonl.gz"
    gz.write_bytes(data[: int(len(data) * 0.6)])
    s = prepare([gz], tmp_path / "ds", PrepareConfig(), chunk_lines=4, **QUIET)
    assert 0 < s.chains_kept < 30 and s.inputs_skipped == 1
    (row,) = read_skipped(tmp_path / "ds")
    assert "cut.jsonl.gz" in row[0] and "truncated" in row[1]
    ds = PreparedDataset(tmp_path / "ds")
    assert ds.ids == [cio.normalize_chain_id(r["name"]) for r in recs[: len(ds)]]


def test_gzipped_chain_set_units(tmp_path):
    import gzip

    recs = make_records(40, seed=18, lmin=20, lmax=22)
    (tmp_path / "p").mkdir()
    plain = write_jsonl(tmp_path / "p" / "s.jsonl", recs)
    gz = tmp_path / "g" / "s.jsonl.gz"
    gz.parent.mkdir()
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    a = prepare([plain], tmp_path / "a", PrepareConfig(), chunk_lines=1, **QUIET)
    b = prepare([gz], tmp_path / "b", PrepareConfig(), chunk_lines=1, **QUIET)
    assert a.n_units == 40 and 1 < b.n_units <= P.GZIP_MAX_UNITS  # gzip: capped number of units
    assert a.chains_kept == b.chains_kept == 40
    for k, v in dataset_arrays(tmp_path / "a").items():
        np.testing.assert_array_equal(v, dataset_arrays(tmp_path / "b")[k])


def test_a_resumed_finish_leaves_no_list_of_the_interrupted_attempt(tmp_path, monkeypatch):
    """The interrupted attempt excluded an id the data lacks (exclude_unmatched.txt) with a random
    split; the resumed one, without exclusions and with other fractions, must not keep that file
    or a split list it does not write."""
    from coordformer.data.prepare import consolidate as C

    js = write_jsonl(tmp_path / "k.jsonl", make_records(12, seed=3))
    ex = tmp_path / "ex.txt"
    ex.write_text("ZZZZ.Q\n")
    out = tmp_path / "ds"
    cfg = PrepareConfig(min_length=10, valid_fraction=0.2, test_fraction=0.2)

    def stop(out):
        raise KeyboardInterrupt

    monkeypatch.setattr(C, "_before_manifest", stop)
    with pytest.raises(KeyboardInterrupt):
        prepare([js], out, cfg.replace(exclude_files=(str(ex),)), **QUIET)
    assert (out / "exclude_unmatched.txt").exists() and (out / "splits" / "test.txt").exists()
    (out / "splits" / "aside.txt").write_text("S000.A\n")  # as a strict hold-out would have
    monkeypatch.undo()
    prepare([js], out, cfg, **QUIET)
    assert not (out / "exclude_unmatched.txt").exists()
    assert sorted(p.name for p in (out / "splits").iterdir()) == [
        "test.txt",
        "train.txt",
        "valid.txt",
    ]
    assert sorted(PreparedDataset(out).split_names) == ["test", "train", "valid"]


def test_a_symbolic_link_names_its_chains_by_its_own_name(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    (tmp_path / "in").mkdir()
    xyz = np.random.default_rng(0).normal(size=(20, 4, 3)) * 5
    write_pdb(store / "blob_123.pdb", {"A": ("AGKLESAGKLESAGKLESAG", xyz)})
    (tmp_path / "in" / "mymodel.pdb").symlink_to(store / "blob_123.pdb")
    assert [c.id for c in cio.read_structure(tmp_path / "in" / "mymodel.pdb")] == ["mymodel.A"]
    prepare(
        [tmp_path / "in"],
        tmp_path / "ds",
        PrepareConfig(min_length=10, valid_fraction=0, test_fraction=0),
        **QUIET,
    )
    ds = PreparedDataset(tmp_path / "ds")
    assert list(ds.ids) == ["mymodel.A"]


def test_a_chain_set_whose_first_record_is_broken_keeps_the_others(tmp_path):
    """The format was decided by the first line alone: a truncated first record made the whole
    file 'a JSON file that is not chain_set JSONL', and its good records were lost."""
    recs = make_records(4, seed=5)
    js = write_jsonl(tmp_path / "a.jsonl", ['{"name": "X.A", "seq": "AC', *recs])
    assert cio.is_chain_set(js)
    s = prepare(
        [js],
        tmp_path / "ds",
        PrepareConfig(min_length=10, valid_fraction=0, test_fraction=0),
        **QUIET,
    )
    assert s.chains_kept == 4 and s.inputs_skipped == 1
    assert f"{js}:1\tinvalid JSON" in (tmp_path / "ds" / "skipped.tsv").read_text()
    # a JSON file of other records is still not taken for one
    other = write_jsonl(tmp_path / "b.jsonl", ["not json", {"a": 1}, *recs])
    assert not cio.is_chain_set(other)


def test_the_fingerprint_follows_the_data_not_its_counts_or_paths(tmp_path, monkeypatch):
    """It hashed the manifest only: two datasets of equal counts shared one (so `pretrain` resumed
    a run on the other), and the same data with an --exclude file named by another path did not."""
    from coordformer.data.store import manifest_fingerprint

    cfg = PrepareConfig(min_length=10, valid_fraction=0, test_fraction=0)
    a = write_jsonl(tmp_path / "a.jsonl", make_records(5, seed=1))
    b = write_jsonl(tmp_path / "b.jsonl", make_records(5, seed=2))
    ex = tmp_path / "ex.txt"
    ex.write_text("NONE.A\n")
    monkeypatch.chdir(tmp_path)
    prints = {}
    for name, src, exclude in (
        ("a", a, str(ex)),
        ("b", b, str(ex)),
        ("a_again", a, "ex.txt"),  # the same file, named relatively
    ):
        prepare([src], tmp_path / name, cfg.replace(exclude_files=(exclude,)), **QUIET)
        ds = PreparedDataset(tmp_path / name)
        prints[name] = ds.fingerprint
    assert len(PreparedDataset(tmp_path / "a")) == len(PreparedDataset(tmp_path / "b"))
    assert prints["a"] != prints["b"]
    assert prints["a"] == prints["a_again"]
    # a manifest from before the digest keeps its fingerprint of the manifest itself
    manifest = dict(PreparedDataset(tmp_path / "a").manifest)
    old = {k: v for k, v in manifest.items() if k != "content_digest"}
    assert manifest_fingerprint(old) != prints["a"]
    assert manifest_fingerprint(old) == manifest_fingerprint({**old, "created": "another day"})
