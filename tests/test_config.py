"""Config-level behaviour that needs no training: resolvers in the composed config."""

from __future__ import annotations

import pytest
from lightning.pytorch.strategies import StrategyRegistry

from conftest import compose_config
from see_dml.config import ddp_strategy


@pytest.mark.parametrize(("overrides", "strategy"), [
    (["trainer=ddp"], "ddp"),  # small CNN: every parameter has a gradient in every step
    (["trainer=ddp", "model.warmup_epochs=1"], "ddp_find_unused_parameters_true"),
    (["trainer=ddp", "model=resnet50"], "ddp_find_unused_parameters_true"),  # frozen BN
    (["trainer=ddp_cpu"], "ddp_spawn"),
    (["trainer=ddp_cpu", "model.freeze_bn=true"], "ddp_spawn_find_unused_parameters_true"),
])
def test_ddp_strategy_follows_the_model(overrides, strategy):
    cfg = compose_config(overrides)
    assert cfg.trainer.strategy == strategy
    assert strategy in StrategyRegistry  # a name Lightning knows


def test_ddp_strategy_rejects_an_unknown_base():
    with pytest.raises(ValueError, match="ddp_spawn"):
        ddp_strategy(0, False, "fsdp")
