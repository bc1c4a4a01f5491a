"""A training run's parts besides the model (:mod:`see_dml.module`): the checks its config
passes before anything is built (:mod:`~see_dml.training.config_checks`), and the
DataModule, the callbacks (synthesis included) and the loggers its config names
(:mod:`~see_dml.training.components`)."""
