#!/usr/bin/env bash
# Every GPU row of the speed issue, in one call on a single-GPU machine (< 8 min on an H100):
#   0. training throughput (images/s of one GPU) of the four paper backbones as their recipes
#      train them (ResNet-50 / 512, DeiT-S, DINO ViT-S/16, ViT-S/16 / 128; bench_throughput.py):
#      the rates experiments/budget.py turns into GPU hours ($OUT/budget_<card>.md at the end);
#   1. Lightning DMLModule vs a bare PyTorch loop: ResNet-50 bf16 at batch 180 (224 px), and
#      the embedded small CNN (fp32, batch 64);
#   2. SEE on / off: ResNet-50 bf16, d = 128 and 512, n = 8, fraction 0.4, batch 180;
#   3. SEE on / off: the embedded small CNN (fp32), d = 128 and 512;
#   4. model.compile=true vs eager (bare loop): ResNet-50 bf16 and the small CNN;
#   5. the real loader's share of the GPU-only rate: ResNet-50 bf16, batch 180, 224 px crops
#      of 500x375 JPEGs, num_workers = the machine's cores (bench_loader_fraction.py; goal
#      >= 95 %);
#   6. the rehearsal's SOP train stage (train + test evaluation, export, plots) at 224 px with
#      ResNet-50 bf16 (bench_scale.py --stages generate train), on 10 % of SOP's classes: the
#      full 120k images would take minutes to write and an epoch plus three test evaluations
#      of 60k images, more than the few minutes this call has left after steps 0-5.
# Each writes benchmarks/results/gpu/<measure>_<card>.json (<card>: the GPU's name, e.g.
# nvidia_h100_80gb_hbm3), copied to $OUT too (the device tool brings back only $OUT).
#
#   OUT=/tmp/gpu_out bash benchmarks/gpu_checks.sh             # on the GPU machine
#   CHECKS=all OUT=/tmp/gpu_out bash benchmarks/gpu_checks.sh  # + the training checks below
#   DEVICE=cpu OUT=/tmp/gpu_dry bash benchmarks/gpu_checks.sh  # dry run: same commands, tiny
#                                                              # sizes, on the CPU
#   ONLY="loader_fraction scale_sop_train" OUT=/tmp/gpu_out bash benchmarks/gpu_checks.sh
#                                                              # only the steps named
#
# CHECKS=all adds the earlier functional checks (results/gpu/gpu_checks_h100_*): see_dml.train
# with bf16-mixed (SEE on and off) and 16-mixed (GradScaler, Multi-Similarity), trainer=ddp
# over NCCL, the batched SEE synthesiser vs the loop, a timm ResNet-50 through the real
# config. Most important first: past DEADLINE seconds the remaining steps are skipped.
# Needs the package importable (PYTHONPATH=src or an install). Each step has its own time
# limit so one hang does not eat the others; the summary at the end lists every step's status.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 WANDB_SILENT=true
export SEE_DML_OUTPUT_DIR=${SEE_DML_OUTPUT_DIR:-/tmp/see_dml_runs}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
CHECKS=${CHECKS:-speed}
RESULTS=${RESULTS:-benchmarks/results/gpu}
mkdir -p "$RESULTS"
declare -a SUMMARY=()

DEADLINE=${DEADLINE:-540}  # seconds: steps that would start later are skipped, and said so

step() {  # step NAME LIMIT_S CMD...
    local name=$1 limit=$2; shift 2
    limit=$((limit * SCALE))
    if [[ -n ${ONLY:-} && " $ONLY " != *" $name "* ]]; then return; fi
    if (( SECONDS + 20 > DEADLINE )); then SUMMARY+=("$name: skipped (deadline)"); return; fi
    (( SECONDS + limit > DEADLINE )) && limit=$((DEADLINE - SECONDS))
    echo; echo "=== $name"; local t0=$SECONDS
    timeout "$limit" "$@"; local rc=$?
    SUMMARY+=("$name: rc=$rc ($((SECONDS - t0)) s)")
}

