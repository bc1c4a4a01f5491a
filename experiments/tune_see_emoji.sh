#!/usr/bin/env bash
# SEE under equal tuning (docs/results.md): Emoji-Styles at 32-d, the no-synthesis arm and the
# SEE arm each tuned on the validation classes with the same trial budget
# (conf/study/see_emoji32_none.yaml, conf/study/see_emoji32_see.yaml), then each arm's best
# configuration trained with 4 fresh seeds (1-4) and tested once.
#
# Run it (one process, one thread: the machine is shared) from a git worktree of one commit,
# so that every trial loads that code whatever the checkout holds meanwhile:
#   git worktree add /work/study-wt <commit> && cd /work/study-wt
#   PYTHONPATH=$PWD/src PY=/work/main/.venv/bin/python OMP_NUM_THREADS=1 \
#       RECORDS=/work/runs/tune/records setsid nohup \
#       bash experiments/tune_see_emoji.sh >> /work/runs/tune/tune_see_emoji.log 2>&1 < /dev/null &
# Resume: the same command again. The studies are Optuna journals under $OUT/tune/<study>/:
# finished trials stay, a trial killed mid-run is marked failed ("interrupted") and re-run
# resuming its run directory; a finished seed run (metrics.json) is skipped, a started one
# resumes (resume=<run dir>).
# RECORDS=<dir>: after every round and seed run, each study's journal.log, trials.csv,
# history.png and best.yaml are copied to <dir>/<study>/ and the seed runs' records to
# <dir>/seeds (no checkpoints), to commit. On a new machine the studies resume from the
# copied journals: copy <dir>/<study>/journal.log to $OUT/tune/<study>/ and run this again
# (a trial that was running then starts over; the finished ones stay).
#
# The arms are tuned in rounds of $STEP trials (none, then SEE, then none...), so that at any
# moment both have the same number of trials (±STEP) whenever the machine is taken away.
# Progress: $OUT/tune/<study>/trials.csv and history.png; best.yaml holds each arm's best
# trial and its full training overrides. Report (after the seeds): the paired table, each
# arm's best configuration against the other's, seed by seed (--tuned: the keys they chose)
#   python experiments/make_table.py $OUT/seeds --tuned optimizer.lr optimizer.weight_decay \
#       model.head_lr_mult loss.lr_multiplier
# and the records to commit (no checkpoints):
#   python -m see_dml.reporting records $OUT/seeds --out experiments/results/see_emoji_tuned_runs
set -u
source "$(dirname "${BASH_SOURCE[0]}")/run_or_resume.sh"
OUT=${OUT:-/work/runs/tune}
PY=${PY:-.venv/bin/python}
TRIALS=${TRIALS:-24}          # per arm: the study files' n_trials (docs/results.md, the budget)
STEP=${STEP:-4}
SEEDS=${SEEDS:-1 2 3 4}
RECORDS=${RECORDS:-}
# ARMS: the arms this process runs; two processes, ARMS=none and ARMS=see, tune the arms side
# by side on two cores, each arm sequentially as one worker, as one process does
read -r -a ARMS <<< "${ARMS:-none see}"

keep_records() {
  [[ -n $RECORDS ]] || return 0
  for arm in "${ARMS[@]}"; do
    study=$OUT/tune/see_emoji32_$arm
    [[ -d $study ]] || continue
    mkdir -p "$RECORDS/see_emoji32_$arm"
    for f in journal.log trials.csv history.png best.yaml; do
      [[ -f $study/$f ]] && cp "$study/$f" "$RECORDS/see_emoji32_$arm/"
    done
  done
  if [[ -d $OUT/seeds ]] && compgen -G "$OUT/seeds/*/metrics.json" > /dev/null; then
    "$PY" -m see_dml.reporting records "$OUT/seeds" --out "$RECORDS/seeds"
  fi
}

for (( n = STEP; n < TRIALS + STEP; n += STEP )); do
  (( n > TRIALS )) && n=$TRIALS
  for arm in "${ARMS[@]}"; do
    echo "$(date -Is) study see_emoji32_$arm: up to $n trials"
    "$PY" -m see_dml.tune "study=see_emoji32_$arm" "study.n_trials=$n" "paths.output_dir=$OUT"
    status=$?
    keep_records
    if (( status != 0 )); then
      echo "$(date -Is) study see_emoji32_$arm stopped (exit $status): run this script again"
      exit "$status"
    fi
  done
done

for arm in "${ARMS[@]}"; do
  best=$OUT/tune/see_emoji32_$arm/best.yaml
  # the best trial's training overrides, less its seed
  mapfile -t overrides < <("$PY" -c 'import sys, yaml
for o in yaml.safe_load(open(sys.argv[1]))["overrides"]:
    if not o.startswith("seed="):
        print(o)' "$best")
  for seed in $SEEDS; do
    dir=$OUT/seeds/${arm}_s$seed
    args=("${overrides[@]}" "seed=$seed" "paths.output_dir=$OUT/seeds")
    run_or_resume "$arm seed $seed" "$dir" "${args[@]}"
    keep_records
  done
done
