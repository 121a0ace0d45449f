#!/usr/bin/env bash
# The GPU checks and benchmarks in one script, for one session on a CUDA machine (a few minutes):
#   1. the CUDA tests (AMP training, DDP with NCCL under torchrun, GPU predict paths);
#   2. `unetkit bench` on the GPU: our VGG16-UNet and ResNet34-UNet against smp's, fp32/bf16/fp16 x NCHW/channels_last;
#   3. time to accuracy of the demo on the GPU: fp32, bf16 autocast, and bf16 under torchrun (one-process DDP, NCCL);
#   4. `unetkit bench --suite predict` on the bf16 demo model: the inference paths side by side (compile: step 5);
#   5. torch.compile against eager (bf16, channels_last), last because it is the slowest to set up.
# Usage: bash benchmarks/gpu_suite.sh OUT_DIR   (needs segmentation_models_pytorch for the smp rows)
# Every step has its own time limit, so one slow step cannot take the others' time. Results: OUT_DIR/*.json and
# OUT_DIR/log.txt; docs/performance.md quotes them with the card they ran on.
set -u
OUT=${1:?usage: gpu_suite.sh OUT_DIR}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
exec > >(tee -a "$OUT/log.txt") 2>&1
step() { echo; echo "== $1 ($(date +%T))"; }

step machine
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
"$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', \
torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), torch.cuda.get_device_name())"
nproc

step "CUDA tests"
timeout 180 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_infer.py -k "cuda" 2>&1 | tail -25

BENCH=(--device cuda --compare smp --channels-last both --phases train,inferN --batch 32 --infer-batch 64
       --iters 10 --warmup 3 --quiet --markdown)
step "bench vgg16 vs smp"
timeout 120 "$PY" -m unetkit bench --encoder vgg16 --amp off,bf16,fp16 "${BENCH[@]}" --json "$OUT/bench_vgg16.json"

step "time to accuracy, demo"
timeout 240 "$PY" benchmarks/bench_time_to_accuracy.py --device cuda --modes fp32 bf16 bf16-ddp --infer-rounds 0 \
    --out "$OUT/tta_gpu.json" --keep /tmp/unetkit-tta 2>&1 | grep -v "^W[0-9]"

step "predict paths"
timeout 90 "$PY" -m unetkit bench --suite predict --run /tmp/unetkit-tta/bf16_seed0 --device cuda --iters 5 --quiet \
    --paths fp32,bf16,fp16 \
    --markdown --json "$OUT/predict_gpu.json"

step "bench resnet34 vs smp"
timeout 90 "$PY" -m unetkit bench --encoder resnet34 --amp off,bf16 "${BENCH[@]}" --json "$OUT/bench_resnet34.json"

step "compile vs eager (bf16, channels_last)"
timeout 150 "$PY" -m unetkit bench --encoder vgg16 --compare smp --amp bf16 --channels-last on --compile both \
    --phases train,inferN --batch 32 --infer-batch 64 --iters 10 --warmup 3 --quiet --markdown --device cuda \
    --json "$OUT/bench_compile.json"
step done
