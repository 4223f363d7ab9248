#!/usr/bin/env bash
# One pass over the GPU paths: the CUDA-marked tests, then the step / EMA / bank benchmarks and the
# time-to-train plan at the measured step rate, then a summary table. JSON lines land in --out.
#
#   bash benchmarks/gpu_check.sh [--device cuda|cpu] [--tiny] [--out DIR] [--steps N]
#
# Needs only torch and torchvision (pytest for the tests step; skipped with a note without it), runs
# from a plain checkout (no install: the repository root goes on PYTHONPATH), about 2-3 minutes on one
# H100. `--device cpu --tiny` is the dry run: ResNet-18, batch 8, 32 px, a small bank, one timed step.
# $PYTHON picks the interpreter (default: python). Every check runs even if an earlier one fails; the
# exit status is 1 when any failed.
set -euo pipefail

device=cuda
tiny=0
out=runs/gpu_check
steps=10
while (($#)); do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --tiny) tiny=1; shift ;;
    --out) out="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$device" in cuda|cpu) ;; *) echo "gpu_check: --device must be cuda or cpu, got '$device'" >&2; exit 2 ;; esac

mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-python}"
rm -f "$out"/{status.tsv,env.jsonl,pytest.log,step.jsonl,ema.jsonl,bank.jsonl,bank_bf16.jsonl,plan.jsonl,summary.txt}

"$PYTHON" -c '
import json, sys, torch
cuda = torch.cuda.is_available()
print(json.dumps({"bench": "env", "python": sys.version.split()[0], "torch": torch.__version__,
                  "cuda": torch.version.cuda, "cuda_available": cuda,
                  "gpu": torch.cuda.get_device_name(0) if cuda else None}))' > "$out/env.jsonl"
has_cuda=$("$PYTHON" -c 'import json, sys; print(int(json.load(open(sys.argv[1]))["cuda_available"]))' "$out/env.jsonl")
if [[ $device == cuda && $has_cuda == 0 ]]; then
  echo "gpu_check: no CUDA device here; use --device cpu --tiny for a dry run" >&2
  exit 1
fi

with_timeout=()
if command -v timeout > /dev/null; then with_timeout=(timeout -k 10); fi