if [[ $DEVICE == cuda ]]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr 'A-Z ' 'a-z_' \
           | tr -cd 'a-z0-9_')
    # the rows as the issue states them
    R50=(--image-size 224 --batch 180); CNN=(--batch 64); REP=20; FITS=2; STEPS=30
    SEE_R50=(--batch 180); BF16=(--precision bf16); SCALE=${SCALE:-1}; BIG=resnet50
    # the recipes' own batch (120 / 90), image size (224) and precision (32-true / 16-mixed)
    TPUT=(--steps 30 --warmup 5 --threads 0)
    TPUT_NETS=(resnet50 deit_small vit_small_dino vit_small)
    LOADER=(--batch 180 --image-size 224 --images 800 --steps 50 --warmup 10 --rounds 2)
    SCALE_SOP=(--fraction 0.1 --size 224 --batch 180 --workers "$(nproc)" \
               --precision bf16-mixed --accelerator gpu)
else  # dry run: every command and its JSON, at sizes a CPU finishes in seconds
    # bf16 autocast on a CPU is slow and inductor compiles a ResNet-50 for minutes there:
    # the limits are scaled, and the compile row takes a ResNet-18
    CARD=cpu_dry_run
    R50=(--image-size 32 --batch 16); CNN=(--batch 16); REP=1; FITS=1; STEPS=6
    SEE_R50=(--batch 40 --image-size 32); BF16=(--precision bf16); SCALE=${SCALE:-4}
    BIG=resnet18
    # one torch thread: on a shared 2-core box two threads ran a step many times slower
    TPUT=(--image-size 32 --batch 8 --steps 3 --warmup 1 --threads 1)
    TPUT_NETS=(resnet50 vit_small_dino)
    LOADER=(--batch 16 --image-size 32 --images 64 --steps 6 --warmup 2 --rounds 1 \
            --workers 2 --threads 1)
    SCALE_SOP=(--fraction 0.01 --size 32 --batch 16 --workers 1 --precision bf16-mixed \
               --accelerator cpu)
fi
echo "card: $CARD"
"$PY" -c "import torch, lightning, timm; print('torch', torch.__version__, 'cuda',
torch.version.cuda, torch.cuda.is_available(), '| lightning', lightning.__version__,
'| timm', timm.__version__)"

# 0. training throughput of the paper backbones (first: the GPU hours of every table need it)
step throughput 150 "$PY" benchmarks/bench_throughput.py --device "$DEVICE" \
    --backbones "${TPUT_NETS[@]}" "${TPUT[@]}" \
    --out "$RESULTS/throughput_$CARD.json"

# 1. Lightning vs bare (steps alternate one by one inside one fit; device synced per step)
step lightning_vs_bare_resnet50_bf16 100 "$PY" benchmarks/bench_framework_overhead.py \
    --device "$DEVICE" "${BF16[@]}" --models resnet50 "${R50[@]}" --rounds "$FITS" \
    --steps "$STEPS" --threads 0 --out "$RESULTS/framework_overhead_resnet50_bf16_$CARD.json"
step lightning_vs_bare_small_cnn 60 "$PY" benchmarks/bench_framework_overhead.py \
    --device "$DEVICE" --models small_cnn "${CNN[@]}" --rounds "$FITS" --steps "$STEPS" \
    --threads 0 --out "$RESULTS/framework_overhead_small_cnn_$CARD.json"
# 2-3. SEE on / off
step see_overhead_resnet50_bf16 60 "$PY" benchmarks/bench_see_overhead.py --device "$DEVICE" \
    "${BF16[@]}" --backbones resnet50 --dims 128 512 "${SEE_R50[@]}" --repeats "$REP" \
    --threads 0 --out "$RESULTS/see_overhead_resnet50_bf16_$CARD.json"
step see_overhead_small_cnn 40 "$PY" benchmarks/bench_see_overhead.py --device "$DEVICE" \
    --backbones small_cnn --dims 128 512 --repeats "$REP" --threads 0 \
    --out "$RESULTS/see_overhead_small_cnn_$CARD.json"
