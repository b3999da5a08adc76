#!/usr/bin/env bash
# The GPU check (issue 15): one prepared run, <= 8 minutes on one H100/H200, with only the wheels it carries.
#
# Here (with network), once:   ../shared/gpu/wheels.sh .whl      (~27 MB; .whl/ is ignored by git)
# On the GPU machine (repo root; python3 with torch, transformers, peft, accelerate; no network):
#     bash bench/gpu_check.sh            # results: $OUT/gpu_check.json and $OUT/gpu_check.log
# On the CPU (mechanics only, tiny models; needs unsloth/trl/datasets in the python):
#     PYTHON=/path/to/python bash bench/gpu_check.sh --smoke
# What it runs: bench/gpu_check.py (the trainer entry point on gpt-oss -> adapter -> PEFT on the GPU ->
# greedy output changes; then bench/trainer_gpu.py both arms on Llama and gpt-oss).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/rsi-gpu-check-out}
PYTHON=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-430}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
echo "gpu-check: $(date -u +%FT%TZ) $(uname -n)"
if [ "${1:-}" != "--smoke" ]; then
  ls .whl/*.whl > /dev/null 2>&1 || { echo "gpu-check: no wheels in .whl/ (run ../shared/gpu/wheels.sh .whl first)"; exit 2; }
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || { echo "gpu-check: no GPU"; exit 2; }
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu-check: installing the wheels failed"; exit 2; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 \
  UNSLOTH_DISABLE_STATISTICS=1 HF_HUB_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1 TOKENIZERS_PARALLELISM=false
"$PYTHON" -c "import torch, transformers, peft; print('gpu-check: torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'cuda', torch.cuda.is_available())"
"$PYTHON" bench/gpu_check.py --out "$OUT" --budget-s "$BUDGET_S" "$@"
rc=$?
echo "gpu-check: exit $rc"
exit $rc
