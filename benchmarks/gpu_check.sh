#!/usr/bin/env bash
# Everything that needs a GPU, in one command that ends within about 8 minutes on one H100:
#   1. the tests of the CUDA path (tests/test_cuda.py; all skipped without a GPU),
#   2. the throughput benchmark on the GPU (fp32 and bf16 rows, batched augmentation on the device),
#   3. `fit --config configs/base.yaml` capped by --trainer.max_time (4 minutes), then seconds and
#      val/acc per epoch, read back from its TensorBoard log.
#
# Usage: bash benchmarks/gpu_check.sh [--quick] [--data_dir DIR] [--out DIR] [--max_time DD:HH:MM:SS]
#   --data_dir  CIFAR-10 in either layout (default: $CIFAR10_DIR, else data/ in the repository, where
#               fit downloads it). Where it holds no CIFAR-10 (a GPU machine without the data, say),
#               the GPU run uses CIFAR-sized random images instead and says so: every timing holds,
#               val/acc is chance.
#   --out       folder for logs, checkpoints and TensorBoard runs (default: a new temporary folder);
#               nothing is written into the repository's checkpoints/ or lightning_logs/.
#   --quick     a CPU run in well under a minute: tiny synthetic data, two-batch epochs. The test
#               suite runs it (tests/test_benchmarks.py) so that this script cannot rot.
# Python: $PYTHON, else python3, with the project importable (installed, or this checkout is put
# on PYTHONPATH) and its requirements (jsonargparse is not in every image: carry it as a wheel).
# Exit status: 0 when every step passed, 1 when one failed (its log's end is shown), 2 for bad arguments.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
QUICK=0
DATA="${CIFAR10_DIR:-$REPO/data}"
OUT=""
MAX_TIME="00:00:04:00"

die() { echo "gpu_check.sh: error: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --data_dir) [ $# -ge 2 ] || die "--data_dir needs a folder"; DATA="$2"; shift ;;
    --out) [ $# -ge 2 ] || die "--out needs a folder"; OUT="$2"; shift ;;
    --max_time) [ $# -ge 2 ] || die "--max_time needs DD:HH:MM:SS"; MAX_TIME="$2"; shift ;;
    -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
[[ "$MAX_TIME" =~ ^[0-9]{2}:[0-9]{2}:[0-9]{2}:[0-9]{2}$ ]] || die "--max_time $MAX_TIME is not DD:HH:MM:SS"
# Every path is made absolute now, against the folder the command was started in: the steps run elsewhere.
if [ -z "$OUT" ]; then OUT="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"; fi
mkdir -p "$OUT" || die "cannot create --out $OUT"
OUT="$(cd "$OUT" && pwd)"
[ "$OUT" != "$REPO" ] || die "--out must not be the repository itself (its checkpoints/ and lightning_logs/ stay untouched)"
case "$DATA" in /*) ;; *) DATA="$PWD/$DATA" ;; esac
case "$PY" in */*) PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")" ;; esac
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

