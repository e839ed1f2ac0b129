"""Fuzz the PDB / mmCIF / chain_set JSONL readers with hypothesis-generated inputs.

    python benchmarks/fuzz_parsers.py --examples 2000 --seed 0

Property (the readers' contract): reading either succeeds, and then every Chain has a str
sequence of L >= 1 letters from the 20-letter alphabet plus X and float32 coords of shape
[L, 4, 3] holding only finite numbers or NaN, or it fails with StructureReadError naming the
file (read_structure raises it; iter_chain_set raises it for an unreadable file and yields it,
naming "path:line", for a bad line). Any other exception is a crash. One target,
``jsonl_valid_records``, is stricter: well-formed records must parse and keep their values.

Inputs per target: mutations of the real fixtures in tests/data (byte flips, truncation, line
deletion / duplication, inserted junk, numbers replaced by junk text, CRLF, gzip of the mutated
content, truncated gzip), arbitrary bytes, and chain_set records built from structured
strategies (wrong types and lengths, NaN / Infinity / huge numbers, missing keys, nested junk).

Prints per target the inputs tried, how many parsed OK, how many gave StructureReadError and how
many crashed; tracebacks of the first crashes (and the inputs) go to --crash-dir. Exit status 1
if anything crashed. tests/test_fuzz.py imports the targets from here for a short, derandomized
campaign.
"""

from __future__ import annotations

import argparse
import faulthandler
import gzip
import json
import re
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from coordformer.constants import AMINO_ACIDS, BACKBONE_ATOMS
from coordformer.io import (
    Chain,
    StructureReadError,
    count_lines,
    is_chain_set,
    iter_chain_set,
    read_structure,
)

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
PDB_FIXTURES = ("1A8O.pdb", "1orc.pdb", "4hhh_frag.pdb", "1LCD.pdb", "ions.pdb", "1lzh.pdb.gz")
CIF_FIXTURES = ("1A8O.cif", "3JQH.cif", "5i55.cif")
JSONL_FIXTURES = ("chain_set_small.jsonl",)
STRUCTURE_NAME_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif")
SEQUENCE_LETTERS = frozenset(AMINO_ACIDS + "X")

# Tokens that tend to reach parser corner cases: number syntax gemmi / json might half-accept,
# values that overflow float32, CIF / PDB / JSON structural keywords, control and non-ASCII bytes.
JUNK_TOKENS = (
    b"abc", b"nan", b"NaN", b"inf", b"-inf", b"Infinity", b"-Infinity", b"1e40", b"-1e39", b"1e400",
    b"1e308", b"99999999", b"-99999999", b"3.5e38", b"?", b".", b"", b"-", b"+", b"--1", b"1.2.3",
    b"0x1F", b"-0", b"1e", b"e5", b"null", b"true", b'"1.0"', b"[]", b"{}", b"[", b"]", b"{", b"}",
    b",", b":", b"\x00", b"\xff\xfe", "\u00e9\u00df\u2603".encode(), b"\r", b"\n", b"\t", b"'",
    b'"', b";", b"#", b"loop_", b"data_", b"_atom_site.Cartn_x", b"_atom_site.occupancy", b"ATOM  ",
    b"HETATM", b"MODEL     2", b"ENDMDL", b"END", b"TER", b"SEQRES", b"MODRES", b"HEADER",
    b"ALTLOC", b"MSE", b"UNK", b"HOH", b"DA ",
)  # fmt: skip
_NUMBER_RE = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


class InvariantViolation(AssertionError):
    """A reader returned something that breaks its documented contract (counted as a crash)."""


# --------------------------------------------------------------------------- fixture mutations


@lru_cache(maxsize=None)
def fixture_bytes(name: str) -> bytes:
    data = (DATA / name).read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def _line_bounds(data: bytes, pos: int) -> int:
    return data.rfind(b"\n", 0, pos) + 1


