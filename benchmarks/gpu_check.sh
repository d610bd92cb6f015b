#!/usr/bin/env bash
# The GPU check of issue 11: on a lent GPU machine (no internet), one command proves the paper
# protocol end to end and measures what a GPU changes.
#
#   1. here, on a machine with the package registries (fills the git-ignored .whl/ and .gpu_data/):
#          bash benchmarks/gpu_pack.sh
#   2. on the device machine, from the repository root, carrying both folders
#      (run tool: command "bash benchmarks/gpu_check.sh", carry [".whl", ".gpu_data"], timeout_s 600):
#          bash benchmarks/gpu_check.sh
#      It finishes in under 9 minutes (GPU_CHECK_DEADLINE_S, default 510 s, set-up included).
#   3. what comes back in $OUT (flat, 6 files):
#          gpu_check.log    everything the steps printed (nvidia-smi, versions, tests, benchmarks, training)
#          steps.tsv        each step: status (ok / failed rc N / timed out / skipped), seconds
#          bench.json       training samples/s and decoding users/s, ours and the authors' setup on this GPU
#          results.md, results.csv   TIGER and MQL4GRec on Instruments, paper protocol, each under a time budget
#          compare.tar.gz   the comparison folder without checkpoints: both models' RecBole logs, configs,
#                           per-user ranks, metrics.png, significance
#
# Steps: (a) installs .whl/*.whl into /tmp/site where recbole & co. do not import (PYTHONPATH=/tmp/site:$PWD);
# (b) nvidia-smi, torch/CUDA versions, CPU model; (c) python3 -m pytest -q -m gpu tests; (d)
# benchmarks/train_speed.py and decode_speed.py --authors_vocab on CUDA; (e) run_recbole_mql.py
# --compare=TIGER,MQL4GRec --protocol=paper with time_budget_minutes per model (GPU_CHECK_TIGER_MIN,
# default 1.5; GPU_CHECK_MQL_MIN, default 2.5; shrunk to fit the time left). Every step has a time
# limit; a failed step is reported and the later ones still run; the exit status is 1 if any failed.
#
# Without CUDA (any machine) it runs a dry mode: the same steps on the CPU at a tiny size (the shipped
# slice tests/fixtures/small/Instruments, a small T5, one epoch) and says what it skipped.
# $OUT unset: ./gpu_check_out (git-ignored). Work files: $GPU_CHECK_WORK (default /tmp/gpu_check_work).
set -uo pipefail  # no -e: a failed step is reported, the later steps still run
cd "$(dirname "$0")/.." || exit 2
export PYTHONUNBUFFERED=1 PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

START=$(date +%s)
DEADLINE_S=${GPU_CHECK_DEADLINE_S:-510}
RESERVE_S=20  # kept for collecting the results
AFTER_COMPARE_S=45  # kept after the comparison: the table of the finished models, should it be stopped
OUT=${OUT:-$PWD/gpu_check_out}
WORK=${GPU_CHECK_WORK:-/tmp/gpu_check_work}
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
rm -f "$OUT"/gpu_check.log "$OUT"/steps.tsv "$OUT"/bench.json "$OUT"/results.md "$OUT"/results.csv "$OUT"/compare.tar.gz
if [ -d "$WORK" ] && [ ! -f "$WORK/.gpu_check_work" ] && [ -n "$(ls -A "$WORK")" ]; then
    echo "error: $WORK (GPU_CHECK_WORK) holds other files: name an empty or new folder." >&2
    exit 2
fi
rm -rf "$WORK" && mkdir -p "$WORK" && touch "$WORK/.gpu_check_work" || exit 2
STEPS="$OUT/steps.tsv"
FAILED=0

elapsed() { echo $(( $(date +%s) - START )); }

