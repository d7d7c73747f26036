#!/usr/bin/env bash
# The prepared GPU check (issue 34), for a lent GPU machine, in about 6 minutes: versions; the benchmark's gpu suite
# eager for every family, then ViT-B/16 training compiled (the utilisation target); a 2-minute fine-tune of
# ViT-S/16 at 224 px in bf16 with torch.compile. Everything lands under $OUT (default gpu_out/), each part as it ends.
# Packages the machine lacks (or has too old) travel as wheels in .whl/, named in the call's carry.
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TQDM_MININTERVAL=10
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nproc
  python3 -c "import torch, transformers, timm, datasets; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'timm', timm.__version__, 'datasets', datasets.__version__)"
} 2>&1 | tee "$OUT/machine.txt"
BENCH=(python3 scripts/benchmark.py --suite gpu --device cuda --amp bf16 --batch_size 256)
timeout "${EAGER_S:-90}" "${BENCH[@]}" --no_compile --repeats 5 --json "$OUT/gpu_eager.json" 2>&1 | tee "$OUT/benchmark.log"
timeout "${COMPILE_S:-130}" "${BENCH[@]}" --families vit_b16 --modes train --implementations ours timm --repeats 5 \
  --json "$OUT/gpu_compile.json" 2>&1 | tee -a "$OUT/benchmark.log"
timeout "${FINETUNE_S:-110}" python3 scripts/finetune.py --output_dir /tmp/gpu-finetune --preset vit-small-patch16-224 \
  --image_size 224 --bf16 --torch_compile --max_steps 300 --per_device_train_batch_size 256 --max_eval_samples 256 \
  --logging_steps 10 2>&1 | tee "$OUT/finetune.log"
cp /tmp/gpu-finetune/all_results.json "$OUT/finetune_results.json" 2>/dev/null || true
# The inference jobs on the GPU (issue 37): evaluate and predict the fine-tuned checkpoint there, batches by workers.
timeout "${INFERENCE_S:-60}" python3 scripts/evaluate.py --model_name_or_path /tmp/gpu-finetune \
  --output_dir /tmp/gpu-evaluate --max_eval_samples 256 2>&1 | tee "$OUT/inference.log"
cp /tmp/gpu-evaluate/metrics.json "$OUT/evaluate_metrics.json" 2>/dev/null || true
