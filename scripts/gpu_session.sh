#!/usr/bin/env bash
# What one lent GPU session ran (docs/RESULTS.md, "GPU runs"), stage by stage, from the repo root of
# a machine whose python3 has torch + lightning (the device tool's image); the data travel as
# work/gpu/pdb_chains_ca.tar (scripts/transport_dataset.py) and gemmi as a wheel in .whl/.
#
#   scripts/gpu_session.sh setup     install the wheel, unpack the dataset, print the machine
#   scripts/gpu_session.sh smoke     50 pretraining steps on the GPU
#   scripts/gpu_session.sh bench     SDPA kernel check, throughput vs length, data path -> $OUT
#   scripts/gpu_session.sh train M   start the three small-3m pretrainings (M minutes each), detached
#   scripts/gpu_session.sh watch S   print progress every 30 s for S seconds (or until all finish)
#   scripts/gpu_session.sh collect   stop what still runs, export best/last weights + logs -> $OUT
#   scripts/gpu_session.sh open6     issue 6 leftovers: memory with activation checkpointing on both
#                                    sides, coords/nocoords at L = 1024/2048, torch.compile and FSDP runs
#   scripts/gpu_session.sh sd M      start small-3m with coordinates and structure dropout from scratch (M
#                                    minutes), detached; `collect` brings it back too. A from-scratch
#                                    counterpart of continuing small-coords with structure dropout on a CPU
#                                    (docs/RESULTS.md); shipping it needs its own description in ship_models.py
#   scripts/gpu_session.sh issue16 M the whole issue-16 lease in one command: the paper-size model (paper-33m,
#                                    fast recipe) and its no-coordinates twin trained side by side for at most M
#                                    minutes (less where DEADLINE leaves less, see the stage),
#                                    then every evaluation (int8 and float16 weights too), the non-finite-step
#                                    replay, and the float16 weights in 15 MiB parts (transport_weights.py) -> $OUT
#                                    (PRESET=tiny-0.1m and DEVICE=cpu rehearse it on a CPU)
#                                    PICK16=auto trains with the fastest equivalent step the issue18 stage measured
#                                    before it on this machine (--varlen, --cuda-graphs or neither; PICK16=S
#                                    measures it here first, in S seconds)
#   scripts/gpu_session.sh issue18 S training-throughput ablations of real pretraining (issue 18 item 3: host syncs,
#                                    LM head on targets, fused AdamW, compile, packing, token budget, workers,
#                                    coordinates' cost) within S seconds -> $OUT/issue18 (PRESET=tiny-0.1m
#                                    DEVICE=cpu rehearse it)
#   scripts/gpu_session.sh ec E      start the four whole-encoder EC fine-tunes (up to E epochs), detached;
#                                    labels from $LABELS (copy ../shared/data/deepfri to work/gpu/deepfri
#                                    and carry it); `collect-ec` brings back metrics and predictions
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD/src
DATA=${DATA:-/tmp/data/pdb_chains_x}
RUNS=${RUNS:-/tmp/runs}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" "$RUNS"
cf() { python3 -m coordformer "$@"; }

# name and flags of each shipped-model candidate (identical size, data, schedule and budget)
read -ra RUN_NAMES <<< "${RUN_LIST:-coords coords-gauss nocoords}"
declare -A RUN_FLAGS=(
  [coords]=""
  [coords-gauss]="--norm-feature --gaussian-heads 4 --gaussian-values"
  [nocoords]="--no-coords"
)
COMMON="--preset small-3m --lr 2e-3 --warmup-steps 1000 --tokens-per-batch 16384 --val-every 1000 \
--val-max-chains 542 --checkpoint-every 1000 --workers ${WORKERS:-4} --threads 1 --seed 0 --quiet"

case ${1:-} in
setup)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  python3 scripts/transport_dataset.py unpack work/gpu/pdb_chains_ca.tar $DATA || exit 1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, lightning, gemmi; print('torch', torch.__version__, 'lightning', lightning.__version__, \
'gemmi', gemmi.__version__, torch.cuda.get_device_name(0))"
  ;;
