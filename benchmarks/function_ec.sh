#!/usr/bin/env bash
# EC function-prediction benchmark (issue 5): coords-pretrained vs no-coords-pretrained vs
# non-pretrained encoders of equal size, on the DeepFRI EC split restricted to chains that have
# coordinates in ../shared/data/pdb_chains. Non-pretrained arms: the same two architectures with
# fresh weights (--random-init). Results: docs/RESULTS.md.
#
#   benchmarks/function_ec.sh DATA OUT [HEAD] [extra finetune options...]
#
# DATA: a prepared dataset of ../shared/data/pdb_chains whose pretraining split excluded the
#       DeepFRI EC/GO valid+test chains (as the shipped models' data did; see
#       src/coordformer/resources/models/README.md). HEAD: mlp (default) or linear.
set -euo pipefail
DATA=${1:?prepared dataset}
OUT=${2:?output folder}
HEAD=${3:-mlp}
shift $(( $# < 3 ? $# : 3 ))
LABELS=${LABELS:-../shared/data/deepfri}
CF=${CF:-.venv/bin/coordformer}
mkdir -p "$OUT"
common=(--task ec --labels "$LABELS" --data "$DATA" --head "$HEAD" --seed 0 --quiet "$@")
$CF finetune -c small-coords   --out "$OUT/$HEAD-coords"   "${common[@]}"
$CF finetune -c small-nocoords --out "$OUT/$HEAD-nocoords" "${common[@]}"
$CF finetune -c small-coords --random-init --out "$OUT/$HEAD-random" "${common[@]}"
$CF finetune -c small-nocoords --random-init --out "$OUT/$HEAD-random-nocoords" "${common[@]}"
$CF evaluate-function "$OUT/$HEAD-coords" "$OUT/$HEAD-nocoords" "$OUT/$HEAD-random" "$OUT/$HEAD-random-nocoords" \
    --identity "$LABELS"/nrPDB-EC_*_test.csv --bootstrap 1000 --report "$OUT/${HEAD}_test.md"
cat "$OUT/${HEAD}_test.md"
