"""A Hydra callback that holds a run at the start of its job, after Hydra wrote its
``.hydra`` files and before the task runs: the moment at which a second run into the same
directory used to pass the check and write its own files over them."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback


class PauseAtJobStart(Callback):
    """At ``on_job_start``: write ``ready``, wait (at most ``timeout`` s) until ``go``
    exists, then end the process (status 0) without running the task."""

    def __init__(self, ready: str, go: str, timeout: float = 120.0) -> None:
        self.ready, self.go, self.timeout = Path(ready), Path(go), timeout

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        self.ready.write_text(str(os.getpid()))
        end = time.monotonic() + self.timeout
        while not self.go.exists() and time.monotonic() < end:
            time.sleep(0.05)
        os._exit(0)
