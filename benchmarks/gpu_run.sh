#!/bin/bash
# Device machine: unpack the wheel bundle (transformers 5.24, peft 0.21.2, bitsandbytes 0.50.2, the
# versions of the project's venv) onto PYTHONPATH, then run the GPU QLoRA benchmark with any args.
# The bundle lives in the git-ignored .whl/, so the run must carry it, e.g. with the device tool:
#   run(command="bash benchmarks/gpu_run.sh", carry=[".whl/model-helper"], timeout_s=480)
#   run(command="bash benchmarks/gpu_run.sh --steps 50 --paths ours hf", carry=[".whl/model-helper"])
# The log is also written to $OUT/gpu_qlora.log (comes back with the run's files).
set -o pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.." || exit 3
BUNDLE=.whl/model-helper/pkgs.tgz
if [ ! -f "$BUNDLE" ]; then
  echo "gpu_run.sh: $BUNDLE is missing (carry .whl/model-helper along with the run)" >&2
  exit 3
fi
mkdir -p /tmp/site && tar xzf "$BUNDLE" -C /tmp/site || exit 3
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, peft, bitsandbytes as b, accelerate; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'peft', peft.__version__, 'bnb', b.__version__, 'accelerate', accelerate.__version__)" || exit 3
LOG="${OUT:-/tmp}/gpu_qlora.log"
timeout 450 python3 benchmarks/gpu_qlora.py "$@" 2>&1 | tee "$LOG"
