#!/usr/bin/env bash
# The Emoji-Styles long-schedule grid (conf/experiment/see_emoji_long.yaml) as one process per
# run, so that every run loads the code as it is when it starts, and rerunnable: a finished
# run (metrics.json) is skipped, a started one resumes exactly (resume=<run dir>), the others
# start. Run it as two workers side by side on the 2 cores:
#   OMP_NUM_THREADS=1 nohup bash experiments/see_emoji_long.sh 0 2 > grid0.log 2>&1 &
#   OMP_NUM_THREADS=1 nohup bash experiments/see_emoji_long.sh 1 2 > grid1.log 2>&1 &
# DIMS, SEEDS and ARMS (synthesis options) narrow or widen the grid, e.g. the baselines:
#   DIMS=32 SEEDS="0 1" ARMS="embedding_expansion proxy_synthesis" bash experiments/see_emoji_long.sh 0 2
# Report: python -m see_dml.reporting geometry $GRID; python experiments/make_table.py $GRID
# Keep (commit) the finished runs' records, without checkpoints: RECORDS=<dir> copies them
# after every run, or at any time
#   python -m see_dml.reporting records $GRID --out experiments/results/see_emoji_long_runs
# To keep editing the checkout while the grid runs, run it from a worktree of one commit
# (every run of the grid then loads that code, whatever the checkout holds meanwhile):
#   git worktree add /work/grid-code <commit> && cd /work/grid-code
#   PYTHONPATH=$PWD/src PY=/work/main/.venv/bin/python OMP_NUM_THREADS=1 nohup \
#       bash experiments/see_emoji_long.sh 0 2 >> $GRID/grid0.log 2>&1 &
set -u
source "$(dirname "${BASH_SOURCE[0]}")/run_or_resume.sh"
worker=${1:-0}; workers=${2:-1}
GRID=${GRID:-/work/runs/grid}
PY=${PY:-.venv/bin/python}
# RECORDS: where each finished run's records (no checkpoints) are copied, to commit them
RECORDS=${RECORDS:-}
jobs=()
for dim in ${DIMS:-128 32}; do for seed in ${SEEDS:-0 1 2 3}; do for arm in ${ARMS:-none see}; do
  jobs+=("${dim}_${seed}_${arm}")
done; done; done
i=0
for job in "${jobs[@]}"; do
  if (( i++ % workers != worker )); then continue; fi
  IFS=_ read -r dim seed arm <<< "$job"
  dir=$GRID/runs/d${dim}_s${seed}_${arm}
  args=(experiment=see_emoji_long "model.embed_dim=$dim" "seed=$seed" "synthesis=$arm"
        "paths.output_dir=$GRID")
  run_or_resume "$job" "$dir" "${args[@]}"
  if [[ -n $RECORDS && -f $dir/metrics.json ]]; then
    "$PY" -m see_dml.reporting records "$GRID" --out "$RECORDS"
  fi
done