def _line_end(data: bytes, start: int, count: int) -> int:
    end = start
    for _ in range(count):
        nxt = data.find(b"\n", end)
        if nxt < 0:
            return len(data)
        end = nxt + 1
    return end


# what a number field gets replaced with: half the time something number-like that a lenient
# parser may accept (overflowing float32, NaN / Infinity spellings, half-numbers)
NUMBER_TOKENS = (
    b"nan", b"NaN", b"inf", b"-inf", b"Infinity", b"1e40", b"-1e39", b"3.5e38", b"1e400", b"1e308",
    b"99999999", b"-0", b"1e", b"--1", b"1.2.3", b"0x1F", b"?", b".", b"", b"null", b"abc",
)  # fmt: skip
junk_bytes = st.one_of(
    st.sampled_from(JUNK_TOKENS), st.binary(max_size=24), st.text(max_size=8).map(str.encode)
)


def _flip(draw, pos, data: bytes) -> bytes:
    if not data:
        return data
    i = pos(len(data) - 1)
    return data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1 :]


def _truncate(draw, pos, data: bytes) -> bytes:
    return data[: pos(len(data))]


def _delete_lines(draw, pos, data: bytes) -> bytes:
    start = _line_bounds(data, pos(len(data)))
    return data[:start] + data[_line_end(data, start, draw(st.integers(1, 40))) :]


def _duplicate_lines(draw, pos, data: bytes) -> bytes:
    start = _line_bounds(data, pos(len(data)))
    block = data[start : _line_end(data, start, draw(st.integers(1, 40)))]
    # elsewhere as well as in place: ATOM records after END / in another chain or model
    at = _line_bounds(data, pos(len(data)))
    return data[:at] + block + data[at:]


def _insert_junk(draw, pos, data: bytes) -> bytes:
    i = pos(len(data))
    return data[:i] + draw(junk_bytes) + data[i:]


def _replace_number(draw, pos, data: bytes) -> bytes:
    m = _NUMBER_RE.search(data, pos(len(data))) or _NUMBER_RE.search(data)
    if m is None:
        return data
    new = draw(st.one_of(st.sampled_from(NUMBER_TOKENS), junk_bytes))
    if draw(st.booleans()):  # keep the width so PDB columns stay aligned and reach gemmi
        width = m.end() - m.start()
        new = new[:width].rjust(width)
    return data[: m.start()] + new + data[m.end() :]


_ATOM_LINE_RE = re.compile(rb"(?:^|\n)(?:ATOM|HETATM)[^\n]*")
_TOKEN_RE = re.compile(rb"\S+")


def _replace_atom_field(draw, pos, data: bytes) -> bytes:
    # atom records are where the per-atom checks (coordinates, occupancy, names) live
    m = _ATOM_LINE_RE.search(data, pos(len(data))) or _ATOM_LINE_RE.search(data)
    if m is None:
        return _replace_number(draw, pos, data)
    tokens = list(_TOKEN_RE.finditer(data, m.start(), m.end()))
    t = tokens[draw(st.integers(0, len(tokens) - 1))]
    new = draw(st.one_of(st.sampled_from(NUMBER_TOKENS), junk_bytes))
    if draw(st.booleans()):
        new = new[: t.end() - t.start()].rjust(t.end() - t.start())
    return data[: t.start()] + new + data[t.end() :]


def _crlf(draw, pos, data: bytes) -> bytes:
    return data.replace(b"\n", b"\r\n")


MUTATIONS: tuple[Callable, ...] = (
    _flip, _truncate, _delete_lines, _duplicate_lines, _insert_junk, _crlf,
    # weighted up: the other mutations mostly stop the parser early, this one reaches the
    # deep checks
    _replace_number, _replace_number, _replace_atom_field, _replace_atom_field,
)  # fmt: skip


