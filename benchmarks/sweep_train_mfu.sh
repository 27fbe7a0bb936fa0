#!/usr/bin/env bash
# MFU of stage 2 at 0.5B dimensions on one GPU under several batch sizes and memory-saving settings, each setting in
# its own `accelerate launch` of bench_train.py (an out-of-memory setting fails alone and the sweep goes on).
#
#   bash benchmarks/sweep_train_mfu.sh OUT_DIR SETTING [SETTING ...]
#
# A SETTING is PAIRS:SAVING, SAVING being `ckptN` (gradient checkpointing of every Nth layer, ckpt1 = every layer)
# or `budgetB` (--activation_memory_budget B); layers are always compiled. Example:
#   bash benchmarks/sweep_train_mfu.sh /tmp/sweep 32:ckpt1 32:budget0.5 24:budget0.5 16:budget1.0
# Writes OUT_DIR/<setting>.json (bench_train.py's figures) and .log; prints one line per setting. Read from the
# environment: DATA (default ../shared/data), WORK (default /tmp/rscc_sweep: the random checkpoint, built once),
# STEPS (default 12) and BENCH_OPTIONS (more bench_train.py options, e.g. "--dims tiny --precision fp32" on a CPU).
set -u
out=${1:?usage: sweep_train_mfu.sh OUT_DIR PAIRS:SAVING ...}
shift
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
for setting in "$@"; do
    pairs=${setting%%:*}
    saving=${setting#*:}
    case $saving in
        ckpt*) options=(--checkpoint-every "${saving#ckpt}") ;;
        budget*) options=(--activation-memory-budget "${saving#budget}") ;;
        *) echo "$setting: expected PAIRS:ckptN or PAIRS:budgetB" >&2; exit 2 ;;
    esac
    name="b${pairs}_${saving}"
    if python3 -m accelerate.commands.launch --config_file "$here/train/accelerate/single_gpu.yaml" \
        "$here/benchmarks/bench_train.py" mfu --data "${DATA:-$here/../shared/data}" --work "${WORK:-/tmp/rscc_sweep}" \
        --steps "${STEPS:-12}" --dataloader-workers 8 --batch-size "$pairs" --compile-layers "${options[@]}" \
        ${BENCH_OPTIONS:-} --json "$out/$name.json" >"$out/$name.log" 2>&1; then
        python3 -c "import json, sys; f = json.load(open(sys.argv[1])); print(sys.argv[2], 'samples/s', \
f['samples_per_second'], 'MFU', f['mfu'], 'peak GB', f['peak_memory_gb'])" "$out/$name.json" "$name"
    else
        echo "$name failed: $(grep -m1 -o 'OutOfMemoryError\|CUDA out of memory' "$out/$name.log" || tail -n 1 "$out/$name.log")"
    fi
done