# step NAME CAP_SECONDS COMMAND...: runs COMMAND under `timeout` (the smaller of CAP and the time left);
# SIGINT first (Python stops as after Ctrl-C: a comparison keeps its finished models), SIGKILL 20 s later.
# A shell function of this script runs in this shell (it may export) and limits its own commands.
step() {
    local name=$1 cap=$2
    shift 2
    local left=$(( DEADLINE_S - $(elapsed) - RESERVE_S ))
    local limit=$(( cap < left ? cap : left ))
    if (( limit < 15 )); then
        echo "== [$(elapsed)s] $name: SKIPPED, no time left (deadline ${DEADLINE_S}s)"
        printf '%s\tskipped: no time left\t0\n' "$name" >> "$STEPS"
        FAILED=1
        return 1
    fi
    echo "== [$(elapsed)s] $name (limit ${limit}s): $*"
    local t0 rc status
    t0=$(date +%s)
    if declare -F "$1" >/dev/null; then
        "$@"
    else
        timeout --signal=INT --kill-after=20 "$limit" "$@"
    fi
    rc=$?
    case $rc in
        0) status=ok ;;
        124|137) status="timed out after ${limit}s" ;;
        *) status="failed (exit $rc)" ;;
    esac
    echo "== [$(elapsed)s] $name: $status in $(( $(date +%s) - t0 ))s"
    printf '%s\t%s\t%s\n' "$name" "$status" "$(( $(date +%s) - t0 ))" >> "$STEPS"
    [ "$rc" = 0 ] || FAILED=1
    return "$rc"
}

skip() {  # skip NAME WHY
    echo "== [$(elapsed)s] $1: SKIPPED ($2)"
    printf '%s\tskipped: %s\t0\n' "$1" "$2" >> "$STEPS"
}

needed_imports() {  # what the packed wheels provide (faiss where one was packed)
    local names="recbole colorlog texttable pandas torch transformers"
    ls .whl/faiss_cpu-*.whl >/dev/null 2>&1 && names="$names faiss"
    timeout 90 python3 - $names <<'EOF'
import importlib, sys
missing = []
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 - any failure to import is "missing" here
        missing.append(f"{name} ({type(e).__name__}: {e})")
if "pandas" in sys.modules and int(sys.modules["pandas"].__version__.split(".")[0]) >= 3:
    missing.append(f"pandas<3 (found {sys.modules['pandas'].__version__}: pandas 3 breaks RecBole 1.2.1)")
print("; ".join(missing))
sys.exit(1 if missing else 0)
EOF
}

install_wheels() {
    # (a) the wheels gpu_pack.sh put in .whl/, into /tmp/site, first on the path
    local why
    why=$(needed_imports 2>/dev/null) && { echo "everything imports already: nothing installed"; return 0; }
    echo "missing: $why"
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        echo "error: .whl/ holds no wheels: run 'bash benchmarks/gpu_pack.sh' on a machine with the package" \
             "registries, then carry [\".whl\", \".gpu_data\"]."
        return 2
    fi
    local wheels=(.whl/*.whl)
    if python3 -c 'import pandas, sys; sys.exit(int(pandas.__version__.split(".")[0]) >= 3)' 2>/dev/null; then
        wheels=($(ls .whl/*.whl | grep -v -E '/(pandas|pytz|tzdata)-'))  # the image's pandas 2 is kept
    fi
    mkdir -p /tmp/site
    if python3 -m pip --version >/dev/null 2>&1; then
        timeout 150 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            "${wheels[@]}" || return 1
    else  # no pip on the image: a wheel is a zip archive laid out for site-packages
        echo "no pip: unpacking the wheels"
        for w in "${wheels[@]}"; do timeout 60 python3 -m zipfile -e "$w" /tmp/site || return 1; done
    fi
    export PYTHONPATH=/tmp/site:$PYTHONPATH  # main put $PWD there
    why=$(needed_imports) || { echo "error: still missing after the install: $why"; return 1; }
    echo "installed: ${wheels[*]##*/}"
}

environment() {
    # (b) what ran: GPU, driver, versions, CPU
    if [ "$MODE" = gpu ]; then timeout 30 nvidia-smi || echo "nvidia-smi failed"; fi
    timeout 60 python3 - <<'EOF'
import platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version()}, GPUs {torch.cuda.device_count()}")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"  cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}, "
          f"bf16 {torch.cuda.is_bf16_supported()}")
for name in ("transformers", "numpy", "pandas", "recbole"):
    try:
        print(f"{name} {__import__(name).__version__}")
    except Exception as e:  # noqa: BLE001
        print(f"{name}: {e}")
EOF
    timeout 10 lscpu | grep -E '^(Model name|CPU\(s\)|Thread|Socket)' || true
}

