"""Registers see-dml's launchers with Hydra, which takes plugins only from the
``hydra_plugins`` namespace: ``hydra/launcher=local_gpus`` (``conf/hydra/launcher/``)."""

from see_dml.runtime.local_gpus import LocalGPUsLauncher as _LocalGPUsLauncher


class LocalGPUsLauncher(_LocalGPUsLauncher):
    """:class:`see_dml.runtime.local_gpus.LocalGPUsLauncher`: one free GPU set per running job."""
