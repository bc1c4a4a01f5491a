"""A stand-in training for launcher tests: the real composed ``conf/train.yaml`` (its Hydra
callbacks and launchers), a task that only records what the job was given.

``python -m helpers.gpu_probe_app -m seed=0,1,2 hydra/launcher=local_gpus +probe.dir=<dir>``
(``PYTHONPATH`` holds ``tests``). Each job writes ``<probe.dir>/<job num>.json``: its
``CUDA_VISIBLE_DEVICES``, pid and start / end times. Jobs numbered below ``probe.together``
wait until that many jobs have started (up to ``probe.wait_s``): they can only all finish
when the launcher runs them at once. ``probe.fail_seed``: that job fails as a training with a
user error does (recorded, the sweep goes on); ``probe.kill_seed``: that job's process is
killed (SIGKILL) and leaves no result.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from see_dml.runtime.config import CONFIG_DIR


@hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from see_dml.runtime.hydra_hooks import record_failed_job

    probe = cfg.probe
    num = int(HydraConfig.get().job.num)
    out = Path(probe.dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {"num": num, "seed": int(cfg.seed), "pid": os.getpid(), "start": time.time(),
              "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    (out / f"{num}.start").write_text(json.dumps(record))
    if num < int(probe.get("together", 0)):
        deadline = time.monotonic() + float(probe.get("wait_s", 60))
        while (len(list(out.glob("*.start"))) < int(probe.together)
               and time.monotonic() < deadline):
            time.sleep(0.05)
        record["waited_for_all"] = len(list(out.glob("*.start"))) >= int(probe.together)
    else:
        time.sleep(float(probe.get("sleep_s", 0.5)))
    if int(cfg.seed) == probe.get("kill_seed"):
        os.kill(os.getpid(), signal.SIGKILL)
    record["end"] = time.time()
    (out / f"{num}.json").write_text(json.dumps(record))
    if int(cfg.seed) == probe.get("fail_seed"):
        record_failed_job(HydraConfig.get().runtime.output_dir, f"seed {cfg.seed} fails here",
                          user_error=True)
        return None
    return float(cfg.seed)


if __name__ == "__main__":
    main()
