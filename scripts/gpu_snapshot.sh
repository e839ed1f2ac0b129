#!/usr/bin/env bash
# Build the folder a device call carries (work/gpu16: the committed code of HEAD, the CA dataset and the
# gemmi wheel) and rehearse the issue16 stage from inside it on this CPU, so that a lease never meets
# code that differs from what was tested (uncommitted edits in the working tree do not travel here).
#
#   scripts/gpu_snapshot.sh            build + rehearse the issue16 and issue18 stages (tiny preset, ~4 min on 2 cores)
#   then:  run(command="cd work/gpu16 && bash scripts/gpu_session.sh issue16 6", carry=["work/gpu16"], timeout_s=600)
#   and, with the time left:  run(command="cd work/gpu16 && bash scripts/gpu_session.sh issue18 150", carry=["work/gpu16"])
#   CONTINUE16=paper-coords scripts/gpu_snapshot.sh   also carries the shipped paper-coords (int8) and rehearses
#                                    continuing from it; then HIDE_OVER_MB=1 scripts/lease_tree.sh hide, and
#   run(command="cd work/gpu16 && INIT16=work/init/paper-coords.int8 RUN16=paper-coords bash scripts/gpu_session.sh
#       issue16 7", carry=["work/gpu16"], timeout_s=600)
set -euo pipefail
cd "$(dirname "$0")/.."
S=work/gpu16
[ -f work/gpu/pdb_chains_ca.tar ] || { echo "pack the dataset first: scripts/transport_dataset.py pack work/pdb_chains_x work/gpu/pdb_chains_ca.tar"; exit 2; }
ls .whl/gemmi-*cp312*.whl >/dev/null || { echo "download the device's gemmi wheel into .whl/ (pip download gemmi --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 --no-deps -d .whl)"; exit 2; }
rm -rf $S; mkdir -p $S/work/gpu $S/.whl
git archive HEAD src benchmarks scripts pyproject.toml | tar -x -C $S
rm -rf $S/src/coordformer/resources/models/*.pt $S/src/coordformer/resources/models/*.pt.shard* $S/src/coordformer/resources/demo   # not needed there; keeps the upload small
cp work/gpu/pdb_chains_ca.tar $S/work/gpu/; cp .whl/gemmi-*cp312*.whl $S/.whl/
# CONTINUE16=NAME: a shipped model for the stage to continue from (there: INIT16=work/init/NAME.int8). Its own
# name: INIT16 is the stage's variable (a path), and the rehearsals below must not inherit it.
[ -z "${INIT16:-}" ] || { echo "INIT16 is the stage's variable (a path on the device); to carry a shipped model use CONTINUE16=NAME"; exit 2; }
if [ -n "${CONTINUE16:-}" ]; then
  # in int8: its float16
  # file does not fit one call beside the snapshot; training absorbs the rounding (int8 costs 1.5% before it)
  T=$(mktemp -d); mkdir -p $S/work/init
  .venv/bin/coordformer export -c "$CONTINUE16" --int8 --out $T/init.pt
  python3 scripts/transport_weights.py pack $T/init.pt $S/work/init/$CONTINUE16.int8; rm -rf $T
fi
echo "snapshot of $(git rev-parse --short HEAD): $(du -sh $S | cut -f1)"
[ "${REHEARSE:-1}" = 1 ] || { scripts/lease_tree.sh size || true; exit 0; }
R=$(mktemp -d)
( cd $S && PATH=$OLDPWD/.venv/bin:$PATH PYTHONPATH=src PRESET=tiny-0.1m DEVICE=cpu PRECISION=bf16-mixed WORKERS=1 TOKENS=4096 REPLAY_BATCHES=3 \
  RUN16="paper-coords paper-nocoords paper-recipe" \
  DEADLINE=420 EVAL_LIMIT=180 EVAL_MAX_CHAINS=100 DATA=$OLDPWD/work/pdb_chains_x RUNS=$R/runs OUT=$R/out bash scripts/gpu_session.sh issue16 0.5 ) > $R/log 2>&1 \
  || echo "the issue16 stage exited $? (log: $R/log)"   # set -e would end here without a word
tail -5 $R/log
for f in issue16_train.tar.gz issue16.tar.gz paper-coords.fp16.part00 paper-coords.fp16.json; do [ -s $R/out/$f ] || { echo "rehearsal FAILED: no $f (log: $R/log)"; exit 1; }; done
python3 $S/scripts/transport_weights.py unpack $R/out/paper-coords.fp16 $R/back.pt && cmp -s $R/back.pt $R/runs/eval/paper-coords.fp16.pt \
  || { echo "rehearsal FAILED: the float16 weights do not come back exactly (log: $R/log)"; exit 1; }
tar -tzf $R/out/issue16.tar.gz > $R/listing; grep -q test_mask.json $R/listing || { echo "rehearsal FAILED: no test evaluation (log: $R/log)"; exit 1; }
# every run of RUN16 trained and was evaluated (the rehearsal trains all three the stage knows)
mkdir -p $R/back && tar -xzf $R/out/issue16.tar.gz -C $R/back && python3 -c "import json,sys; m=json.load(open(sys.argv[1]))['models']; \
assert {'paper-coords','paper-nocoords','paper-recipe'} <= set(m), sorted(m)" $R/back/eval/test_mask.json \
  || { echo "rehearsal FAILED: a run of RUN16 missing from the evaluation (log: $R/log)"; exit 1; }
( cd $S && PATH=$OLDPWD/.venv/bin:$PATH PYTHONPATH=src PRESET=tiny-0.1m DEVICE=cpu PRECISION=bf16-mixed TOKENS=4096 STEPS=5 WARMUP=2 \
  ARMS="old default varlen graphs head nocoords" DATA=$OLDPWD/work/pdb_chains_x RUNS=$R/runs18 OUT=$R/out \
  bash scripts/gpu_session.sh issue18 400 ) > $R/log18 2>&1 \
  || echo "the issue18 stage exited $? (log: $R/log18)"
tail -8 $R/log18
if [ -n "${CONTINUE16:-}" ]; then
  # the continuation path: a tiny int8 model packed as the real one is, continued by the first run, with the
  # step PICK16=auto picks from the issue18 record (PICK_MIN=0: always one of --varlen / --cuda-graphs, which
  # are slower on the CPU, so that their training and evaluation inside the stage are rehearsed)
  PATH=$PWD/.venv/bin:$PATH PYTHONPATH=src python3 -c "import sys; from coordformer.config import preset; \
from coordformer.model.core import CoordFormer; from coordformer.model.checkpoints import export_model; \
export_model(CoordFormer(preset('tiny-0.1m', recipe='fast')), sys.argv[1], int8=True)" $R/tiny.pt
  python3 scripts/transport_weights.py pack $R/tiny.pt $R/tiny.int8 > /dev/null
  ( cd $S && PATH=$OLDPWD/.venv/bin:$PATH PYTHONPATH=src PRESET=tiny-0.1m DEVICE=cpu PRECISION=bf16-mixed WORKERS=1 TOKENS=4096 \
    REPLAY_BATCHES=3 RUN16="paper-coords paper-nocoords" INIT16=$R/tiny.int8 DEADLINE=400 EVAL_LIMIT=150 EVAL_MAX_CHAINS=50 \
    PICK16=auto PICK_FROM=$R/runs18/issue18.json PICK_MIN=0 \
    DATA=$OLDPWD/work/pdb_chains_x RUNS=$R/runs_init OUT=$R/out_init bash scripts/gpu_session.sh issue16 0.3 ) > $R/log_init 2>&1 \
    || echo "the continuing issue16 stage exited $? (log: $R/log_init)"
  mkdir -p $R/back_init && tar -xzf $R/out_init/issue16_train.tar.gz -C $R/back_init && python3 -c "import json,sys; \
s=json.load(open(sys.argv[1])); t=json.load(open(sys.argv[2])); \
assert s['train_config']['init'] and s['global_step'] > 0 and not t['train_config']['init'], s['train_config']; \
sys.path.insert(0, 'scripts'); import pick_step; p=json.load(open(sys.argv[3])); assert 'graphs' in p['summary'], p; \
flag=pick_step.pick(p, 0.0, minutes=0.3); assert flag, p; tc=s['train_config']; \
assert (tc['varlen_attention'], tc['cuda_graphs']) == (flag == '--varlen', flag == '--cuda-graphs'), (flag, tc)" \
    $R/back_init/eval/paper-coords.summary.json $R/back_init/eval/paper-nocoords.summary.json $R/back_init/eval/pick16.json \
    || { echo "rehearsal FAILED: INIT16 continuation or PICK16 (log: $R/log_init)"; exit 1; }
fi
python3 -c "import json,sys; r=json.load(open(sys.argv[1])); s=r['summary']; assert set(s) == {'old','default','varlen','graphs','head','nocoords'}, s; \
assert r['rounds']['default'][0]['profile']['top_host_ops'], 'no profile'" \
  $R/out/issue18/ablations.json && [ -s $R/out/issue18/trace.json.gz ] || { echo "rehearsal FAILED: issue18 (log: $R/log18)"; exit 1; }
echo "rehearsal passed ($R)"
# the device copies the whole working tree too: with the paper-size weights tracked it is over 64 MiB
scripts/lease_tree.sh size || echo "before the device calls: scripts/lease_tree.sh hide; after them: scripts/lease_tree.sh restore"
