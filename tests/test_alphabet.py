"""The alphabet: one letter-normalisation rule and one letter -> token mapping
(coordformer.alphabet), re-exported by coordformer.constants and used by every reader."""

from __future__ import annotations

import ast
import gzip
import json
from pathlib import Path

import pytest

from coordformer import alphabet, constants
from coordformer.alphabet import (
    AA_OFFSET,
    AMINO_ACIDS,
    UNK,
    VOCAB,
    ascii_to_letter_table,
    ascii_to_token_table,
    normalize_letter,
    normalize_sequence,
    token_of,
)

SRC = Path(__file__).parents[1] / "src" / "coordformer"

#: (input, readers' letter (rare_to_parent=True), token tables' letter (rare_to_parent=False))
TABLE = [
    ("A", "A", "A"),
    ("a", "A", "A"),
    ("y", "Y", "Y"),
    ("U", "C", "X"),  # selenocysteine
    ("u", "C", "X"),
    ("O", "K", "X"),  # pyrrolysine
    ("o", "K", "X"),
    ("X", "X", "X"),
    ("x", "X", "X"),
    ("B", "X", "X"),  # ambiguous D/N
    ("Z", "X", "X"),  # ambiguous E/Q
    ("J", "X", "X"),
    ("*", "X", "X"),
    ("-", "X", "X"),
    ("1", "X", "X"),
    (" ", "X", "X"),
    ("ß", "X", "X"),  # upper() would give 'SS' and lengthen the sequence
    ("ı", "X", "X"),  # upper() would give 'I'
    ("é", "X", "X"),
    ("", "X", "X"),
    ("AC", "X", "X"),
]


@pytest.mark.parametrize("letter, reader, table", TABLE)
def test_normalisation_table(letter, reader, table):
    assert normalize_letter(letter) == reader
    assert normalize_letter(letter, rare_to_parent=True) == reader
    assert normalize_letter(letter, rare_to_parent=False) == table


def test_every_standard_letter_is_kept_in_either_case():
    for a in AMINO_ACIDS:
        assert normalize_letter(a) == normalize_letter(a.lower()) == a
        assert token_of(a) == token_of(a.lower()) == AA_OFFSET + AMINO_ACIDS.index(a)
        assert VOCAB[token_of(a)] == a


def test_normalize_sequence_keeps_the_length():
    assert normalize_sequence("acdUOzß*é") == "ACDCKXXXX"
    assert normalize_sequence("acdUOzß*é", rare_to_parent=False) == "ACDXXXXXX"
    assert normalize_sequence("") == ""
    assert normalize_sequence("MKV") == "MKV"
    seq = "".join(chr(i) for i in range(0x300))
    assert len(normalize_sequence(seq)) == len(seq)
    assert normalize_sequence(seq) == "".join(normalize_letter(c) for c in seq)


def test_tokens_follow_the_rule_without_rare_parents():
    for b in range(256):
        letter = normalize_letter(chr(b), rare_to_parent=False)
        expected = UNK if letter == "X" else AA_OFFSET + AMINO_ACIDS.index(letter)
        assert token_of(chr(b)) == expected
    assert token_of("U") == token_of("O") == token_of("X") == token_of("") == token_of("AC") == UNK


def test_byte_tables_are_the_ones_used_before_the_alphabet_module():
    # the formulas constants.ascii_to_token_table and data/prepare._ASCII_TABLE were written with
    old_letters = bytes(
        ord(chr(b).upper()) if chr(b).upper() in AMINO_ACIDS else ord("X") for b in range(256)
    )
    assert ascii_to_letter_table() == old_letters
    old_tokens = []
    for b in range(256):
        i = AMINO_ACIDS.find(chr(b).upper())
        old_tokens.append(AA_OFFSET + i if i >= 0 else UNK)
    assert ascii_to_token_table() == old_tokens
    # the table maps a byte to the token of the letter the letter table gives it
    assert all(
        ascii_to_token_table()[b] == token_of(chr(ascii_to_letter_table()[b])) for b in range(256)
    )


def test_constants_reexports_the_alphabet():
    for name in (
        "AMINO_ACIDS",
        "PAD",
        "MASK",
        "CLS",
        "EOS",
        "UNK",
        "SPECIAL_TOKENS",
        "VOCAB",
        "VOCAB_SIZE",
        "AA_OFFSET",
        "token_of",
        "ascii_to_token_table",
    ):
        assert getattr(constants, name) is getattr(alphabet, name), name
    assert (constants.PAD, constants.MASK, constants.CLS, constants.EOS, constants.UNK) == (
        0,
        1,
        2,
        3,
        4,
    )
    assert constants.VOCAB == ("<pad>", "<mask>", "<cls>", "<eos>", "X", *AMINO_ACIDS)
    assert constants.AA_OFFSET == 5 and constants.VOCAB_SIZE == 25


def _package_imports(path: Path) -> set[str]:
    """Modules of coordformer a source file imports (relative imports resolved from the package
    root)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                out.add("coordformer." + (node.module or ""))
            elif node.module and node.module.startswith("coordformer"):
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("coordformer")}
    return out


def test_alphabet_and_constants_import_nothing_else_from_the_package():
    assert _package_imports(SRC / "alphabet.py") == set()
    assert _package_imports(SRC / "constants.py") == {"coordformer.alphabet"}


def test_readers_normalise_letters_with_the_alphabet(tmp_path):
    from coordformer.io import iter_chain_set, read_fasta

    fasta = tmp_path / "x.fasta"
    fasta.write_text(">1abc_A\nacdUOzB\n")
    (c,) = read_fasta(fasta)
    assert c.sequence == "ACDCKXX"
    path = tmp_path / "x.jsonl.gz"
    rec = {"name": "1abc.A", "seq": "mUoß", "coords": {"CA": [[0.0, 0.0, 0.0]] * 4}}
    path.write_bytes(gzip.compress(json.dumps(rec).encode()))
    (c,) = list(iter_chain_set(path))
    assert c.sequence == "MCKX"
