"""Tests for the parts of coordformer.data.prepare other code builds on: the typed per-chain policy
and the PrepareConfig fingerprint that decides whether an interrupted run resumes."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from coordformer.config import PrepareConfig
from coordformer.data.prepare import (
    MISSING_CA,
    TOO_SHORT,
    ChainPolicy,
    Kept,
    PrepareError,
    Rejected,
    pipeline,
    prepare,
    resume_mismatch,
    run_fingerprint,
)

QUIET = dict(progress=False, log=lambda m: None)


def chain(n: int, seed: int = 0, b_factors=None, seq: str | None = None):
    rng = np.random.default_rng(seed)
    ca = np.cumsum(rng.normal(size=(n, 3)) * 2.2, axis=0)
    coords = ca[:, None, :] + np.array(
        [[-1.2, 0.6, 0.3], [0, 0, 0], [1.3, 0.5, -0.2], [1.9, 1.5, 0.4]]
    )
    return SimpleNamespace(
        id="X.A",
        sequence=seq or "ACDEFGHIKL" * (n // 10) + "A" * (n % 10),
        coords=coords.astype(np.float32),
        source="x",
        b_factors=b_factors,
    )


# ----------------------------------------------------------------------------------------------
# policy
# ----------------------------------------------------------------------------------------------


def test_kept_chain_is_typed():
    b = np.full(30, 0.9)  # a 0-1 pLDDT file: stored as 0-100
    policy = ChainPolicy(min_length=10, max_length=50, max_missing_ca=0.5)
    v = policy.check(chain(30, b_factors=b, seq="acdefghikl" * 3))
    assert isinstance(v, Kept) and dataclasses.is_dataclass(v)
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.seq = None  # type: ignore[misc]
    assert v.seq.dtype == np.uint8 and v.sequence == "ACDEFGHIKL" * 3 and len(v) == 30
    assert (
        v.coords.dtype == np.float32
        and v.coords.shape == (30, 4, 3)
        and np.isfinite(v.coords).all()
    )
    assert v.plddt.dtype == np.float32 and np.allclose(v.plddt, 90.0)
    assert v.n_low_plddt == 0 and not v.zero_coords


def test_rejected_chain_has_reason_and_detail():
    policy = ChainPolicy(min_length=20, max_length=50, max_missing_ca=0.25)
    v = policy.check(chain(12))
    assert v == Rejected(TOO_SHORT, "12 residues < min_length 20")
    assert v.message == "too short: 12 residues < min_length 20"
    c = chain(30)
    c.coords[:10, 1] = np.nan
    v = policy.check(c)
    assert isinstance(v, Rejected) and v.reason == MISSING_CA and "33%" in v.detail


def test_plddt_min_masks_residues_before_missing_ca():
    b = np.full(20, 90.0)
    b[:3] = 40.0
    v = ChainPolicy(plddt_min=50).check(chain(20, b_factors=b))
    assert isinstance(v, Kept) and v.n_low_plddt == 3 and np.isnan(v.coords[:3]).all()
    v = ChainPolicy(max_missing_ca=0.1, plddt_min=50).check(chain(20, b_factors=b))
    assert isinstance(v, Rejected) and v.detail.endswith("(3 residues below plddt_min 50)")


def test_policy_from_config_and_defaults():
    cfg = PrepareConfig(min_length=5, max_length=99, max_missing_ca=0.3, plddt_min=70)
    p = ChainPolicy.from_config(cfg)
    assert p == ChainPolicy(5, 99, 0.3, 70)
    assert p.sequence_only().max_missing_ca == 1.0 and p.sequence_only().min_length == 5
    # the default policy is the coordinate rule only: a long chain without any coordinates passes
    c = chain(200)
    c.coords[:] = np.nan
    assert isinstance(ChainPolicy().check(c), Kept)
    c.coords[0, 0] = 2e4
    assert ChainPolicy().check(c).reason == "bad coordinates"


def test_prepare_and_io_do_not_import_torch():
    code = (
        "import sys, coordformer.data.prepare, coordformer.data.prepare.pool; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


# ----------------------------------------------------------------------------------------------
# the config as the resume fingerprint
# ----------------------------------------------------------------------------------------------


def test_every_config_field_is_in_the_fingerprint_or_consolidation_only():
    cfg = PrepareConfig()
    changed = {
        "min_length": 5,
        "max_length": 7,
        "max_missing_ca": 0.1,
        "plddt_min": 50.0,
        "chains": ("A",),
        "store_plddt": True,
        "seqres": "gaps",
    }
    assert set(changed) | set(PrepareConfig.CONSOLIDATION_FIELDS) == {
        f.name for f in dataclasses.fields(cfg)
    }
    for name, value in changed.items():  # a new field must be put in one of the two lists
        assert cfg.replace(**{name: value}).unit_fingerprint() != cfg.unit_fingerprint(), name


SRC = [["/x/a.pdb", 10, 1]]  # [path, size, mtime_ns] per source


def test_resume_decision():
    cfg = PrepareConfig(min_length=10)
    fp = run_fingerprint(cfg, 500, SRC, [])
    # the layout older versions wrote: defaults of later options are left out, so their states match
    assert fp == {
        "format_version": fp["format_version"],
        "chunk_lines": 500,
        "sources": SRC,
        "bad_paths": [],
        "filters": {"min_length": 10, "max_length": 100_000, "max_missing_ca": 0.5},
    }
    assert resume_mismatch(json.loads(json.dumps(fp)), fp) is None
    # splits and exclusions are applied when the dataset is assembled: changing them still resumes
    other = cfg.replace(seed=3, valid_fraction=0.2, split_identity=0.5, exclude_files=("ex.txt",))
    assert resume_mismatch(fp, run_fingerprint(other, 500, SRC, [])) is None

    def changed(**kw):
        return resume_mismatch(fp, run_fingerprint(cfg.replace(**kw), 500, SRC, []))

    assert changed(min_length=15) == "min_length: 10 -> 15"
    assert changed(plddt_min=70) == "plddt_min: None -> 70"
    assert (
        resume_mismatch(fp, run_fingerprint(cfg, 500, [["/x/a.pdb", 11, 2]], []))
        == "sources: 1 modified since (e.g. /x/a.pdb)"
    )
    assert resume_mismatch(None, fp) == resume_mismatch([], fp) == "unreadable state.json"


def test_interrupted_run_resumes_with_other_splits_not_other_filters(tmp_path, monkeypatch):
    fasta = tmp_path / "s.fasta"
    fasta.write_text(
        "".join(f">C{i}.A\n{'ACDEFGHIKLMNPQRSTVWY'[i:] + 'A' * i}\n" for i in range(8))
    )
    out = tmp_path / "ds"

    def interrupted(run, summary, log):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "consolidate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare([fasta], out, PrepareConfig(min_length=10), **QUIET)
    monkeypatch.undo()
    assert (out / ".work" / "state.json").exists()
    with pytest.raises(PrepareError, match=r"min_length: 10 -> 12.*--overwrite"):
        prepare([fasta], out, PrepareConfig(min_length=12), **QUIET)
    s = prepare([fasta], out, PrepareConfig(min_length=10, seed=5, valid_fraction=0.25), **QUIET)
    assert s.units_resumed == 1 and s.chains_kept == 8


def _crash_on_bad(unit):
    """A pool task: kills its own process on the unit named 'bad', returns the path otherwise."""
    import os
    import time

    if unit.path.rsplit("/", 1)[-1].startswith("bad"):
        os._exit(3)
    time.sleep(0.3)  # the bad unit kills the pool while these are still in flight
    return unit.path


def _crash_always():
    """A worker task that kills its process: a worker that cannot run anything."""
    import os

    os._exit(3)


@pytest.mark.slow
@pytest.mark.parametrize("bad_first", [True, False])
def test_a_unit_that_kills_its_worker_is_skipped_whatever_order_it_is_retried_in(
    bad_first, monkeypatch
):
    """A bad input retried before any good one finished must not fail the run (the retry order
    follows future completion, which varies); when nothing at all finishes, a worker that runs
    nothing tells bad inputs (skipped) from workers that cannot run (the run fails)."""
    from coordformer.data.prepare import pool
    from coordformer.data.prepare.errors import PrepareError
    from coordformer.data.prepare.pool import map_units
    from coordformer.data.prepare.units import WorkUnit

    names = ["bad.pdb", *(f"good{i}.pdb" for i in range(3))]
    units = [WorkUnit("file", f"/x/{n}") for n in (names if bad_first else names[::-1])]
    done, logged = [], []
    map_units(
        units,
        _crash_on_bad,
        2,
        done.append,
        lambda u, why: ("skipped", u.path, why),
        lambda msg, *a: logged.append(msg),
    )
    assert sorted(d for d in done if isinstance(d, str)) == [f"/x/good{i}.pdb" for i in range(3)]
    skipped = [d for d in done if isinstance(d, tuple)]
    assert [s[1] for s in skipped] == ["/x/bad.pdb"] and "crashed" in skipped[0][2]
    assert any("bad.pdb: worker crashed on this input twice; skipped" in m for m in logged)
    # only bad units (a resumed run's last inputs): skipped, since a worker that runs nothing runs
    only_bad = [WorkUnit("file", "/x/bad1.pdb"), WorkUnit("file", "/x/bad2.pdb")]
    done = []
    map_units(
        only_bad, _crash_on_bad, 2, done.append, lambda u, why: ("skipped", u.path), lambda *a: None
    )
    assert sorted(done) == [("skipped", "/x/bad1.pdb"), ("skipped", "/x/bad2.pdb")]
    # workers that cannot even run that: the run fails, saying so
    monkeypatch.setattr(pool, "_noop", _crash_always)
    with pytest.raises(PrepareError, match="die before finishing any input"):
        map_units(only_bad, _crash_on_bad, 2, done.append, lambda u, why: None, lambda *a: None)


CRASH_HOOK = """
import os, signal
import coordformer.io.structures as S
_real = S.read_bytes
def read_bytes(path):
    if os.path.basename(str(path)).startswith("zzz_crash"):
        os.kill(os.getpid(), signal.SIGKILL)  # as a native library's fault would
    return _real(path)
