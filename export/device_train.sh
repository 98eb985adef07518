#!/usr/bin/env bash
# One self-contained training call on the device machine (see export/TRAINING.md):
#   1. install the carried diffusers wheel (.whl/);
#   2. a short throughput probe, 150 steps, to measure steps/s;
#   3. `osr-export train` with --max-steps sized so the cosine schedule ends inside CALL_SECONDS;
#   4. the fp32 model/ folder and the logs go to $OUT as 15 MB parts of one tar.
# Extra `osr-export train` flags come from TRAIN_FLAGS, e.g. TRAIN_FLAGS="--lr 3e-4 --init .devrun/init".
# Usage there:  CALL_SECONDS=560 TRAIN_FLAGS="..." bash export/device_train.sh
set -u
export PYTHONUNBUFFERED=1
root=$PWD start=$(date +%s) logs=/tmp/train-logs
call_seconds=${CALL_SECONDS:-560}
mkdir -p "$logs"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$root/sdk:$root/runtime:$root/export
{ nvidia-smi; nproc; python3 -c "import torch, diffusers; print(torch.__version__, diffusers.__version__)"; } > "$logs/machine.txt" 2>&1
train="python3 -m osr_export.cli train --data .data/train --size edge --batch-size 16 --workers 14 ${TRAIN_FLAGS:-}"
$train --out /tmp/probe --max-steps 150 --log-every 20 --checkpoint-every 100000 > "$logs/probe.log" 2>&1 || { tail "$logs/probe.log"; exit 1; }
rate=$(python3 -c "
import json; log = [json.loads(l) for l in open('/tmp/probe/log.jsonl')]
a, b = log[3], log[-1]; print((b['step'] - a['step']) / (b['elapsed_s'] - a['elapsed_s']))")
budget=$(( call_seconds - ($(date +%s) - start) - 40 ))   # 40 s for saving and the tar
steps=$(python3 -c "print(int($rate * ($budget - 60) * 0.92))")   # ~55 s of loading before the first step
echo "rate $rate steps/s, budget $budget s, max-steps $steps" | tee "$logs/plan.txt"
$train --out /tmp/train-edge --max-steps "$steps" --time-limit "$budget" --log-every 50 --checkpoint-every 100000 \
  > "$logs/train.log" 2>&1
echo "train rc $?" >> "$logs/plan.txt"
cp /tmp/train-edge/log.jsonl /tmp/train-edge/state.json /tmp/train-edge/config.json "$logs/" 2>/dev/null
tar cf - -C /tmp/train-edge model -C /tmp train-logs | split -b 15m - "$OUT/train-edge.tar.part-"
tail -3 "$logs/train.log"; cat "$logs/plan.txt"