@st.composite
def mutated_fixture(draw, fixtures: tuple[str, ...]) -> bytes:
    data = fixture_bytes(draw(st.sampled_from(fixtures)))
    # hypothesis draws integers log-uniformly (mostly near 0, i.e. the file header); a seeded
    # Random spreads positions over the whole file, a plain draw still hits the edges
    rnd = draw(st.randoms(use_true_random=True))

    def pos(n: int) -> int:
        return draw(st.integers(0, n)) if draw(st.integers(0, 3)) == 0 else rnd.randint(0, n)

    for _ in range(draw(st.integers(1, 3))):
        data = draw(st.sampled_from(MUTATIONS))(draw, pos, data)
    return data


@st.composite
def packaged(
    draw, content: st.SearchStrategy[bytes], suffixes: st.SearchStrategy[str]
) -> tuple[bytes, str]:
    """(file bytes, file suffix): the content plain, gzipped or gzipped and truncated."""
    data, suffix = draw(content), draw(suffixes)
    mode = draw(st.sampled_from(("plain", "plain", "gzip", "truncated_gzip")))
    if mode == "plain":
        return data, suffix
    gz = gzip.compress(data, compresslevel=1, mtime=0)
    if mode == "truncated_gzip":
        gz = gz[: draw(st.integers(0, len(gz) - 1))]
    return gz, suffix + ".gz"


def _native_suffix(native: str) -> st.SearchStrategy[str]:
    # mostly the native suffix; sometimes another so that content sniffing is exercised too
    return st.one_of(
        st.just(native), st.just(native), st.just(native), st.sampled_from(STRUCTURE_NAME_SUFFIXES)
    )


arbitrary_structure_bytes = st.tuples(
    st.sampled_from(
        (b"", b"", b"data_x\n", b"ATOM  ", b"HEADER    ", b"data_x\nloop_\n_atom_site.Cartn_x\n")
    ),
    st.one_of(st.binary(max_size=2048), st.text(max_size=512).map(str.encode)),
).map(b"".join)


# --------------------------------------------------------------------------- chain_set records

finite32 = st.floats(allow_nan=False, allow_infinity=False, width=32)
weird_number = st.one_of(
    st.floats(),
    st.integers(),
    st.sampled_from(
        (
            1e300,
            -1e300,
            3.5e38,
            -1e39,
            float("nan"),
            float("inf"),
            -float("inf"),
            10**400,
            -(10**40),
            True,
        )
    ),
)
json_junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)
coord_value = st.one_of(finite32, finite32, st.none(), weird_number, json_junk)
coord_row = st.one_of(
    st.lists(finite32, min_size=3, max_size=3),
    st.lists(coord_value, min_size=3, max_size=3),
    st.none(),
    st.lists(coord_value, max_size=5),
    json_junk,
)
# valid rows with the values that are legal but unusual: NaN, null, ints, huge-but-finite, +/-0
plain_row = st.one_of(
    st.lists(finite32, min_size=3, max_size=3),
    st.lists(finite32, min_size=3, max_size=3),
    st.lists(
        st.one_of(
            finite32, st.none(), st.just(float("nan")), st.integers(-(10**6), 10**6), weird_number
        ),
        min_size=3,
        max_size=3,
    ),
    st.none(),
)


