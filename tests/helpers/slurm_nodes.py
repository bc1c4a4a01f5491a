"""Two (or more) "nodes" of one task each, started on localhost as ``srun`` starts the tasks
of a multi-node SLURM job: the ``SLURM_*`` variables Lightning's ``SLURMEnvironment`` reads,
``MASTER_ADDR=127.0.0.1`` and a free local port (gloo on the CPU). Nothing leaves localhost.

Each task runs ``python -m helpers.audited_train <overrides>``: ``see_dml.train`` under an
audit hook that lists every file the task opened for writing, replaced or removed under
``SEE_DML_AUDIT_DIR`` (``<audit dir>/writes_rank<r>_<pid>.txt``), so a test can tell which
rank wrote what. ``scontrol`` is a stub on ``PATH`` (:func:`scontrol_stub`) that records its
calls and, as SLURM does on ``scontrol requeue``, sends SIGTERM to every task of the job.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def slurm_env(rank: int, nodes: int, job_id: str, port: int, restarts: int = 0) -> dict[str, str]:
    """What ``srun`` sets for task ``rank`` of a job of ``nodes`` nodes, one task each."""
    return {
        "SLURM_JOB_ID": job_id, "SLURM_JOBID": job_id, "SLURM_JOB_NAME": "see_dml",
        "SLURM_NTASKS": str(nodes), "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": str(nodes),
        "SLURM_JOB_NUM_NODES": str(nodes), "SLURM_PROCID": str(rank), "SLURM_LOCALID": "0",
        "SLURM_NODEID": str(rank), "SLURM_NODELIST": "localhost",
        "SLURM_RESTART_COUNT": str(restarts),
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "GLOO_SOCKET_IFNAME": "lo",
    }


def scontrol_stub(bin_dir: Path, log: Path, pids: Path) -> Path:
    """An ``scontrol`` on ``bin_dir`` that appends its arguments to ``log`` and, for
    ``requeue``, sends SIGTERM to the pids listed in ``pids`` (the job's tasks), as SLURM's
    requeue ends a running job before it queues it again."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "scontrol"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> "{log}"\n'
        f'if [ "$1" = requeue ]; then for p in $(cat "{pids}"); do kill -TERM "$p"; done; fi\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def start_nodes(overrides: list[str], job_id: str, work: Path, nodes: int = 2,
                restarts: int = 0, env: dict[str, str] | None = None) -> list[subprocess.Popen]:
    """Start the job's ``nodes`` tasks of ``see_dml.train`` (``overrides``: its command line);
    each task's output goes to ``<work>/node<r>.<restarts>.log``, its pid to ``<work>/pids``;
    ``<work>/bin`` is first on ``PATH`` (where :func:`scontrol_stub` puts ``scontrol``)."""
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    procs = []
    for rank in range(nodes):
        task_env = {**os.environ, **(env or {}), **slurm_env(rank, nodes, job_id, port, restarts),
                    "PATH": f"{work / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
                    "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
                    "SEE_DML_AUDIT_DIR": str(work / "audit")}
        log = (work / f"node{rank}.{restarts}.log").open("w")
        procs.append(subprocess.Popen([sys.executable, "-m", "helpers.audited_train", *overrides],
                                      stdout=log, stderr=subprocess.STDOUT, env=task_env))
        log.close()
    (work / "pids").write_text(" ".join(str(p.pid) for p in procs) + "\n")
    return procs


def wait_all(procs: list[subprocess.Popen], timeout: float) -> list[int]:
    """The tasks' exit statuses; a task still running after ``timeout`` seconds in all is
    killed (the test then fails on its status, -9)."""
    import time

    end = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(1.0, end - time.monotonic())))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            codes.append(p.wait())
    return codes