comparison_budgets() {
    # (e) per-model time budgets as a protocol file: the paper protocol plus time_budget_minutes per model,
    # shrunk together so that both runs and their fixed costs fit in the time left
    local left=$(( DEADLINE_S - $(elapsed) - RESERVE_S - AFTER_COMPARE_S ))
    timeout 60 python3 - "$WORK/protocol_paper_budget.yaml" "$TIGER_MIN" "$MQL_MIN" "$left" "$MODEL_OVERHEAD_S" <<'EOF'
import sys
import yaml
path, tiger, mql, left, overhead = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
usable = max(left - 2 * overhead, 30.0) / 60  # minutes of training the time left allows
scale = min(1.0, usable / (tiger + mql))
if scale < 1:
    print(f"time left {left:.0f}s: budgets scaled by {scale:.2f} (each model also needs ~{overhead:.0f}s to load and test)")
with open("properties/protocol/paper.yaml", encoding="utf-8") as f:
    protocol = yaml.safe_load(f)
for model, minutes in (("TIGER", tiger), ("MQL4GRec", mql)):
    protocol["models"].setdefault(model, {})["time_budget_minutes"] = round(minutes * scale, 2)
with open(path, "w", encoding="utf-8") as f:
    f.write("# properties/protocol/paper.yaml with a time budget per model (benchmarks/gpu_check.sh)\n")
    yaml.safe_dump(protocol, f, sort_keys=False)
print(f"time budgets: TIGER {tiger * scale:.2f} min, MQL4GRec {mql * scale:.2f} min of training + validation")
EOF
}

merge_bench() {
    timeout 60 python3 - "$OUT/bench.json" "$WORK/train.json" "$WORK/decode.json" "$MODE" <<'EOF'
import json, os, sys
out, parts, mode = sys.argv[1], sys.argv[2:4], sys.argv[4]
bench = {"mode": mode}
for key, path in zip(("training", "decoding"), parts):
    bench[key] = json.load(open(path)) if os.path.isfile(path) else None
json.dump(bench, open(out, "w"), indent=2)
t, d = bench["training"], bench["decoding"]
if t:
    print(f"training on {t['device']}: " + "; ".join(f"{k}: {v:.0f} samples/s (x{t['ratio_vs_authors'][k]:.2f})"
                                                    for k, v in t["samples_per_s"].items()))
if d:
    u = d["users_per_s"]
    print(f"decoding on {d['device']}: ours {u['ours']:.0f} users/s ({d['users']} users), on HF's {d['hf_users']}: "
          f"{u['ours_on_hf_users']:.0f}; HF generate {u['hf_generate']:.1f}, authors' vocabulary "
          f"{u.get('hf_generate_authors_vocab', float('nan')):.1f} users/s: ours x{d.get('ratio_vs_authors', float('nan')):.1f} "
          f"vs the authors' setup; identical top-{d['beam']} for {d['identical_top_lists']:.0%} of HF's users")
EOF
}

