"""Checkpoint files: :mod:`~see_dml.checkpoints.read` (the checks and the safe loader every
tool reads a checkpoint with) and :mod:`~see_dml.checkpoints.write` (files written whole or
not at all, and finding the last whole one after a crash)."""
