"""What every tool does around its task: the run's infrastructure.

- :mod:`~see_dml.runtime.config`: finding and composing the Hydra configs, the resolvers,
  ``hydra_main`` (every tool's decorator); :mod:`~see_dml.runtime.schema`: the typed schema of
  the groups the project owns (the range and cross-field checks of a training config are
  :mod:`see_dml.training.config_checks`).
- :mod:`~see_dml.runtime.cli` and :mod:`~see_dml.runtime.errors`: the one error path (a user's
  mistake is one ``error:`` line and exit 2); :mod:`~see_dml.runtime.extras`: which optional
  extra a config or tool needs.
- :mod:`~see_dml.training.components`: the DataModule, callbacks and loggers a config names.
- :mod:`~see_dml.runtime.lock`: one run per run directory; :mod:`~see_dml.runtime.provenance`:
  what produced a run; :mod:`~see_dml.runtime.loggers`: loggers that survive a resume.
- :mod:`~see_dml.runtime.hydra_hooks` (Hydra's callbacks, not Lightning's) and
  :mod:`~see_dml.runtime.local_gpus` (a launcher): how sweeps run and report.
"""