smoke)
  # 50 GPU steps end to end (bf16, workers, validation, checkpoint) before anything long starts
  cf pretrain --data $DATA --out /tmp/smoke --preset small-3m --max-steps 50 --val-every 25 --val-max-chains 64 \
    --tokens-per-batch 16384 --workers 2 --quiet 2>&1 | tail -12
  ;;
bench)
  mkdir -p "$OUT/perf"
  for p in small-3m large-43m; do
    python3 benchmarks/sdpa_backend.py --device cuda --preset $p --json "$OUT/perf/sdpa_$p.json"
  done 2>&1 | grep -v "^USDT" | tee "$OUT/perf/sdpa.log"
  python3 benchmarks/data_path.py --data $DATA --preset small-3m --tokens 16384 --batches 40 --device cuda \
    --workers 1 4 8 2>&1 | tee "$OUT/perf/data_path_cuda.log"
  timeout 270 python3 benchmarks/throughput.py --preset large-43m --lengths 128 256 512 1024 2048 --tokens 16384 \
    --steps 10 --warmup 3 --rounds 2 --device cuda --json "$OUT/perf/throughput_cuda_large43m.json" \
    2>&1 | tee "$OUT/perf/throughput_cuda_large43m.log"
  ;;
train)
  minutes=${2:?minutes}
  for n in "${RUN_NAMES[@]}"; do
    # setsid: the runs outlive this command (the device tool ends a command's own process group)
    setsid nohup python3 -m coordformer pretrain --data $DATA --out $RUNS/$n ${RUN_FLAGS[$n]} $COMMON \
      --max-minutes "$minutes" > $RUNS/$n.log 2>&1 < /dev/null &
  done
  sleep 5; ls $RUNS
  ;;
watch)
  end=$((SECONDS + ${2:?seconds}))
  while :; do
    done_=0
    for n in "${RUN_NAMES[@]}"; do
      [ -f $RUNS/$n/summary.json ] && done_=$((done_ + 1))
      m=$(ls $RUNS/$n/logs/version_*/metrics.csv 2>/dev/null | tail -1)
      # latest value of each logged column: step, train loss, tokens/s, validation perplexity
      [ -n "$m" ] && python3 -c "import csv,sys; last={}
for r in csv.DictReader(open(sys.argv[1])): last.update({k: v for k, v in r.items() if v})
print(sys.argv[2] + ': ' + ', '.join(f'{k}={float(v):.4g}' for k, v in last.items()))" "$m" $n
      grep -iE "error|Traceback" $RUNS/$n.log | tail -2
    done
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
    [ $done_ -eq ${#RUN_NAMES[@]} ] && { echo "all finished"; break; }
    [ $SECONDS -ge $end ] && break
    sleep 30
  done
  ;;
open6)
  mkdir -p "$OUT/perf"
  timeout 300 python3 benchmarks/throughput.py --preset large-43m --lengths 1024 2048 --tokens 16384 --steps 5 \
    --warmup 2 --rounds 2 --device cuda --arms nocoords coords pairbias coords-ckpt pairbias-ckpt \
    --json "$OUT/perf/throughput_ckpt_large43m.json" 2>&1 | tee "$OUT/perf/throughput_ckpt_large43m.log"
  for mode in compile fsdp; do
    flags=$([ $mode = compile ] && echo "--compile" || echo "--strategy fsdp --devices 1")
    timeout 240 python3 -m coordformer pretrain --data $DATA --out /tmp/$mode --preset large-43m $flags --max-steps 200 \
      --val-every 200 --val-max-chains 64 --tokens-per-batch 16384 --workers 4 --quiet 2>&1 | tail -15 | tee "$OUT/perf/$mode.log"
  done
  ;;
sd)
  minutes=${2:?minutes}
  setsid nohup python3 -m coordformer pretrain --data $DATA --out $RUNS/coords-sd --drop-chain-coords 0.15 \
    --drop-span-coords 0.3 $COMMON --max-minutes "$minutes" > $RUNS/coords-sd.log 2>&1 < /dev/null &
  sleep 5; ls $RUNS
  ;;
