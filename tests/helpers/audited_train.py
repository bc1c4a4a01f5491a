"""``python -m helpers.audited_train <overrides>``: ``python -m see_dml.train`` that lists the
files it writes. Every file opened for writing or appending, every rename / replace target and
every removal goes to ``$SEE_DML_AUDIT_DIR/writes_rank<r>_<pid>.txt`` (``r``: the task's
``SLURM_PROCID``), one ``<event> <path>`` line each, written as it happens."""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path


def _install() -> None:
    out_dir = Path(os.environ["SEE_DML_AUDIT_DIR"])
    out_dir.mkdir(parents=True, exist_ok=True)
    rank = os.environ.get("SLURM_PROCID", "0")
    out = open(out_dir / f"writes_rank{rank}_{os.getpid()}.txt", "a", buffering=1)  # noqa: SIM115
    own = str(Path(out.name).resolve())

    def hook(event: str, args: tuple) -> None:
        try:
            if event == "open":
                path, mode, flags = args
                if isinstance(path, int) or path is None:
                    return
                writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                    isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
                if writing and os.fspath(path) != own:
                    out.write(f"open {os.path.abspath(os.fsdecode(path))}\n")
            elif event in ("os.rename", "os.replace"):
                out.write(f"rename {os.path.abspath(os.fsdecode(args[1]))}\n")
            elif event in ("os.remove", "os.unlink"):
                out.write(f"remove {os.path.abspath(os.fsdecode(args[0]))}\n")
        except Exception:  # noqa: BLE001 - an audit hook must never break the run
            pass

    sys.addaudithook(hook)


if __name__ == "__main__":
    _install()
    sys.argv[0] = "see_dml.train"
    runpy.run_module("see_dml.train", run_name="__main__", alter_sys=True)
