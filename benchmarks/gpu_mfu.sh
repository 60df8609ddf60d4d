#!/bin/bash
# Device machine: the MFU ladder of issue 12 (benchmarks/gpu_mfu.py) as one script with a time limit.
# Like gpu_run.sh it unpacks the wheel bundle (transformers 5.24, peft 0.21.2, bitsandbytes 0.50.2, the
# versions of the project's venv) from the git-ignored .whl/ onto PYTHONPATH when it is there; without
# it the machine's own packages are used. Any args go to gpu_mfu.py, e.g.
#   run(command="bash benchmarks/gpu_mfu.sh", carry=[".whl/model-helper"], timeout_s=420)
#   run(command="bash benchmarks/gpu_mfu.sh --variants V0 V1 V4", carry=[".whl/model-helper"])
# Rows are printed as each variant finishes and appended to $OUT/mfu.jsonl; the log goes to $OUT/gpu_mfu.log.
# HQL_MFU_LIMIT (seconds, default 380) bounds the python run, so a timeout still leaves the finished rows.
set -o pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.." || exit 3
BUNDLE=.whl/model-helper/pkgs.tgz
if [ -f "$BUNDLE" ]; then
  mkdir -p /tmp/site && tar xzf "$BUNDLE" -C /tmp/site || exit 3
  export PYTHONPATH=/tmp/site:$PWD
else
  echo "gpu_mfu.sh: no $BUNDLE; using the installed packages" >&2
  export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, peft, bitsandbytes as b; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'peft', peft.__version__, 'bnb', b.__version__)" || exit 3
OUT_DIR="${OUT:-/tmp}"
timeout "${HQL_MFU_LIMIT:-380}" python3 benchmarks/gpu_mfu.py --out "$OUT_DIR/mfu.jsonl" "$@" 2>&1 | tee "$OUT_DIR/gpu_mfu.log"
