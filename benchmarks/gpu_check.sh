#!/usr/bin/env bash
# One-shot GPU check: the CUDA path end to end, bf16 against fp32, the start-up of CLT training at
# the gpt2 preset's shape, and the GPU benchmark table.
#
#   OUT=/some/writable/dir bash benchmarks/gpu_check.sh             # on the GPU machine
#   OUT=/tmp/gc DEVICE=cpu bash benchmarks/gpu_check.sh             # smoke test on a CPU (tiny)
#   GPU_CHECK_STEPS="bench toy" OUT=... bash benchmarks/gpu_check.sh  # some steps, in that order
#
# Every step runs under `timeout` and logs to $OUT/<step>.log; a failing step does not stop the
# others. $OUT/summary.txt collects the numbers. The runs themselves go to $WORK (default: a fresh
# temporary folder), and $OUT/runs.tgz brings back their small files (metrics, logs, tables,
# reports; no tensors), so that $OUT stays within what the device tool returns (8 files).
# GPU_CHECK_STEPS (default "toy precision train", ~8 minutes on an H100; add "bench" for the
# table, ~3 minutes) picks the steps; TOY_LIMIT (270 s; 133 s measured with the check),
# PREC_LIMIT (280; four runs of ~63 s), TRAIN_LIMIT (90; 81 s), BENCH_LIMIT (200) and
# GPU_CHECK_PRECISIONS size them.
#
# Steps:
#  toy: clt-bench run on the toy with --device cuda, all stages; then `clt-bench check` against
#      results/reference/toy.json. To compare with a CPU run of exactly the same settings:
#        python3 -m clt_bench run --model toy --device cpu --out results/toy-cpu
#        python3 -m clt_bench compare-runs results/toy-cpu $WORK/toy-cuda
#      If the full run fails (e.g. in a stage outside the CLT; not when it runs out of time), the
#      remaining stages are run without the baseline so that their CUDA path is still exercised.
#  precision: benchmarks/bench_precision.py on gpt2-random (toy corpus, 2,048 features/layer,
#      150 steps): fp32 and bf16, seeds 0 and 1: NMSE, L0, dead, top-1, CE recovered, verdict.
#  train: train-clt --preset gpt2 --model gpt2-random (toy corpus), 15 steps at each precision of
#      GPU_CHECK_PRECISIONS (default "bf16"; "bf16 tf32 fp32" for all): "first training step
#      begins N s after the model was loaded" and steps/s.
#  bench: python3 benchmarks/bench_gpu.py --profile: the graph row, the seed-scale rows (fused
#      epilogue in passes of 2,048 tokens and in one pass, the composed ops, the sparse decoder;
#      torch.profiler tables of the first), then the gpt2-shape rows.
set -u
OUT=${OUT:?set OUT to a writable folder}
DEVICE=${DEVICE:-cuda}
# step limits are multiplied by this (a CPU smoke test on a busy machine needs far longer)
if [ "$DEVICE" = "cpu" ]; then SCALE=${TIMEOUT_SCALE:-10}; else SCALE=${TIMEOUT_SCALE:-1}; fi
WORK=${WORK:-$(mktemp -d -t gpu_check.XXXXXX)}
mkdir -p "$OUT" "$WORK"
cd "$(dirname "$0")/.."
if [ "$DEVICE" != "cpu" ] && [ -f .gpu/gpu-env.sh ]; then
    # shellcheck disable=SC1091
    source .gpu/gpu-env.sh
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
# `$PY "${CLT[@]}" ARGS` runs `python -m clt_bench ARGS`, printing every thread's stack to the log
# when `timeout` stops it (SIGTERM), so a step that runs out of time says where it was
CLT=(-c "import faulthandler, runpy, signal; faulthandler.register(signal.SIGTERM, all_threads=True, chain=True); runpy.run_module('clt_bench', run_name='__main__', alter_sys=True)")
T0=$SECONDS
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }

step() {  # step NAME TIMEOUT_S CMD...: run CMD under timeout, log to $OUT/NAME.log
    local name=$1 limit=$(($2 * SCALE))
    shift 2
    local t=$SECONDS
    timeout --signal=TERM --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    note "[$name] rc=$rc in $((SECONDS - t)) s (limit $limit s): $*"
    return $rc
}

note "gpu_check on $(hostname) device=$DEVICE at $(date -u +%FT%TZ)"
$PY - <<'EOF' 2>&1 | tee -a "$SUMMARY"
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("card", torch.cuda.get_device_name(0))
try:
    import triton
    print("triton", triton.__version__)
except ImportError as err:
    print("triton: not importable:", err)
EOF

if [ "$DEVICE" = "cpu" ]; then  # tiny settings: only checks that every step runs through
    TRAIN_SETS=(--set clt.n_features=64 --set activations.shuffle_buffer=4096
                --set clt.batch_tokens=512 --set clt.norm_batches=2
                --set activations.eval_tokens=512 --set clt.eval_tokens=128)
    TOY_SETS=(--set clt.n_steps=30 --set plt.n_steps=30 --set plt.n_features=64
              --set activations.n_tokens=20000 --set graphs.n_prompts=4
              --set features.top_k=4 --set features.n_plots=1 --set features.curve_dense=3
              --set baseline.n_examples=12 --set baseline.discovery_examples=8
              --set baseline.n_random=2 --set baseline.neuron_examples=6
              --set baseline.neuron_candidates=4 --set baseline.curve_dense=3
              --set baseline.max_steps=2 --set task.n=24)
    SMALL_STEPS=6
else
    TRAIN_SETS=()
    TOY_SETS=()
    SMALL_STEPS=15
fi

# ---- bench: the GPU benchmark table --------------------------------------------------------------
check_bench() {
    if [ -f benchmarks/bench_gpu.py ]; then
        if [ "$DEVICE" = "cpu" ]; then
            step bench-gpu 60 $PY benchmarks/bench_gpu.py --device cpu --tiny
        else
            step bench-gpu "${BENCH_LIMIT:-200}" $PY benchmarks/bench_gpu.py --profile \
                --json "$WORK/bench_gpu.json"
        fi
        # the table and its verdict lines (the profiler tables stay in bench-gpu.log)
        grep -E "^(device|matmul|graph|shape|gpt2|seed|  \()" "$OUT/bench-gpu.log" >> "$SUMMARY"
    else
        note "[bench-gpu] benchmarks/bench_gpu.py not present: skipped"
    fi
}

# ---- toy: the toy pipeline on the device --------------------------------------------------------
check_toy() {
    step toy-run ${TOY_LIMIT:-270} $PY "${CLT[@]}" run --model toy --device "$DEVICE" \
        --out "$WORK/toy-$DEVICE" "${TOY_SETS[@]}"
    rc=$?
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && [ "$rc" -ne 137 ]; then  # failed, not out of time
        step toy-run-without-baseline 120 $PY "${CLT[@]}" run --model toy --device "$DEVICE" \
            --out "$WORK/toy-$DEVICE" --stages task,activations,clt,graphs,features,compare,report \
            "${TOY_SETS[@]}"
    fi
    if [ -f "$WORK/toy-$DEVICE/metrics.json" ]; then
        step toy-check 30 $PY -m clt_bench check "$WORK/toy-$DEVICE"
        tail -n 40 "$OUT/toy-check.log" >> "$SUMMARY"
    fi
    grep -h "finished in" "$OUT"/toy-run*.log 2>/dev/null | tee -a "$SUMMARY"
}