collect_comparison() {
    local dir=$WORK/compare
    [ -d "$dir" ] || { echo "no comparison folder"; return 1; }
    if [ ! -f "$dir/results.md" ] && ls "$dir"/*.result.json >/dev/null 2>&1; then
        # the comparison was stopped: the table of the models that finished (they are not run again)
        local done_models
        done_models=$(cd "$dir" && ls *.result.json | sed 's/\.result\.json$//' | paste -sd, -)
        step "table of the finished models" 60 python3 run_recbole_mql.py --compare="$done_models" \
            "${COMPARE_ARGS[@]}" || true
    fi
    for f in results.md results.csv; do [ -f "$dir/$f" ] && cp "$dir/$f" "$OUT/"; done
    timeout 60 tar -czf "$OUT/compare.tar.gz" -C "$WORK" --exclude=compare/checkpoints compare
}

main() {
    echo "gpu_check: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')" \
         "$(git status --porcelain 2>/dev/null | grep -q . && echo '(working tree modified)'), out $OUT"
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
    step "install wheels" 120 install_wheels
    if python3 -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
        MODE=gpu
    else
        MODE=dry
        echo "no CUDA GPU: dry mode, the same steps on the CPU at a tiny size (fixture data, small T5, one epoch)"
        export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
    fi
    step "environment" 60 environment

    # (c) the GPU tests (skipped by pytest without CUDA)
    step "pytest -m gpu" 180 python3 -m pytest -q -m gpu tests -p no:cacheprovider -rs

    DATA_PATH=$WORK/dataset/
    if [ "$MODE" = gpu ]; then
        SOURCE=.gpu_data/Instruments
        TRAIN_ARGS=(--device cuda --batches 100 --batch_size 256 --repeats 3)
        DECODE_ARGS=(--device cuda --users 4096 --batch 1024 --hf_users 256 --hf_batch 64 --repeats 2)
        TIGER_MIN=${GPU_CHECK_TIGER_MIN:-1.5}
        MQL_MIN=${GPU_CHECK_MQL_MIN:-2.5}
        MODEL_OVERHEAD_S=${GPU_CHECK_MODEL_OVERHEAD_S:-60}
        MODEL_ARGS=(--show_progress=False)
    else
        SOURCE=tests/fixtures/small/Instruments
        TRAIN_ARGS=(--device cpu --batches 2 --batch_size 32 --repeats 1)
        DECODE_ARGS=(--device cpu --users 16 --batch 16 --hf_users 8 --hf_batch 8 --repeats 1)
        TIGER_MIN=${GPU_CHECK_TIGER_MIN:-0.05}
        MQL_MIN=${GPU_CHECK_MQL_MIN:-0.05}
        MODEL_OVERHEAD_S=${GPU_CHECK_MODEL_OVERHEAD_S:-60}
        MODEL_ARGS=(--show_progress=False --epochs=1 --d_model=64 --d_ff=256 --num_layers=2 --num_decoder_layers=2
                    --num_heads=4 --d_kv=16)
        echo "dry mode: benchmarks on a few batches and users on the CPU; the comparison on $SOURCE with a small T5"
    fi
    if [ ! -f "$SOURCE/Instruments.inter.json" ]; then
        echo "error: $SOURCE/Instruments.inter.json is missing: run 'bash benchmarks/gpu_pack.sh' on a machine with" \
             "the package registries, then carry [\".whl\", \".gpu_data\"]."
        skip "train_speed" "no $SOURCE"
        skip "decode_speed" "no $SOURCE"
        skip "compare TIGER,MQL4GRec" "no $SOURCE"
    else
        # (d) training and decoding throughput, ours against the authors' setup on this device
        step "train_speed" 150 python3 benchmarks/train_speed.py "${TRAIN_ARGS[@]}" --source "$SOURCE" \
            --data_path "$DATA_PATH" --json "$WORK/train.json"
        step "decode_speed" 120 python3 benchmarks/decode_speed.py "${DECODE_ARGS[@]}" --authors_vocab \
            --data "$SOURCE" --json "$WORK/decode.json"

        # (e) TIGER then MQL4GRec, paper protocol, each under its time budget
        COMPARE_ARGS=(--dataset=Instruments --source="$SOURCE" --data_path="$DATA_PATH" --resume_dir="$WORK/compare"
                      --with_reference "${MODEL_ARGS[@]}")
        comparison_budgets
        COMPARE_ARGS=(--protocol="$WORK/protocol_paper_budget.yaml" "${COMPARE_ARGS[@]}")
        step "compare TIGER,MQL4GRec" $(( DEADLINE_S - $(elapsed) - RESERVE_S - AFTER_COMPARE_S )) \
            python3 run_recbole_mql.py --compare=TIGER,MQL4GRec "${COMPARE_ARGS[@]}"
    fi

    # (f) results
    echo "== [$(elapsed)s] results"
    merge_bench
    collect_comparison || true
    [ -f "$OUT/results.md" ] && cat "$OUT/results.md"
    if [ "$MODE" = dry ]; then
        echo "dry mode skipped: the GPU tests (pytest skips them without CUDA), CUDA timings (the benchmarks ran on" \
             "the CPU at a tiny size), the paper-size comparison on the full data (fixture, small T5, 1 epoch)"
    fi
    echo "steps:"
    column -t -s $'\t' "$STEPS" 2>/dev/null || cat "$STEPS"
    echo "gpu_check: done in $(elapsed)s ($MODE mode); files in $OUT: $(ls "$OUT" | paste -sd' ' -)"
    return "$FAILED"
}

main "$@" 2>&1 | tee "$OUT/gpu_check.log"
