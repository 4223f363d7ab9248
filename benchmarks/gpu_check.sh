#!/usr/bin/env bash
# One pass over the GPU paths: the CUDA-marked tests, the step (at 224 px against the original's way, then at the
# lower resolutions of a progressive-resizing recipe) / EMA / bank / batched-augmentation / JPEG-decode benchmarks,
# the real trainer on synthetic data (augmentation + MSF step together, bench train --synthetic), the time-to-train
# plan at the step rate and at the end-to-end rate, then a summary table. JSON lines land in --out. First of all it
# shows the driver's CUDA and the wheels' (torch, DALI), kept in env.jsonl.
#
#   bash benchmarks/gpu_check.sh [--device cuda|cpu] [--tiny] [--out DIR] [--steps N] [--train-steps N]
#   (defaults: --device cuda, --out runs/gpu_check, --steps 10 timed steps per block of bench step,
#   --train-steps 40 steps of bench train)
#
# Needs only torch and torchvision (pytest for the tests step, the trainer's packages for the train check: each
# skipped with a note without them), runs from a plain checkout (no install: the repository root goes on
# PYTHONPATH); 91 s of checks on one H200, before the 160/192-px steps were added. `--device cpu --tiny` is the dry
# run: ResNet-18, batch 8, 32 px, a small bank, one timed step. $PYTHON picks the interpreter (default: python).
# Every check runs even if an earlier one fails; the exit status is 1 when any failed.
set -euo pipefail

