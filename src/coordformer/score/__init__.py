"""Scoring sequences given a structure: per-residue masked marginals and pseudo-perplexity
(``marginals``), substitution scores for single and multiple mutants, ProteinGym-style
(``mutations``), input reading (``inputs``), the ``coordformer score`` command's files (``run``),
and burial / secondary-structure descriptors for reading the scores (``structure``).

    from coordformer.io import read_structure
    from coordformer.model.checkpoints import load_model
    from coordformer.score import ScoreConfig, masked_marginals, score_mutations

    model, _ = load_model("small-coords")
    chains = read_structure("tests/data/1orc.pdb")       # Cro repressor, author numbers 3-61
    [s] = masked_marginals(model, chains)               # s.log_p_wt, s.entropy, s.pseudo_perplexity
    res = score_mutations(model, chains, ["T6A", "I5V:L7A"])  # res.scored, res.skipped
"""

from .inputs import missing_structure_warning, read_chains
from .marginals import SCORE_MODES, ChainScores, ScoreConfig, masked_marginals, masking_plan
from .mutations import (
    MULTI_MODES,
    NUMBERINGS,
    MutationError,
    MutationResults,
    MutationScore,
    Substitution,
    parse_mutant,
    score_mutations,
    substitution_matrix,
)

__all__ = [
    "MULTI_MODES",
    "NUMBERINGS",
    "SCORE_MODES",
    "ChainScores",
    "MutationError",
    "MutationResults",
    "MutationScore",
    "ScoreConfig",
    "Substitution",
    "masked_marginals",
    "masking_plan",
    "missing_structure_warning",
    "parse_mutant",
    "read_chains",
    "score_mutations",
    "substitution_matrix",
]