S.read_bytes = read_bytes
"""


@pytest.mark.slow
def test_a_resumed_prepare_whose_last_input_crashes_its_reader_skips_it(tmp_path, monkeypatch):
    """With workers, a run's last pending unit ran in the main process: an input that kills its
    reader (segfault, out of memory) then killed the whole resumed run, every time."""
    import shutil
    import subprocess
    import sys

    from conftest import DATA

    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(DATA / "1orc.pdb", src / "a.pdb")
    shutil.copy(DATA / "1A8O.pdb", src / "b.pdb")
    shutil.copy(DATA / "1orc.pdb", src / "zzz_crash.pdb")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(CRASH_HOOK)
    out = tmp_path / "ds"
    # the interrupted run (Ctrl-C as it reached the bad input): the good inputs done
    import os

    import coordformer.io.structures as S
    from coordformer.data.store import PreparedDataset

    real = S.read_bytes

    def interrupted(path):
        if os.path.basename(str(path)).startswith("zzz_crash"):
            raise KeyboardInterrupt
        return real(path)

    monkeypatch.setattr(S, "read_bytes", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare([src], out, PrepareConfig(min_length=1), **QUIET)
    monkeypatch.undo()
    assert len(list((out / ".work" / "parts").glob("*.npz"))) == 2

    env = {**os.environ, "PYTHONPATH": f"{hook}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    args = ["prepare", str(src), "--out", str(out), "--min-length", "1", "--workers", "2"]
    r = subprocess.run(
        [sys.executable, "-m", "coordformer", *args, "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert (
        "resuming an interrupted run: 2 of 3 units already done"
        in (out / "prepare.log").read_text()
    )
    skipped = (out / "skipped.tsv").read_text()
    assert "zzz_crash.pdb" in skipped and "crashed" in skipped
    assert sorted(PreparedDataset(out).ids) == ["1A8O.A", "1ORC.A"]