@st.composite
def chain_set_record(draw):
    """A chain_set record that looks valid but may have wrong types, lengths, values or keys."""
    n = draw(st.integers(1, 10))
    seq = draw(
        st.one_of(
            st.text(alphabet=AMINO_ACIDS + "XUOBZxacgt", min_size=n, max_size=n),
            st.text(min_size=n, max_size=n),
        )
    )
    # most records are damaged in one place only, so that the damage reaches the deep checks
    clean = draw(st.booleans())
    row = plain_row if clean else coord_row
    n_coords = n if clean else n + draw(st.sampled_from((0, 0, 0, -1, 1)))
    layout = draw(st.sampled_from(("dict", "dict", "list", "junk")))
    if layout == "dict" or (clean and layout == "junk"):
        coords = {}
        for atom in BACKBONE_ATOMS + ("CB",):
            kind = (
                "rows"
                if clean
                else draw(st.sampled_from(("rows", "rows", "rows", "missing", "null", "junk")))
            )
            if kind == "rows":
                coords[atom] = draw(st.lists(row, min_size=n_coords, max_size=n_coords))
            elif kind == "null":
                coords[atom] = None
            elif kind == "junk":
                coords[atom] = draw(json_junk)
    elif layout == "list":
        residue = st.lists(row, min_size=4, max_size=4)
        if not clean:
            residue = residue | st.lists(row, max_size=5) | json_junk
        coords = draw(st.lists(residue, min_size=n_coords, max_size=n_coords))
    else:
        coords = draw(json_junk)
    pdb_name = st.from_regex(r"[0-9][A-Z0-9]{3}[._-][A-Za-z0-9]{1,2}", fullmatch=True)
    name = draw(pdb_name if clean or draw(st.booleans()) else st.text(max_size=10))
    rec = {"name": name, "seq": seq, "coords": coords}
    b_value = st.one_of(finite32, st.none(), weird_number) if clean else coord_value
    if draw(st.booleans()):
        rec["b_factors"] = draw(
            st.lists(b_value, min_size=n, max_size=n) if clean else st.lists(b_value) | json_junk
        )
    if draw(st.booleans()):
        ids = st.lists(st.text(max_size=4) | st.integers(), min_size=n, max_size=n)
        rec["residue_ids"] = draw(ids if clean else ids | json_junk)
    for key in () if clean else draw(st.sets(st.sampled_from(sorted(rec)), max_size=2)):
        if draw(st.booleans()):
            del rec[key]
        else:
            rec[key] = draw(json_junk)
    return rec


@st.composite
def chain_set_file(draw) -> bytes:
    lines = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(("record", "record", "record", "blank", "junk_json", "text")))
        if kind == "record":
            lines.append(json.dumps(draw(chain_set_record())))
        elif kind == "blank":
            lines.append(" ")
        elif kind == "junk_json":
            lines.append(json.dumps(draw(json_junk)))
        else:
            lines.append(draw(st.text(max_size=40)).replace("\n", " "))
    return "\n".join(lines).encode()


@st.composite
def wellformed_record(draw) -> dict:
    """A record every reader version must accept: the contract of the format, any text as seq."""
    n = draw(st.integers(1, 10))
    value = st.one_of(finite32, st.none(), st.just(float("nan")), st.integers(-(10**6), 10**6))
    triple = st.lists(value, min_size=3, max_size=3)
    if draw(st.booleans()):
        coords = {
            atom: draw(st.none() | st.lists(triple | st.none(), min_size=n, max_size=n))
            for atom in BACKBONE_ATOMS
        }
    else:
        coords = draw(
            st.lists(st.lists(triple | st.none(), min_size=4, max_size=4), min_size=n, max_size=n)
        )
    name = draw(st.text(min_size=1, max_size=12).filter(str.strip))
    return {"name": name, "seq": draw(st.text(min_size=n, max_size=n)), "coords": coords}


def _expected_coords(rec: dict) -> np.ndarray:
    n = len(rec["seq"])
    out = np.full((n, 4, 3), np.nan, dtype=np.float32)
    coords = rec["coords"]
    for i in range(n):
        for k, atom in enumerate(BACKBONE_ATOMS):
            row = coords[atom] and coords[atom][i] if isinstance(coords, dict) else coords[i][k]
            for j, v in enumerate(row or ()):
                if v is not None:
                    out[i, k, j] = v
    return out


# --------------------------------------------------------------------------- checks