device=cuda
tiny=0
out=runs/gpu_check
steps=10
train_steps=40
while (($#)); do
  case "$1" in
    --device|--out|--steps|--train-steps)
      (($# >= 2)) || { echo "gpu_check: $1 needs a value (see --help)" >&2; exit 2; } ;;
  esac
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --tiny) tiny=1; shift ;;
    --out) out="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --train-steps) train_steps="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$device" in cuda|cpu) ;; *) echo "gpu_check: --device must be cuda or cpu, got '$device' (see --help)" >&2; exit 2 ;; esac
for count in "--steps=$steps" "--train-steps=$train_steps"; do
  [[ ${count#*=} =~ ^[1-9][0-9]*$ ]] || { echo "gpu_check: ${count%%=*} must be an integer >= 1, got '${count#*=}'" >&2; exit 2; }
done
mkdir -p "$out" 2> /dev/null && [[ -w $out ]] || { echo "gpu_check: --out $out: cannot create or write that folder" >&2; exit 2; }
out="$(cd "$out" && pwd)"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-python}"
rm -f "$out"/{status.tsv,env.jsonl,pytest.log,step.jsonl,ema.jsonl,bank.jsonl,bank_bf16.jsonl,plan.jsonl}
rm -f "$out"/{augment.jsonl,jpeg.jsonl,train.jsonl,plan_train.jsonl,summary.txt} "$out"/step_*px.jsonl

# First, before any check: the driver's CUDA and the wheels' (torch, DALI where installed), shown and recorded.
"$PYTHON" - "$out/env.jsonl" << 'ENV'
import importlib.util, json, re, sys, torch
from importlib import metadata
from msf_fast import devices
try:  # the train check's packages (asked here: a process of its own would load torch once more)
    import msf_fast.trainer  # noqa: F401
    trainer_missing = "matplotlib" if importlib.util.find_spec("matplotlib") is None else None
except ImportError as error:
    trainer_missing = error.name or str(error).splitlines()[0]
cuda = torch.cuda.is_available()
gpus = devices.nvidia_gpus()
dali = sorted((d.metadata["Name"], d.version) for d in metadata.distributions()
              if re.fullmatch(r"nvidia[-_]dali[-_]cuda[0-9]+", (d.metadata["Name"] or "").lower()))
dali_cuda = re.search(r"cuda([0-9]+)([0-9])$", dali[0][0].lower()) if dali else None
env = {"bench": "env", "python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
       "cuda_available": cuda, "gpu": torch.cuda.get_device_name(0) if cuda else None,
       "nvidia_gpus": list(gpus.names) if gpus else [], "driver": gpus.driver if gpus else None,
       "driver_cuda": gpus.driver_cuda if gpus else None, "dali": dali[0][1] if dali else None,
       "dali_package": dali[0][0] if dali else None, "dali_cuda": ".".join(dali_cuda.groups()) if dali_cuda else None,
       "why_no_cuda": devices.unusable_gpu_message(gpus) if gpus and not cuda else None,
       "trainer_missing": trainer_missing}
with open(sys.argv[1], "w") as file:
    print(json.dumps(env), file=file)
if gpus is None:
    driver = "no NVIDIA driver found"
else:
    driver = "driver " + (gpus.driver or "version unknown") + (f" (CUDA <= {gpus.driver_cuda})" if gpus.driver_cuda else "")
wheels = f"torch {torch.__version__} (" + (f"CUDA {torch.version.cuda})" if torch.version.cuda else "no CUDA: a CPU build)")
wheels += f", DALI {env['dali']} ({env['dali_package']}: CUDA {env['dali_cuda']})" if dali else ", no DALI"
print(f"== versions: {driver}; {wheels}", file=sys.stderr)
ENV
has_cuda=$("$PYTHON" -c 'import json, sys; print(int(json.load(open(sys.argv[1]))["cuda_available"]))' "$out/env.jsonl")
if [[ $device == cuda && $has_cuda == 0 ]]; then
  why=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["why_no_cuda"] or "")' "$out/env.jsonl")
  echo "gpu_check: no CUDA device here${why:+ that torch can use: $why}; use --device cpu --tiny for a dry run" >&2
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
  lower_resolutions=(24)
  ema_args=(--arch resnet18 --repeats 3)
  bank_args=(--batch-size 32 --bank-size 8192 --dim 64 --topk 5 --chunk 1024 --repeats 1)
  augment_args=(--batch-size 8 --resolution 32 --batches 1 --repeats 1)
  jpeg_args=(--images 4 --batch 2 --repeats 1)
  train_args=(--arch resnet18 --batch-size 8 --resolution 32 --bank-size 64 --steps 2 --warmup 1)
else
  step_args=(--arch resnet50 --batch-size 256 --resolution 224 --steps "$steps")
  lower_resolutions=(160 192)  # what a progressive-resizing recipe trains at before 224 (FFCV's ResNet-50 recipes)
  ema_args=(--arch resnet50)
  bank_args=(--batch-size 256 --bank-size 1024000 --dim 512 --topk 5)
  augment_args=(--batch-size 256 --resolution 224)
  jpeg_args=(--images 256 --batch 64)
  # the paper's bank (1,024,000); the end-of-run checkpoint holds it (about 1 GB in bf16, in a temporary folder)
  train_args=(--arch resnet50 --batch-size 256 --resolution 224 --steps "$train_steps" --warmup 5)
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
for resolution in "${lower_resolutions[@]}"; do  # the last --resolution given wins
  run_check "step ${resolution} px" "$out/step_${resolution}px.jsonl" 120 \
    "$PYTHON" -m msf_fast.bench step "${step_args[@]}" --resolution "$resolution" --device "$device"
done
run_check "ema" "$out/ema.jsonl" 120 "$PYTHON" -m msf_fast.bench ema "${ema_args[@]}" --device "$device"
run_check "bank float32" "$out/bank.jsonl" 180 "$PYTHON" -m msf_fast.bench bank "${bank_args[@]}" --device "$device"
run_check "bank bfloat16" "$out/bank_bf16.jsonl" 180 \
  "$PYTHON" -m msf_fast.bench bank "${bank_args[@]}" --dtype bfloat16 --device "$device"
run_check "augment" "$out/augment.jsonl" 120 "$PYTHON" -m msf_fast.bench augment "${augment_args[@]}" --device "$device"
run_check "jpeg decode" "$out/jpeg.jsonl" 120 "$PYTHON" benchmarks/jpeg_decode_gpu.py "${jpeg_args[@]}" --device "$device"

# 3. the real trainer, fed by synthetic uint8 crops on the device: the FFCV path's augmentation + the MSF step
trainer_missing=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["trainer_missing"] or "")' \
  "$out/env.jsonl")
if [[ -z $trainer_missing ]]; then
  run_check "train" "$out/train.jsonl" 300 \
    "$PYTHON" -m msf_fast.bench train --synthetic "${train_args[@]}" --device "$device"
else
  record "train" "skipped: the trainer needs the package '$trainer_missing' (not installed here)" 0
fi

# 4. time to train at the measured msf-fast step rate, and at the trainer's end-to-end rate
rate_of() {  # JSON lines file, key, [variant]: the first matching line's value, or nothing
  "$PYTHON" -c '
import json, sys
try:
    lines = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
    print(next(l[sys.argv[2]] for l in lines if len(sys.argv) < 4 or l.get("variant") == sys.argv[3]))
except (OSError, ValueError, KeyError, StopIteration):
    pass' "$@"
}
measured=$(rate_of "$out/step.jsonl" images_per_s msf-fast)
if [[ -n $measured ]]; then
  run_check "plan" "$out/plan.jsonl" 60 "$PYTHON" -m msf_fast.bench plan --images-per-s "$measured" --gpus 8
else
  record "plan" "skipped: no step rate" 0
fi
end_to_end=$(rate_of "$out/train.jsonl" images_per_s)
if [[ -n $end_to_end ]]; then
  run_check "plan (end-to-end)" "$out/plan_train.jsonl" 60 \
    "$PYTHON" -m msf_fast.bench plan --images-per-s "$end_to_end" --gpus 8
else
  record "plan (end-to-end)" "skipped: no end-to-end rate" 0
fi

# 5. summary
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


def lower_step_result(name):
    ours = by_variant(name).get("msf-fast")
    return f"msf-fast {ours['images_per_s']:,.0f} img/s ({ours['ms_per_step']} ms/step)" if ours else ""


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


def augment_result():
    found = lines("augment.jsonl")
    whole = [line for line in found if line.get("view") == "both"]
    if not whole:
        return ""
    w = whole[-1]
    ops = sorted((line for line in found if line.get("ms_above_base") is not None),
                 key=lambda line: -line["ms_above_base"])[:3]
    text = (f"{w['batch']}x{w['resolution']}px {w['dtype']}: {w['images_per_s']:,.0f} img/s ({w['ms_per_batch']} "
            f"ms/batch: target {w['target_ms']} + online {w['online_ms']})")
    if ops:
        text += " | most: " + ", ".join(f"{o['view']} {o['op']} {o['ms_above_base']} ms" for o in ops)
    return text


def jpeg_result():
    v = by_variant("jpeg.jsonl")
    names = {"nvjpeg": "nvJPEG", "cpu": "libjpeg-turbo on 1 core", "gpu-views": "two views on the GPU"}
    return " | ".join(f"{names[name]} {v[name]['us_per_image']:,.0f} us/img (host CPU {v[name]['cpu_us_per_image']:,.0f})"
                      for name in names if name in v)


def train_result():
    found = [line for line in lines("train.jsonl") if line.get("bench") == "train"]
    if not found:
        return ""
    t = found[-1]
    return (f"end-to-end {t['images_per_s']:,.0f} img/s ({t['arch']}, batch {t['batch']}, {t['resolution']} px, "
            f"amp {t['amp']}) | augment alone {t['loader_images_per_s']:,.0f} | step alone "
            f"{t['step_images_per_s']:,.0f} | data wait {t['data_wait_fraction']:.0%}: {t['bound']}-bound")


def plan_result(name="plan.jsonl"):
    found = lines(name)
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
           **{f"step {r} px": (lambda r=r: lower_step_result(f"step_{r}px.jsonl")) for r in (24, 160, 192)},
           "bank float32": lambda: bank_result("bank.jsonl"), "bank bfloat16": lambda: bank_result("bank_bf16.jsonl"),
           "augment": augment_result, "jpeg decode": jpeg_result, "train": train_result, "plan": plan_result,
           "plan (end-to-end)": lambda: plan_result("plan_train.jsonl")}
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