# 4. torch.compile vs eager (the first steps compile: minutes on a cold cache)
step compile_small_cnn 90 "$PY" benchmarks/bench_framework_overhead.py --device "$DEVICE" \
    --models small_cnn "${CNN[@]}" --rounds "$FITS" --steps "$STEPS" --threads 0 \
    --compile --skip-lightning --out "$RESULTS/compile_small_cnn_$CARD.json"
step compile_resnet50_bf16 150 "$PY" benchmarks/bench_framework_overhead.py \
    --device "$DEVICE" "${BF16[@]}" --models "$BIG" "${R50[@]}" --rounds "$FITS" \
    --steps "$STEPS" --threads 0 --compile --skip-lightning \
    --out "$RESULTS/compile_resnet50_bf16_$CARD.json"
# 5. the real loader (num_workers = the cores) against batches resident on the GPU
step loader_fraction 120 "$PY" benchmarks/bench_loader_fraction.py --device "$DEVICE" \
    "${BF16[@]}" "${LOADER[@]}" --out "$RESULTS/loader_fraction_resnet50_bf16_$CARD.json"
# 6. the rehearsal's SOP stage at 224 px, ResNet-50 bf16 (its logs: $OUT/scale_sop_logs)
step scale_sop_train 200 "$PY" benchmarks/bench_scale.py --data-dir /tmp/see_dml_scale \
    --datasets sop --model resnet50 "${SCALE_SOP[@]}" --stages generate train \
    --timeout $((150 * SCALE)) --keep --out "$RESULTS/scale_sop_resnet50_bf16_$CARD.json"
mkdir -p "$OUT/scale_sop_logs"
cp /tmp/see_dml_scale/work_sop/*.log "$OUT/scale_sop_logs/" 2>/dev/null
rm -rf /tmp/see_dml_scale

if [[ $CHECKS == all ]]; then
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
    DEADLINE=$((DEADLINE + 500))
    train bf16_see_on 100 trainer=gpu trainer.precision=bf16-mixed loss=proxy_anchor \
        see.enabled=true
    train ddp_nccl 80 trainer=ddp trainer.devices=1 trainer.precision=bf16-mixed \
        loss=proxy_anchor see.enabled=true trainer.max_epochs=2
    train fp16_see_on_ms 80 trainer=gpu trainer.precision=16-mixed loss=multi_similarity \
        see.enabled=true trainer.max_epochs=2
    step synthesis 45 "$PY" benchmarks/bench_synthesis.py --device cuda --repeats 50 \
        --out "$RESULTS/synthesis_$CARD.json"
    train timm_resnet50 100 trainer=gpu trainer.precision=bf16-mixed model=resnet50 \
        model.backbone.pretrained=false model.embed_dim=128 data.transforms.image_size=64 \
        see.enabled=true trainer.max_epochs=1
    train bf16_see_off 100 trainer=gpu trainer.precision=bf16-mixed loss=proxy_anchor \
        see.enabled=false
    for f in "$LOGS"/*.log; do echo "##### $f"; cat "$f"; done >"$OUT/train_logs.txt"
    cat "$OUT/metrics.jsonl" 2>/dev/null
fi

# what the paper tables cost in GPU hours at the rates of step 0 (GPU only: a CPU's rates are
# not a GPU's)
if [[ $DEVICE == cuda && -f $RESULTS/throughput_$CARD.json ]]; then
    echo; echo "=== budget"
    timeout 120 "$PY" experiments/budget.py --rates-file "$RESULTS/throughput_$CARD.json" \
        | tee "$OUT/budget_$CARD.md"
    SUMMARY+=("budget: rc=${PIPESTATUS[0]} ($OUT/budget_$CARD.md)")
fi

cp "$RESULTS"/*_"$CARD".json "$OUT"/ 2>/dev/null
echo; echo "=== summary ($CARD)"; printf '%s\n' "${SUMMARY[@]}" | tee "$OUT/summary_$CARD.txt"