def check_chain(chain, where: str) -> None:
    def bad(msg: str):
        raise InvariantViolation(f"{where}: {msg} ({chain!r})")

    if not isinstance(chain, Chain):
        bad(f"not a Chain: {type(chain).__name__}")
    if not isinstance(chain.id, str) or not isinstance(chain.sequence, str):
        bad("id / sequence not str")
    n = len(chain.sequence)
    if n < 1:
        bad("empty chain")
    if not set(chain.sequence) <= SEQUENCE_LETTERS:
        bad(
            "sequence letters outside the alphabet: "
            f"{sorted(set(chain.sequence) - SEQUENCE_LETTERS)}"
        )
    coords = chain.coords
    if (
        not isinstance(coords, np.ndarray)
        or coords.dtype != np.float32
        or coords.shape != (n, 4, 3)
    ):
        bad(
            f"coords {type(coords).__name__} {getattr(coords, 'dtype', None)} "
            f"{getattr(coords, 'shape', None)}"
        )
    if np.isinf(coords).any():
        bad("infinite coordinate")
    if chain.b_factors is not None and (
        chain.b_factors.dtype != np.float32 or chain.b_factors.shape != (n,)
    ):
        bad("b_factors not float32 [L]")
    if chain.residue_ids is not None and len(chain.residue_ids) != n:
        bad("residue_ids not one per residue")


def _check_error(err: StructureReadError, source: str) -> None:
    if err.source != source or not err.reason:
        raise InvariantViolation(
            f"StructureReadError source {err.source!r} (expected {source!r}), reason {err.reason!r}"
        )


def check_structure_file(path: Path) -> str:
    """'ok' or 'error'; raises anything else (a crash)."""
    try:
        chains = read_structure(path)
    except StructureReadError as e:
        _check_error(e, str(path))
        return "error"
    if not isinstance(chains, list) or not chains:
        raise InvariantViolation(f"read_structure returned {chains!r}")
    for c in chains:
        check_chain(c, str(path))
    return "ok"


def read_chain_set_file(path: Path) -> tuple[str, list]:
    """('ok' | 'error', the chains read); raises anything else (a crash)."""
    if not isinstance(is_chain_set(path), bool):  # documented never to raise
        raise InvariantViolation("is_chain_set did not return a bool")
    try:
        count_lines(path)
    except StructureReadError as e:
        _check_error(e, str(path))
    try:
        items = iter_chain_set(path)
    except StructureReadError as e:
        _check_error(e, str(path))
        return "error", []
    outcome, chains = "ok", []
    for item in items:
        if isinstance(item, StructureReadError):
            if not item.source.startswith(f"{path}:") or not item.reason:
                raise InvariantViolation(f"yielded error names {item.source!r}, not {path}:LINE")
            outcome = "error"
        else:
            check_chain(item, str(path))
            chains.append(item)
    return outcome, chains


def check_chain_set_file(path: Path) -> str:
    return read_chain_set_file(path)[0]


def check_wellformed_file(path: Path, records: list[dict]) -> str:
    outcome, chains = read_chain_set_file(path)
    if outcome != "ok" or len(chains) != len(records):
        items = [x.reason if isinstance(x, StructureReadError) else x for x in iter_chain_set(path)]
        raise InvariantViolation(f"well-formed records not all read: {items}")
    for rec, chain in zip(records, chains):
        if len(chain) != len(rec["seq"]):
            raise InvariantViolation(f"sequence {rec['seq']!r} read as {chain.sequence!r}")
        want = _expected_coords(rec)
        if not np.array_equal(chain.coords, want, equal_nan=True):
            raise InvariantViolation(f"coords differ for {rec!r}")
    return "ok"


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    strategy: st.SearchStrategy
    #: (file bytes, suffix, drawn value) from one example
    to_file: Callable[[object], tuple[bytes, str]]
    check: Callable[[Path, object], str]


def _packed(case):
    return case


def _structure_check(path: Path, case) -> str:
    return check_structure_file(path)


def _chain_set_check(path: Path, case) -> str:
    return check_chain_set_file(path)


def _wellformed_file(records: list[dict]) -> tuple[bytes, str]:
    return "\n".join(json.dumps(r) for r in records).encode() + b"\n", ".jsonl"


