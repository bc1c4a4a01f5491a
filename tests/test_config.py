"""Config-level behaviour that needs no training: resolvers in the composed config."""

from __future__ import annotations

import pytest
from lightning.pytorch.strategies import StrategyRegistry

from conftest import compose_config
from see_dml.runtime.config import ddp_strategy


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


def _options(group: str) -> list[str]:
    from see_dml.runtime.config import CONFIG_DIR

    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


#: group -> the composed nodes that each of its options must build from a ``_target_``
COMPONENT_NODES = {
    "model": ["model.backbone", "model.head"],
    "loss": ["loss", "loss.loss"],
    "dataset": ["dataset"],
    "optimizer": ["optimizer"],
    "scheduler": ["scheduler"],
    "trainer": ["trainer"],
}


@pytest.mark.parametrize(("group", "option"), [
    (group, option) for group in COMPONENT_NODES for option in _options(group)])
def test_every_component_is_built_from_its_target(group, option):
    """Adding a component is a YAML file: every option of every component group composes to
    nodes that name the class they build."""
    from hydra.utils import get_class, get_method
    from omegaconf import OmegaConf

    cfg = compose_config([f"{group}={option}"])
    for node in COMPONENT_NODES[group]:
        target = OmegaConf.select(cfg, f"{node}._target_")
        assert target, f"{group}={option}: {node} has no _target_"
        try:
            get_class(target)
        except ValueError:
            get_method(target)  # a factory function is fine too


@pytest.mark.parametrize("option", _options("synthesis"))
def test_every_synthesiser_option_selects_a_target(option):
    from hydra.utils import get_class

    from see_dml.callbacks.synthesis import SynthesisCallback, synthesis_node

    node = synthesis_node(compose_config([f"synthesis={option}"]))
    if option == "none":
        assert node is None
    else:
        assert issubclass(get_class(node._target_), SynthesisCallback)


@pytest.mark.parametrize("tool,embeds", [("evaluate", True), ("retrieve", True),
                                         ("index", True), ("export", False)])
def test_the_tools_share_one_inference_config(tool, embeds):
    """The checkpoint keys (and, for the tools that embed, the embedding keys) come from
    conf/inference/, written once: a tool's file repeats none of them, each is in its
    composed config with the shared default, and none counts as an ignored key."""
    from omegaconf import OmegaConf

    from see_dml.runtime.config import CONFIG_DIR, ignored_keys

    shared = OmegaConf.load(CONFIG_DIR / "inference" / "checkpoint.yaml")
    if embeds:
        shared = OmegaConf.merge(shared, OmegaConf.load(CONFIG_DIR / "inference" /
                                                        "embedding.yaml"))
    own = OmegaConf.load(CONFIG_DIR / f"{tool}.yaml")
    assert not set(shared) & {k for k in own if k != "defaults"}
    cfg = compose_config(["ckpt_path=x.ckpt"], config_name=tool)
    for key in shared:
        if key != "ckpt_path":
            assert OmegaConf.to_container(cfg)[key] == OmegaConf.to_container(shared)[key], key
    assert ignored_keys(cfg, tool) == []
    assert ("device" in cfg) is embeds  # export traces and checks on the CPU: no device key
