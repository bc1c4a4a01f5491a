# Sourced by the experiment scripts (see_emoji_long.sh, tune_see_emoji.sh): one training run
# as one process, rerunnable.
#   run_or_resume LABEL RUN_DIR OVERRIDE...
# A finished run (metrics.json) is skipped; a started one (config.yaml) resumes exactly
# (resume=RUN_DIR); any other starts in RUN_DIR. Needs $PY (the Python to run). Returns
# the training's exit status (0 for a skipped run).
run_or_resume() {
  local label=$1 dir=$2 status
  shift 2
  if [[ -f $dir/metrics.json ]]; then
    echo "$(date -Is) done already: $label ($dir)"
    return 0
  elif [[ -f $dir/config.yaml ]]; then
    echo "$(date -Is) resuming: $label ($dir)"
    "$PY" -m see_dml.train "$@" "resume=$dir"
  else
    echo "$(date -Is) starting: $label ($dir)"
    "$PY" -m see_dml.train "$@" "hydra.run.dir=$dir"
  fi
  status=$?
  echo "$(date -Is) exit $status: $label"
  return "$status"
}
