#!/usr/bin/env bash
# The CUDA paths, checked in one go on a single-GPU machine (the CPU test suite cannot):
#   - `python -m see_dml.train` on the GPU with AMP: bf16-mixed (SEE on and off) and
#     16-mixed (GradScaler) with SEE on and Multi-Similarity;
#   - SEE's training-step overhead on the GPU (ResNet-50 at 224 px under bf16 autocast, and
#     the small CNN in fp32), global batch 180, n = 8, fraction 0.4;
#   - the DDP strategy over NCCL (one rank per GPU; on a one-GPU machine, world size 1);
#   - the batched SEE synthesiser vs the per-sample loop, on the GPU;
#   - a timm backbone (ResNet-50, random init) trained through the real config on the GPU.
# Most important first: past DEADLINE seconds the remaining steps are skipped.
#
#   OUT=/tmp/gpu_out bash benchmarks/gpu_checks.sh
#
# Needs the package importable (PYTHONPATH=src or an install). Each step has its own time
# limit so one hang does not eat the others; the summary at the end lists every step's status.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export SEE_DML_OUTPUT_DIR=${SEE_DML_OUTPUT_DIR:-/tmp/see_dml_runs}
PY=${PY:-python3}
declare -a SUMMARY=()

DEADLINE=${DEADLINE:-480}  # seconds: steps that would start later are skipped, and said so

step() {  # step NAME LIMIT_S CMD...
    local name=$1 limit=$2; shift 2
    if (( SECONDS + 20 > DEADLINE )); then SUMMARY+=("$name: skipped (deadline)"); return; fi
    (( SECONDS + limit > DEADLINE )) && limit=$((DEADLINE - SECONDS))
    echo; echo "=== $name"; local t0=$SECONDS
    timeout "$limit" "$@"; local rc=$?
    SUMMARY+=("$name: rc=$rc ($((SECONDS - t0)) s)")
}

LOGS=${LOGS:-/tmp/see_dml_gpu_logs}
mkdir -p "$LOGS"
train() {  # train NAME LIMIT_S OVERRIDES...: the run's log goes to $LOGS/NAME.log
    local name=$1 limit=$2; shift 2
    step "$name" "$limit" "$PY" -m see_dml.train trainer.enable_progress_bar=false \
        data.num_workers=4 "$@" >"$LOGS/$name.log" 2>&1
    grep -v "^\s*$" "$LOGS/$name.log" | tail -12
    local run_dir; run_dir=$(sed -n 's/^Run directory: //p' "$LOGS/$name.log" | tail -1)
    [[ -f "$run_dir/metrics.json" ]] && "$PY" -c "import json, sys
d = json.load(open(sys.argv[1] + '/metrics.json'))
print(json.dumps({'run': sys.argv[2], **{k: v for k, v in d.items()
                  if k.startswith(('test/', 'epochs'))}}))" "$run_dir" "$name" >>"$OUT/metrics.jsonl"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$PY" -c "import torch, lightning, timm; print('torch', torch.__version__, 'cuda',
torch.version.cuda, torch.cuda.is_available(), '| lightning', lightning.__version__,
'| timm', timm.__version__)"

train bf16_see_on 100 trainer=gpu trainer.precision=bf16-mixed loss=proxy_anchor see.enabled=true
step overhead_resnet50_bf16 120 "$PY" benchmarks/bench_see_overhead.py --device cuda \
    --precision bf16 --backbones resnet50 --dims 128 512 --repeats 20 \
    --out "$OUT/see_overhead_gpu_resnet50.json"
train ddp_nccl 80 trainer=ddp trainer.devices=1 trainer.precision=bf16-mixed \
    loss=proxy_anchor see.enabled=true trainer.max_epochs=2
train fp16_see_on_ms 80 trainer=gpu trainer.precision=16-mixed loss=multi_similarity \
    see.enabled=true trainer.max_epochs=2
step synthesis 45 "$PY" benchmarks/bench_synthesis.py --device cuda --repeats 50 \
    --out "$OUT/synthesis_gpu.json"
train timm_resnet50 100 trainer=gpu trainer.precision=bf16-mixed model=resnet50 \
    model.backbone.pretrained=false model.embed_dim=128 data.transforms.image_size=64 \
    see.enabled=true trainer.max_epochs=1
train bf16_see_off 100 trainer=gpu trainer.precision=bf16-mixed loss=proxy_anchor see.enabled=false
step overhead_small_cnn_fp32 45 "$PY" benchmarks/bench_see_overhead.py --device cuda \
    --backbones small_cnn --dims 128 512 --repeats 20 \
    --out "$OUT/see_overhead_gpu_small_cnn.json"

for f in "$LOGS"/*.log; do echo "##### $f"; cat "$f"; done >"$OUT/train_logs.txt"
echo; echo "=== summary"; printf '%s\n' "${SUMMARY[@]}" | tee "$OUT/summary.txt"
cat "$OUT/metrics.jsonl" 2>/dev/null