# Header: the machine and the versions; missing requirements end the check here, in one line.
"$PY" - "$QUICK" <<'EOF' || exit 2
import importlib, platform, sys
missing = [m for m in ("torch", "lightning", "jsonargparse", "tensorboard", "torchmetrics", "matplotlib",
                       "torchvision", "PIL", "pytest") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu_check.sh: error: missing Python packages: {', '.join(missing)}")
import torch, lightning
quick = sys.argv[1] == "1"
if not quick and not torch.cuda.is_available():
    sys.exit("gpu_check.sh: error: PyTorch sees no CUDA GPU here; on a CPU, run it with --quick")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    device = f"{p.name}, {p.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}, driver capability {p.major}.{p.minor}"
else:
    device = f"CPU only ({platform.machine()}, {__import__('os').cpu_count()} cores)"
print(f"Device: {device}")
print(f"torch {torch.__version__}, lightning {lightning.__version__}, Python {platform.python_version()}")
EOF
echo "Mode: $([ $QUICK = 1 ] && echo 'quick (CPU, tiny synthetic data)' || echo full); output in $OUT"

SYNTHETIC=""
if [ $QUICK = 1 ]; then
  SYNTHETIC="$OUT/synthetic"; PER_CLASS=20   # 200 training images (50 held out), 100 test images
elif ! "$PY" -c "import sys; from pathlib import Path; from cifar_lightning.data.sources import find_layout; find_layout(Path(sys.argv[1]))" "$DATA" 2>/dev/null; then
  echo "Data: no CIFAR-10 at $DATA; using CIFAR-sized random images (50,000 + 10,000): timings hold, val/acc is chance"
  SYNTHETIC="$OUT/synthetic"; PER_CLASS=5000
fi
if [ -n "$SYNTHETIC" ]; then
  if [ ! -d "$SYNTHETIC" ]; then
    "$PY" -c "import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; from throughput import synthetic_folder; synthetic_folder(Path(sys.argv[2]), int(sys.argv[3]))" \
      "$REPO/benchmarks" "$SYNTHETIC" "$PER_CLASS" || die "could not write synthetic images to $SYNTHETIC"
  fi
  DATA="$SYNTHETIC"
fi
echo "Data: $DATA"
CACHE="$OUT/cache"  # decoded once by the benchmark, read by the fit

FAILED=()
START=$SECONDS
step() {  # step NAME DIR LOG COMMAND...: run it in DIR, its output to LOG; on failure show the log's end
  local name="$1" dir="$2" log="$3" began=$SECONDS; shift 3
  if (cd "$dir" && "$@") >"$log" 2>&1; then
    echo "$name: ok ($((SECONDS - began)) s, log $log)"
  else
    echo "$name: FAILED, exit $? ($((SECONDS - began)) s); the end of $log:"; tail -n 30 "$log"; FAILED+=("$name")
  fi
}

echo; echo "== 1/3 tests of the CUDA path (tests/test_cuda.py) =="
step tests "$REPO" "$OUT/tests.log" "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py
grep -E "^SKIPPED" "$OUT/tests.log" | head -n 1
tail -n 1 "$OUT/tests.log"

echo; echo "== 2/3 throughput benchmark (configs/base.yaml, fp32 and bf16) =="
if [ $QUICK = 1 ]; then
  BENCH=(--steps 2 --repeats 1 --predict_batches 1 -- --data.val_size 50)
else
  BENCH=(--device cuda)
fi
step benchmark "$OUT" "$OUT/benchmark.log" "$PY" "$REPO/benchmarks/throughput.py" --data_dir "$DATA" --cache_dir "$CACHE" \
  --workdir "$OUT/benchmark" "${BENCH[@]}"
sed -n '/^Device:/,$p' "$OUT/benchmark.log"

echo; echo "== 3/3 fit --config configs/base.yaml --trainer.max_time $MAX_TIME =="
FIT=(--trainer.max_time "$MAX_TIME")
[ $QUICK = 1 ] && FIT+=(--data.val_size 50 --trainer.max_epochs 2 --trainer.limit_train_batches 2 --trainer.limit_val_batches 1)
mkdir -p "$OUT/fit"
step fit "$OUT/fit" "$OUT/fit.log" "$PY" -m cifar_lightning fit --config "$REPO/configs/base.yaml" \
  --data.data_dir "$DATA" --data.cache_dir "$CACHE" "${FIT[@]}"
grep -E "^Precision|Test accuracy" "$OUT/fit.log"
# Seconds per epoch from the event times of each epoch's val/acc (the first from the log's creation,
# so it includes the sanity check and cuDNN's first-call tuning); val/acc as logged.
[[ " ${FAILED[*]} " == *" fit "* ]] || "$PY" - "$OUT/fit/lightning_logs" <<'EOF' || FAILED+=(epochs)
import sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from cifar_lightning.report.runs import find_run_dir, run_started
run = find_run_dir(sys.argv[1])
points = EventAccumulator(str(run), size_guidance={"scalars": 0}).Reload().Scalars("val/acc")
previous = run_started(run)
print(f"{'epoch':>5}  {'seconds':>7}  val/acc   (TensorBoard log {run})")
for epoch, point in enumerate(points):
    note = "  (from the log's start: sanity check and warm-up included)" if epoch == 0 else ""
    print(f"{epoch:>5}  {point.wall_time - previous:>7.1f}  {point.value:.4f}{note}")
    previous = point.wall_time
if len(points) > 1:
    times = [b.wall_time - a.wall_time for a, b in zip(points, points[1:])]
    print(f"epochs: {len(points)} in the time limit; seconds per epoch after the first: "
          f"median {sorted(times)[len(times) // 2]:.1f}; best val/acc {max(p.value for p in points):.4f}")
EOF

echo
if [ ${#FAILED[@]} -eq 0 ]; then
  echo "gpu_check: all steps passed in $((SECONDS - START)) s"
else
  echo "gpu_check: FAILED: ${FAILED[*]} (after $((SECONDS - START)) s)"; exit 1
fi
