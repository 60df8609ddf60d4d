#!/bin/bash
# The GPU check of issue 23 (docs/gpu.md) on a bare H100/H200 machine, in one call of at most 9 minutes:
# installs the packages that machine lacks from the carried wheel folder (built on a CPU machine by
# benchmarks/gpu_wheels.py: bitsandbytes, transformers and peft at the project's versions, datasets, penman,
# smatch), then runs benchmarks/gpu_check.py (preflight, the rungs of the node's own step, a train_node pass).
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl/gpu_check"], timeout_s=600)
#   run(command="bash benchmarks/gpu_check.sh --rungs 1 2 7", carry=[".whl/gpu_check"], timeout_s=600)
# Rows stream to $OUT/gpu_check.jsonl (one per stage and rung, as each finishes), the log to $OUT/gpu_check.log.
# On a CPU machine: bash benchmarks/gpu_check.sh --dry-run (uses the installed packages).
set -o pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
export TOKENIZERS_PARALLELISM=false
cd "$(dirname "$0")/.." || exit 3
WHEELS=.whl/gpu_check
OUT_DIR="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT_DIR" || exit 3
LIMIT=530  # the GPU call's 9 minutes, less the install; the dry run's own --total is 900 s
if [[ " $* " == *" --dry-run "* ]]; then  # the CPU machine's own packages (the wheels are for the GPU image)
  export PYTHONPATH=$PWD LIMIT=960
elif compgen -G "$WHEELS/*.whl" >/dev/null; then
  t0=$SECONDS
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/hql-site \
    "$WHEELS"/*.whl || exit 3
  export PYTHONPATH=/tmp/hql-site:$PWD
  echo "gpu_check.sh: installed $(ls "$WHEELS"/*.whl | wc -l) wheels in $((SECONDS - t0)) s"
else
  echo "gpu_check.sh: no wheels in $WHEELS: build them on a CPU machine (.venv/bin/python benchmarks/gpu_wheels.py)" \
       "and carry the folder (carry=[\"$WHEELS\"])" >&2
  exit 3
fi
PY="${PYTHON:-python3}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
timeout "$LIMIT" "$PY" benchmarks/gpu_check.py --out "$OUT_DIR" "$@" 2>&1 | tee "$OUT_DIR/gpu_check.log"
