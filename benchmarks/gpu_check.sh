#!/usr/bin/env bash
# The prepared GPU check for a session that is lent a device machine (one call, about 5-8 minutes on an H100):
#   run(command="bash benchmarks/gpu_check.sh", timeout_s=590)
# ../shared does not travel to that machine, so the benchmark uses seeded random weights (timings do not depend on
# the weights) and a synthetic 1024² image; it needs only torch and numpy, which the machine's python3 has.
# Results land in $OUT (gpu.md, gpu.json, gpu.log); copy them to benchmarks/results/ and quote them in the README,
# naming the card.
set -euo pipefail
export PYTHONUNBUFFERED=1
out="${OUT:-benchmarks/results}"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" | tee "$out/gpu.log"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee -a "$out/gpu.log"
# eager/fused float32, fused bf16/fp16, compiled bf16 (CUDA graphs) at batch 1; images/s at batch 8 and 32.
timeout 540 python3 benchmarks/benchmark.py --checkpoint random --compile --repeats 9 --batches 8,32 \
    --volume-slices 32 --output "$out/gpu" 2>&1 | tee -a "$out/gpu.log"