issue16)
  # Budget: the whole stage ends within DEADLINE seconds of its start (default 570, under a 600 s call),
  # training included, so results always come back; what finished is copied to $OUT as it finishes.
  minutes=${2:?minutes}; t0=$SECONDS; deadline=${DEADLINE:-570}
  P=${PRESET:-paper-33m}; DEV=${DEVICE:-cuda}; W=${WORKERS:-4}
  # setup comes first on a fresh machine: coordformer imports gemmi, which only the carried wheel provides there
  if [ "${SETUP:-1}" = 1 ] && [ "$DEV" = cuda ] && { [ ! -d $DATA ] || ! python3 -c "import gemmi" 2>/dev/null; }; then
    $0 setup || { echo "preflight: setup failed; nothing started"; exit 3; }
  fi
  # preflight: the package imports and the data are there, before any device time goes to training
  python3 -c "import coordformer.cli, coordformer.train.run, coordformer.eval.mlm, coordformer.analysis.attention" \
    || { echo "preflight: coordformer does not import; nothing started"; exit 3; }
  [ -f $DATA/manifest.json ] || { echo "preflight: no dataset at $DATA"; exit 3; }
  # RUN16: the runs trained side by side (default: the model and its twin). paper-recipe is
  # `--recipe paper` (the paper's features, initialisation and LM head) with the same schedule: the
  # fast-vs-paper-recipe curve at paper size (issue 16 item 3). The first run is exported and replayed.
  read -ra R16 <<< "${RUN16:-paper-coords paper-nocoords}"
  declare -A F16=([paper-coords]="--recipe fast" [paper-nocoords]="--no-coords" [paper-recipe]="--recipe paper")
  [ ${#R16[@]} -gt 0 ] || { echo "preflight: RUN16 names no run"; exit 3; }
  for n in "${R16[@]}"; do [ -n "${F16[$n]:-}" ] || { echo "preflight: unknown run $n in RUN16"; exit 3; }; done
  # a retry on the same warm machine must not resume the last try's runs (it would train seconds) or
  # bring back its evaluations as new
  rm -rf $RUNS/paper-coords $RUNS/paper-nocoords $RUNS/paper-recipe $RUNS/eval
  # INIT16: weights packed by transport_weights.py (gpu_snapshot.sh with CONTINUE16=NAME carries a shipped
  # model as int8) that the first run, paper-coords, continues from (`--init`: architecture from the weights, fresh optimizer and
  # schedule); training across leases without carrying a 400 MB checkpoint
  INITF=""
  if [ -n "${INIT16:-}" ]; then
    # the weights are a coordinates model's: continuing them under another run's name would mislabel it;
    # and EXTRA16 must not set the architecture, which --init takes from the weights (the run would refuse)
    [ "${R16[0]}" = paper-coords ] || { echo "preflight: INIT16 continues paper-coords: list it first in RUN16"; exit 3; }
    python3 scripts/transport_weights.py unpack "$INIT16" /tmp/init16.pt || { echo "preflight: cannot unpack $INIT16"; exit 3; }
    INITF="--init /tmp/init16.pt"
  fi
  # --checkpoint-every 3000: each pair of checkpoints is about 0.8 GB at paper size, written in the training's
  # time; the deadline's SIGTERM writes last.ckpt anyway
  C16="--lr ${LR:-5e-4} --warmup-steps 500 --tokens-per-batch ${TOKENS:-16384} --val-every 1000 \
--val-max-chains 542 --checkpoint-every ${CKPT16:-3000} --workers $W --seed 0 --quiet"
  [ "$DEV" = cpu ] && C16="$C16 --accelerator cpu --threads 1"
  # the rehearsal passes PRECISION=bf16-mixed: the device's default, which a CPU run would otherwise not take
  [ -n "${PRECISION:-}" ] && C16="$C16 --precision $PRECISION"
  # EXTRA16 adds pretrain flags to both runs without a new snapshot (a retry with --no-fused-adamw, say)
  C16="$C16 ${EXTRA16:-}"
  E=$RUNS/eval; mkdir -p $E
  # PICK16 trains with the fastest of the steps that give the same weights (tested): padded rows, --varlen,
  # --cuda-graphs, by a ratio to the default step of at least PICK_MIN (1.03). PICK16=auto reads the issue18
  # stage's measurement on this machine (PICK_FROM, default $RUNS/issue18.json: run issue18 first, same preset
  # and tokens); PICK16=S measures default against PICK_ARMS (varlen) here within S seconds. The measurement
  # comes back in the training record (eval/pick16.json).
  if [ -n "${PICK16:-}" ]; then
    if [ "$PICK16" = auto ]; then
      src=${PICK_FROM:-$RUNS/issue18.json}
      if [ -s "$src" ]; then cp "$src" $E/pick16.json; else echo "pick16: no $src"; fi
    else
      timeout -k 10 "$PICK16" python3 benchmarks/training_ablations.py --data $DATA --preset $P --tokens ${TOKENS:-16384} \
        --steps ${PICK_STEPS:-60} --warmup ${PICK_WARMUP:-30} --device $DEV ${PRECISION:+--precision $PRECISION} \
        --arms default ${PICK_ARMS:-varlen} --json $E/pick16.json 2>&1 | grep -v "Warning\|warn(" | tail -4
    fi
  fi
  # The schedule's length (--max-minutes) counts the seconds spent in training steps only, so it must be what
  # the runs can train before the deadline's SIGTERM: the window (deadline less evaluation, less what setup
  # and a PICK16=S measurement used), less the runs' start-up (STARTUP16 s: imports, data, compilation), with
  # TRAIN_SHARE of the rest in steps (validation and checkpoints take the others). A schedule longer than
  # the window ends un-annealed: the learning rate at SIGTERM would be a quarter of its peak, not ~0.
  train_s=$((deadline - ${EVAL_LIMIT:-120} - 40 - (SECONDS - t0)))
  run_min=$(python3 -c "print(round(min($minutes, max(0.5, ($train_s - ${STARTUP16:-45}) * ${TRAIN_SHARE:-0.85} / 60)), 2))")
  C16="$C16 --max-minutes $run_min"; echo "schedule: $run_min min of training steps (window $train_s s)"
  if [ -n "${PICK16:-}" ]; then
    # the record must be of this training's preset, tokens and precision; a step's compile time is charged
    # to the minutes it trains
    pick=$(python3 scripts/pick_step.py $E/pick16.json ${PICK_MIN:-1.03} --preset $P --tokens ${TOKENS:-16384} \
      --precision ${PRECISION:-auto} --device $DEV --minutes $run_min)
    C16="$C16 $pick"; echo "pick16: training with ${pick:-padded rows (nothing measured at least ${PICK_MIN:-1.03}x as fast)}"
  fi
  pids=""
  for n in "${R16[@]}"; do
    arch="--preset $P ${F16[$n]}"
    [ -n "$INITF" ] && [ $n = "${R16[0]}" ] && arch=$INITF
    setsid nohup python3 -m coordformer pretrain --data $DATA --out $RUNS/$n $arch $C16 > $RUNS/$n.log 2>&1 < /dev/null &
    pids="$pids $!"
  done
  # evaluation needs EVAL_LIMIT seconds; whatever still trains then gets SIGTERM (last.ckpt at a step boundary)
  EL=${EVAL_LIMIT:-120}
  alive() { for p in $pids; do kill -0 $p 2>/dev/null && return 0; done; return 1; }
  while [ $((SECONDS - t0)) -lt $((deadline - EL - 40)) ]; do
    alive || break  # both finished, or crashed (a crash writes no summary.json: its log says why)
    sleep 5
  done
  # only this stage's runs; SIGTERM makes pretrain write last.ckpt at the next step boundary and exit.
  # Wait until both are gone (at most 30 s): their summary.json and last.ckpt are written on the way out.
  kill -TERM $pids 2>/dev/null
  for _ in $(seq 30); do alive || break; sleep 1; done
  alive && echo "a run is still alive 30 s after SIGTERM; going on with what it wrote"
  tail -n 2 $RUNS/paper-*.log
  for n in "${R16[@]}"; do cp $RUNS/$n/summary.json $E/$n.summary.json; cp $RUNS/$n.log $E/; \
    cp $RUNS/$n/logs/version_0/metrics.csv $E/$n.metrics.csv; done
  tar -C $RUNS -czf "$OUT/issue16_train.tar.gz" eval   # the training record comes back even if evaluation fails
  CK=$RUNS/${R16[0]}/checkpoints/last.ckpt; CKS=""
  for n in "${R16[@]}"; do CKS="$CKS -c $RUNS/$n/checkpoints/last.ckpt"; done
  cf export -c $CK --out $E/${R16[0]}.int8.pt --int8
  cf export -c $CK --out $E/${R16[0]}.fp16.pt
  # the float16 weights come back (8 files of 16 MiB, 64 MiB per call): byte-shuffled and deflated, 67.5 MB
  # become about 59 if they compress like small-coords (plain gzip: about 62.6, too close to the limit with the
  # record beside them); 4 parts + manifest
  python3 scripts/transport_weights.py pack $E/${R16[0]}.fp16.pt "$OUT/${R16[0]}.fp16"
  left=$((deadline - (SECONDS - t0) - 15)); [ $left -lt 20 ] && left=20
  T="timeout -k 10 $left python3 -m coordformer"  # a slow evaluation must not cost the lease its results
  ev() { $T evaluate $CKS --data $DATA --device $DEV --quiet ${EVAL_MAX_CHAINS:+--max-chains $EVAL_MAX_CHAINS} "$@"; }
  # every evaluation at once: each is small next to the GPU, and they are mostly data work
  ev --split test --json $E/test_mask.json -c $E/${R16[0]}.int8.pt -c $E/${R16[0]}.fp16.pt > $E/test_mask.log 2>&1 &
  evpids=$!
  ev --split test --masking bert --json $E/test_bert.json > $E/test_bert.log 2>&1 &
  evpids="$evpids $!"
  ev --split valid --json $E/valid_mask.json > $E/valid_mask.log 2>&1 &
  evpids="$evpids $!"
  ev --split valid --masking bert --json $E/valid_bert.json > $E/valid_bert.log 2>&1 &
  evpids="$evpids $!"
  # analyze-attention runs on the CPU afterwards, from the weights that come back: on the GPU it did not
  # finish two layers in the time left (2026-11-26)
  timeout -k 10 $left python3 benchmarks/nonfinite_replay.py --data $DATA --checkpoint $CK --batches ${REPLAY_BATCHES:-50} \
    --tokens ${TOKENS:-16384} --device $DEV --json $E/replay.json > $E/replay.log 2>&1 &
  evpids="$evpids $!"
  # these only: a bare `wait` would also wait for a training run that outlived its SIGTERM
  wait $evpids
  tail -n 3 $E/*.log
  tar -C $RUNS -czf "$OUT/issue16.tar.gz" --exclude='*.pt' eval
  ls -la "$OUT"; echo "returning $(du -cb "$OUT"/* | tail -1 | cut -f1) bytes (64 MiB = 67108864 per call); stage took $((SECONDS - t0)) s"
  ;;
issue18)
  # Training-throughput ablations (benchmarks/training_ablations.py) within S seconds; each arm's line is
  # printed and the JSON rewritten as it finishes, so a cut-short run still brings back what it measured.
  # The first default arm then runs PROFILE (5) more steps under torch.profiler: device-busy fraction, kernel
  # time by kind, top kernels (in the JSON and the log), and a gzipped Chrome trace beside them.
  # the budget counts from the stage's start, setup included, and -k's 15 s of grace come after it
  budget=${2:?seconds}; budget=${budget%.*}; DEV=${DEVICE:-cuda}; t0=$SECONDS  # whole seconds for $(( ))
  # `timeout 0` would mean no limit at all
  [ "${budget:-0}" -ge 1 ] 2>/dev/null || { echo "issue18: the budget must be at least 1 second, not '$2'"; exit 2; }
  if [ "${SETUP:-1}" = 1 ] && [ "$DEV" = cuda ] && { [ ! -d $DATA ] || ! python3 -c "import gemmi" 2>/dev/null; }; then
    $0 setup || { echo "preflight: setup failed; nothing started"; exit 3; }
  fi
  mkdir -p "$OUT/issue18"
  rm -f $RUNS/issue18.json  # a later PICK16=auto must not read an earlier try's measurement
  # -k: a run stops at its next step boundary on SIGTERM, which a compiling arm may not reach soon
  # at least 30 s for the benchmark's first arm, but never more than the whole budget
  left=$((budget - (SECONDS - t0))); floor=$((budget < 30 ? budget : 30)); [ $left -lt $floor ] && left=$floor
  timeout -k 15 "$left" python3 benchmarks/training_ablations.py --data $DATA --preset ${PRESET:-paper-33m} \
    --tokens ${TOKENS:-16384} --steps ${STEPS:-100} --warmup ${WARMUP:-40} --device $DEV ${PRECISION:+--precision $PRECISION} \
    $([ "$DEV" = cuda ] && echo --sync-debug) ${ARMS:+--arms $ARMS} --json "$OUT/issue18/ablations.json" \
    --profile ${PROFILE:-5} --profile-trace "$OUT/issue18/trace.json.gz" \
    2>&1 | grep -v "Warning\|warn(" | tee "$OUT/issue18/ablations.log"
  # for a later issue16 stage on this machine (PICK16=auto): $OUT is emptied before each call, $RUNS is not
  cp "$OUT/issue18/ablations.json" $RUNS/issue18.json 2>/dev/null
  ls -la "$OUT/issue18"
  ;;
ec)
  epochs=${2:?epochs}
  LABELS=${LABELS:-work/gpu/deepfri}
  mkdir -p $RUNS/ec
  for arm in coords nocoords random random-nocoords; do
    ck=small-${arm#random-}; [ $arm = random ] && ck=small-coords
    init=$([[ $arm == random* ]] && echo "--random-init")
    setsid nohup python3 -m coordformer finetune -c $ck $init --task ec --labels $LABELS --data $DATA --head linear \
      --max-length 512 --max-epochs "$epochs" --patience 5 --seed 0 --device cuda --quiet --out $RUNS/ec/linear-$arm \
      > $RUNS/ec/linear-$arm.log 2>&1 < /dev/null &
  done
  sleep 5; ls $RUNS/ec
  ;;
collect-ec)
  tar -C $RUNS -cf "$OUT/ec.tar" --exclude=checkpoints ec && ls -la "$OUT"
  ;;
collect)
  # runs still going get SIGTERM (Lightning saves nothing on it; the periodic last.ckpt stands)
  pkill -TERM -f "coordformer pretrain" && sleep 10
  for n in "${RUN_NAMES[@]}" coords-sd; do
    d=$RUNS/$n
    [ -d $d ] || continue
    mkdir -p $d/export
    for c in best last; do
      [ -f $d/checkpoints/$c.ckpt ] && cf export --checkpoint $d/checkpoints/$c.ckpt --out $d/export/$c.pt
    done
    tar -C $RUNS -cf "$OUT/run_$n.tar" --exclude=checkpoints $n $n.log
  done
  ls -la "$OUT"
  ;;
*)
  echo "usage: $0 setup|smoke|bench|train MINUTES|watch SECONDS|collect|open6|sd MINUTES|issue16 MINUTES|issue18 SECONDS|ec EPOCHS|collect-ec" >&2; exit 2 ;;
esac