# ---- precision: bf16 against fp32 on gpt2-random, within the seed spread? ------------------------
check_precision() {
    if [ "$DEVICE" = "cpu" ]; then
        PREC_SETS=(--set clt.n_steps=20 --set clt.n_features=64 --set clt.batch_tokens=512
                   --set activations.shuffle_buffer=4096 --set clt.norm_batches=2)
    else
        # 2,048 features/layer: fp32 without TF32 runs at ~50 TFLOP/s on an H100 (~0.13 s a step)
        PREC_SETS=(--set clt.n_steps=${PREC_STEPS:-150} --set clt.n_features=2048)
    fi
    local seeds=(0 1)
    step precision "${PREC_LIMIT:-280}" $PY benchmarks/bench_precision.py --out "$WORK/precision" \
        --preset gpt2 --model gpt2-random --device "$DEVICE" --seeds "${seeds[@]}" \
        --set 'activations.corpus="toy"' --set activations.eval_tokens=4096 \
        --set clt.eval_tokens=2048 --set clt.log_every=25 --set clt.warmup_steps=20 "${PREC_SETS[@]}"
    rc=$?
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then  # out of time: the verdict on the runs that finished
        $PY benchmarks/bench_precision.py --summarise --out "$WORK/precision" --seeds "${seeds[@]}" \
            >> "$OUT/precision.log" 2>&1
    fi
    grep -vE "^\s*$" "$OUT/precision.log" | tail -n 12 >> "$SUMMARY"
}

# ---- train: start-up and training speed at the gpt2 preset shape, per precision -----------------
check_train() {
    for prec in ${GPU_CHECK_PRECISIONS:-bf16}; do
        step "train-gpt2-$prec" "${TRAIN_LIMIT:-90}" $PY -m clt_bench -v train-clt --preset gpt2 \
            --model gpt2-random --device "$DEVICE" --out "$WORK/train-gpt2-$prec" --no-resume \
            --set 'activations.corpus="toy"' --set activations.eval_tokens=4096 \
            --set clt.eval_tokens=1024 --set clt.n_steps=$SMALL_STEPS --set clt.log_every=5 \
            --set clt.warmup_steps=5 --set "clt.precision=\"$prec\"" "${TRAIN_SETS[@]}"
        $PY - "$WORK/train-gpt2-$prec" "$prec" "$OUT/train-gpt2-$prec.log" <<'EOF' 2>&1 | tee -a "$SUMMARY"
import json, re, sys
from pathlib import Path
run, prec, log = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
text = log.read_text() if log.is_file() else ""
m = re.search(r"first training step begins ([0-9.]+) s after the model was loaded", text)
init = re.search(r"CLT initialised from data in ([0-9.]+) s", text)
rows = [json.loads(r) for r in (run / "clt" / "train_log.jsonl").read_text().splitlines()
        if r.strip()] if (run / "clt" / "train_log.jsonl").is_file() else []
sps = tok = float("nan")
if len(rows) >= 2:
    a, b = rows[0], rows[-1]
    sps = (b["step"] - a["step"]) / max(b["seconds"] - a["seconds"], 1e-9)
    tok = sps * (b["tokens"] - a["tokens"]) / max(b["step"] - a["step"], 1)
met = run / "clt" / "metrics.json"
nmse = json.loads(met.read_text()).get("nmse") if met.is_file() else None
print(f"  {prec}: start-up {m.group(1) if m else '?'} s after model load (init {init.group(1) if init else '?'} s); "
      f"{sps:.2f} steps/s, {tok:,.0f} tokens/s (steps {rows[0]['step'] if rows else '?'}-"
      f"{rows[-1]['step'] if rows else '?'}); nmse {nmse}")
EOF
    done
}

# ---- run the steps named in GPU_CHECK_STEPS, in that order ----------------------------------------
for s in ${GPU_CHECK_STEPS:-toy precision train}; do
    case $s in
        bench|toy|precision|train) "check_$s" ;;
        *) note "unknown step '$s' (bench, toy, precision, train)" ;;
    esac
done

# ---- bring back the runs' small files (metrics, logs, tables, reports), never their tensors -------
(cd "$WORK" && find . -type f -size -4M ! -name '*.safetensors' ! -name '*.pt' -print0 \
    | tar czf "$OUT/runs.tgz" --null -T -) \
    && note "runs.tgz: $(du -h "$OUT/runs.tgz" | cut -f1) of the small files under $WORK"
note "gpu_check finished in $((SECONDS - T0)) s"