TARGETS: dict[str, Target] = {
    "pdb_mutated": Target(
        packaged(mutated_fixture(PDB_FIXTURES), _native_suffix(".pdb")), _packed, _structure_check
    ),
    "cif_mutated": Target(
        packaged(mutated_fixture(CIF_FIXTURES), _native_suffix(".cif")), _packed, _structure_check
    ),
    "structure_bytes": Target(
        packaged(arbitrary_structure_bytes, st.sampled_from(STRUCTURE_NAME_SUFFIXES)),
        _packed,
        _structure_check,
    ),
    "jsonl_mutated": Target(
        packaged(mutated_fixture(JSONL_FIXTURES), st.just(".jsonl")), _packed, _chain_set_check
    ),
    "jsonl_bytes": Target(
        packaged(st.binary(max_size=2048), st.just(".jsonl")), _packed, _chain_set_check
    ),
    "jsonl_records": Target(
        packaged(chain_set_file(), st.just(".jsonl")), _packed, _chain_set_check
    ),
    "jsonl_valid_records": Target(
        st.lists(wellformed_record(), min_size=1, max_size=3),
        _wellformed_file,
        lambda path, records: check_wellformed_file(path, records),
    ),
}


def run_case(target: Target, case, workdir: Path) -> str:
    """Write one drawn input to ``workdir`` and check the reader on it: 'ok' or 'error'.
    Raises (InvariantViolation or whatever the reader let escape) on a crash."""
    data, suffix = target.to_file(case)
    path = workdir / f"input{suffix}"
    path.write_bytes(data)
    return target.check(path, case)


# hypothesis' health checks guard test suites against slow / huge data; neither matters here
FUZZ_HEALTH_CHECKS = [
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.large_base_example,
]


def campaign(
    name: str, examples: int, seed: int, workdir: Path, crash_dir: Path, keep: int = 5
) -> Counter:
    target = TARGETS[name]
    counts: Counter = Counter()

    @hypothesis_seed(seed)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=FUZZ_HEALTH_CHECKS + [HealthCheck.filter_too_much],
    )
    @given(case=target.strategy)
    def run(case):
        counts["tried"] += 1
        try:
            counts[run_case(target, case, workdir)] += 1
        except Exception:
            counts["crash"] += 1
            if counts["crash"] <= keep:
                crash_dir.mkdir(parents=True, exist_ok=True)
                data, suffix = target.to_file(case)
                saved = crash_dir / f"{name}-{counts['crash']}{suffix}"
                saved.write_bytes(data)
                with open(crash_dir / "tracebacks.txt", "a") as fh:
                    fh.write(
                        f"=== {name} #{counts['crash']}: input saved as {saved}\n"
                        f"{traceback.format_exc()}\n"
                    )

    run()
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--examples", type=int, default=2000, help="inputs per target (default 2000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--targets", nargs="+", choices=sorted(TARGETS), default=list(TARGETS))
    ap.add_argument(
        "--crash-dir",
        type=Path,
        default=Path("fuzz_crashes"),
        help="tracebacks.txt and crashing inputs",
    )
    args = ap.parse_args(argv)

    faulthandler.enable()  # a segfault in gemmi at least shows which target was running
    total_crashes = 0
    print(f"{'target':<22}{'tried':>8}{'ok':>8}{'error':>8}{'crash':>8}{'seconds':>9}", flush=True)
    with tempfile.TemporaryDirectory(prefix="fuzz_parsers_") as tmp:
        for name in args.targets:
            t0 = time.perf_counter()
            c = campaign(name, args.examples, args.seed, Path(tmp), args.crash_dir)
            dt = time.perf_counter() - t0
            total_crashes += c["crash"]
            print(
                f"{name:<22}{c['tried']:>8}{c['ok']:>8}{c['error']:>8}{c['crash']:>8}{dt:>9.1f}",
                flush=True,
            )
    if total_crashes:
        print(f"{total_crashes} crashes; tracebacks in {args.crash_dir / 'tracebacks.txt'}")
    return 1 if total_crashes else 0


if __name__ == "__main__":
    sys.exit(main())