any_failed=0
record() {  # name, status, seconds
  printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$out/status.tsv"
}
run_check() {  # name, stdout file, time limit (s), command...: stdout is shown and kept, stderr shown
  local name=$1 file=$2 limit=$3 start=$SECONDS
  shift 3
  echo "== $name: $*" >&2
  local limited=("$@")
  if ((${#with_timeout[@]})); then limited=("${with_timeout[@]}" "$limit" "$@"); fi
  if "${limited[@]}" | tee "$file"; then
    record "$name" ok $((SECONDS - start))
  else
    record "$name" FAILED $((SECONDS - start))
    any_failed=1
  fi
}

if ((tiny)); then
  step_args=(--arch resnet18 --batch-size 8 --resolution 32 --bank-size 64 --steps 1 --repeats 1)
  ema_args=(--arch resnet18 --repeats 3)
  bank_args=(--batch-size 32 --bank-size 8192 --dim 64 --topk 5 --chunk 1024 --repeats 1)
else
  step_args=(--arch resnet50 --batch-size 256 --resolution 224 --steps "$steps")
  ema_args=(--arch resnet50)
  bank_args=(--batch-size 256 --bank-size 1024000 --dim 512 --topk 5)
fi

# 1. CUDA tests: only the files that hold some (the others may import packages this machine lacks)
if ((has_cuda)); then
  if "$PYTHON" -c 'import pytest' 2> /dev/null; then
    mapfile -t cuda_test_files < <(grep -l 'mark\.cuda' tests/test_*.py)
    run_check "cuda tests" "$out/pytest.log" 300 \
      "$PYTHON" -m pytest -q -m cuda -p no:cacheprovider "${cuda_test_files[@]}"
  else
    record "cuda tests" "skipped: pytest not installed" 0
  fi
else
  record "cuda tests" "skipped: no CUDA" 0
fi

# 2. benchmarks
run_check "step" "$out/step.jsonl" 300 \
  "$PYTHON" -m msf_fast.bench step "${step_args[@]}" --reference --device "$device"
run_check "ema" "$out/ema.jsonl" 120 "$PYTHON" -m msf_fast.bench ema "${ema_args[@]}" --device "$device"
run_check "bank float32" "$out/bank.jsonl" 180 "$PYTHON" -m msf_fast.bench bank "${bank_args[@]}" --device "$device"
run_check "bank bfloat16" "$out/bank_bf16.jsonl" 180 \
  "$PYTHON" -m msf_fast.bench bank "${bank_args[@]}" --dtype bfloat16 --device "$device"

# 3. time to train at the measured msf-fast step rate
measured=$("$PYTHON" -c '
import json, sys
try:
    lines = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
    print(next(l["images_per_s"] for l in lines if l.get("variant") == "msf-fast"))
except (OSError, StopIteration):
    pass' "$out/step.jsonl")
if [[ -n $measured ]]; then
  run_check "plan" "$out/plan.jsonl" 60 "$PYTHON" -m msf_fast.bench plan --images-per-s "$measured" --gpus 8
else
  record "plan" "skipped: no step rate" 0
fi

# 4. summary
"$PYTHON" - "$out" "$tiny" << 'EOF' | tee "$out/summary.txt"
import json
import os
import sys

out, tiny = sys.argv[1], sys.argv[2] == "1"


def lines(name):
    path = os.path.join(out, name)
    if not os.path.exists(path):
        return []
    parsed = []
    for line in open(path):
        try:
            parsed.append(json.loads(line))
        except ValueError:  # a line cut short by a failed or timed-out run
            pass
    return [line for line in parsed if isinstance(line, dict)]


def by_variant(name):
    return {line["variant"]: line for line in lines(name) if "variant" in line}


def summary_line(name):
    found = [line for line in lines(name) if "variant" not in line]
    return found[-1] if found else {}


def step_result():
    v, s = by_variant("step.jsonl"), summary_line("step.jsonl")
    if "msf-fast" not in v:
        return ""
    ours = v["msf-fast"]
    text = f"msf-fast {ours['images_per_s']:,.0f} img/s ({ours['ms_per_step']} ms/step, amp {ours['amp']})"
    if "reference" in v:
        text += f" | reference {v['reference']['images_per_s']:,.0f} img/s | {s.get('speedup_vs_reference')}x"
    return text + f" | peak {s.get('process_peak_mem_mb', '?')} MB"


def ema_result():
    v, s = by_variant("ema.jsonl"), summary_line("ema.jsonl")
    text = " | ".join(f"{name} {line['us']:,.0f} us" for name, line in v.items())
    if "graphed_speedup_vs_foreach" in s:
        text += f" | graphed {s['graphed_speedup_vs_foreach']}x foreach"
    return text


def bank_result(name):
    v, s = by_variant(name), summary_line(name)
    if not {"chunked", "dense"} <= v.keys():
        return ""
    c, d = v["chunked"], v["dense"]
    return (f"chunked {c['ms']} ms +{c['peak_extra_mb']:,.0f} MB | dense {d['ms']} ms +{d['peak_extra_mb']:,.0f} MB"
            f" | {s.get('speedup_vs_dense')}x, loss diff {s.get('loss_abs_diff', float('nan')):.1e}")


def plan_result():
    found = lines("plan.jsonl")
    if not found:
        return ""
    p = found[-1]
    return (f"{p['epochs']:g} epochs on {p['gpus']} GPUs at {p['images_per_s_per_gpu']:,.0f} img/s/GPU: "
            f"{p['hours']:.2f} h ({p['binding_limit']}-bound); {p['target_hours']:g} h needs "
            f"{p['images_per_s_per_gpu_needed']:,.0f} img/s/GPU")


def pytest_result():
    path = os.path.join(out, "pytest.log")
    if not os.path.exists(path):
        return ""
    tail = [line.strip() for line in open(path) if line.strip()]
    return tail[-1] if tail else ""


results = {"cuda tests": pytest_result, "step": step_result, "ema": ema_result,
           "bank float32": lambda: bank_result("bank.jsonl"), "bank bfloat16": lambda: bank_result("bank_bf16.jsonl"),
           "plan": plan_result}
env = (lines("env.jsonl") or [{}])[0]
print(f"gpu_check summary: {env.get('gpu') or 'cpu'}, torch {env.get('torch')}, "
      f"{'tiny dry run' if tiny else 'full settings'}; JSON lines in {out}")
rows = [("check", "status", "s", "result")]
for line in open(os.path.join(out, "status.tsv")):
    name, status, seconds = line.rstrip("\n").split("\t")
    rows.append((name, status, seconds, results[name]() if name in results else ""))
widths = [max(len(row[i]) for row in rows) for i in range(3)]
for row in rows:
    print("  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths)) + "  " + row[3])
EOF
exit "$any_failed"
