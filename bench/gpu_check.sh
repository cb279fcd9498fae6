#!/usr/bin/env bash
# Prepared GPU check (issue 14), for one CUDA GPU, under 10 minutes in all; prints a summary at the end.
#
#   bash bench/gpu_check.sh                   # from the repository root, the project's .venv
#   PYTHON=python PEAK_TFLOPS=989 OUT=/tmp/gpu_check bash bench/gpu_check.sh
#
# 1. sweep:   the smoke grid (DPO, dLRML; 10 steps each) on the embedded SmolLM2-135M in bf16 under DeepSpeed
#             ZeRO-3, one rank (resources.use_gpu, 1 GPU per trial): the production trial path on one GPU.
# 2. trial:   bench/trial_vs_trl.py on the embedded model (steps/s, tokens/s, MFU against PEAK_TFLOPS), and the
#             trial's own perf/* metrics (perf/mfu, perf/padding_fraction) with the shared-prefix forward (project)
#             and without it (unpacked): the summary prints packed vs unpacked steps/s and MFU.
# 3. mt-bench: wall time of MT-Bench answer generation (HF generate) for 16 questions, bf16, embedded model.
# 4. mt-bench-vllm: the same with mt_bench.eval.generation_backend=vllm (engine start included), where the vllm
#             extra is installed (pip install '.[vllm]'); reported as skipped otherwise.
#
# Each part has its own time limit (4 + 2.5 + 1.5 + 2 min); a part that fails or runs out of time is reported as
# such and the others still run. The exit status is 0 only if every part that ran passed. Logs and JSON results go
# to $OUT.
# It has not been run yet (no GPU where it was written): BENCHMARKS.md says so until it has.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
OUT="${OUT:-bench/results/gpu_check}"
PEAK_TFLOPS="${PEAK_TFLOPS:-989}" # dense bf16 peak of an H100 SXM; A100: 312
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "error: no CUDA GPU visible to $PYTHON: this check needs one" >&2
    exit 2
fi
GPU="$("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(0))')"

declare -A STATUS SECS
run_part() { # name, limit_s, command...
    local name="$1" limit="$2"
    shift 2
    local start=$SECONDS
    echo "[gpu_check] $name (limit ${limit}s) ..."
    if timeout "$limit" "$@" >"$OUT/$name.log" 2>&1; then
        STATUS[$name]=passed
    else
        local rc=$?
        STATUS[$name]="failed (exit $rc$([[ $rc -eq 124 ]] && echo ', timed out'); see $OUT/$name.log)"
    fi
    SECS[$name]=$((SECONDS - start))
}

run_part sweep 240 "$PYTHON" sweep/run.py --config smoke --name gpu_check --no-mlflow \
    "storage_path=$OUT/sweep" train.model=embedded train.precision=bf16 \
    train.deepspeed=trainers/deepspeed/zero3_bf16.json train.max_steps=10 train.eval_steps=5 \
    resources.use_gpu=true resources.gpus_per_worker=1 resources.num_workers=1 resources.cpus_per_worker=4

run_part trial 150 "$PYTHON" bench/trial_vs_trl.py --model embedded --repeats 1 --steps 10 \
    --peak-tflops "$PEAK_TFLOPS" --out "$OUT/trial_vs_trl.json"

MT_BENCH_TIMING=$(cat <<'PY'
import dataclasses, json, sys, time
from pathlib import Path

import torch

from evaluation.generation.checkpoint import write_mt_bench_answers
from evaluation.mt_bench.config import EvalConfig

out, backend = Path(sys.argv[1]), sys.argv[2]
cfg = EvalConfig(limit=16, max_new_tokens=256, generation_backend=backend)
start = time.perf_counter()  # model load / engine start included: what a sweep's generation task pays
answers = write_mt_bench_answers("embedded", "bfloat16", cfg, out / f"mt_bench_{backend}", f"embedded-{backend}")
if torch.cuda.is_available():
    torch.cuda.synchronize()
seconds = time.perf_counter() - start
result = {"backend": backend, "questions": cfg.limit, "turns": 2 * cfg.limit, "max_new_tokens": cfg.max_new_tokens,
          "batch_size": cfg.generation_batch_size, "seconds": seconds, "answers": str(answers)}
(out / f"mt_bench_{backend}.json").write_text(json.dumps(result, indent=2))
print(json.dumps(result))
PY
)
run_part mt_bench 90 "$PYTHON" -c "$MT_BENCH_TIMING" "$OUT" hf
if "$PYTHON" -c 'import vllm' >/dev/null 2>&1; then
    run_part mt_bench_vllm 120 "$PYTHON" -c "$MT_BENCH_TIMING" "$OUT" vllm
else
    STATUS[mt_bench_vllm]="skipped (the vllm extra is not installed)" SECS[mt_bench_vllm]=0
fi

echo
echo "== gpu_check summary ($GPU, $(date -u +%FT%TZ)) =="
for part in sweep trial mt_bench mt_bench_vllm; do
    printf '  %-9s %4ss  %s\n' "$part" "${SECS[$part]}" "${STATUS[$part]}"
done
grep -E '^\[sweep\]|stable|diverged|stalled|collapsed' "$OUT/sweep.log" | tail -n 8 | sed 's/^/  sweep: /'
if [[ -f "$OUT/trial_vs_trl.json" ]]; then
    "$PYTHON" - "$OUT/trial_vs_trl.json" <<'PY'
import json, sys
data = json.load(open(sys.argv[1]))
runs = data.get("runs", {})
keys = ("steps_per_s", "tokens_per_s", "mfu", "perf/mfu", "perf/tokens_per_second", "perf/padding_fraction")
for side, rows in runs.items():
    for row in rows:
        fields = ", ".join(f"{k} {row[k]:.4g}" for k in keys if k in row)
        print(f"  trial:    {side}: {fields}")
packed, unpacked = runs.get("project") or [], runs.get("unpacked") or []
if packed and unpacked:  # the shared-prefix forward against TRL's padded one, first repeat
    p, u = packed[0], unpacked[0]
    mfu = " ".join(f"{side} perf/mfu {row['perf/mfu']:.3f}" for side, row in (("packed", p), ("unpacked", u))
                   if "perf/mfu" in row)
    print(f"  trial:    packed vs unpacked: steps/s {p['steps_per_s']:.3g} vs {u['steps_per_s']:.3g} "
          f"(x{p['steps_per_s'] / u['steps_per_s']:.2f}); {mfu}")
PY
fi
for backend in hf vllm; do
    [[ -f "$OUT/mt_bench_$backend.json" ]] && sed 's/^/  mt_bench: /' "$OUT/mt_bench_$backend.json" | tr -d '\n' && echo
done
for part in sweep trial mt_bench mt_bench_vllm; do
    [[ "${STATUS[$part]}" == passed || "${STATUS[$part]}" == skipped* ]] || exit 1
done
