"""The Emoji-Styles fine-tuning recipe (conf/recipe/emoji_styles_efficientnet_lite0.yaml) is
what ``dataset=emoji_styles model=efficientnet_lite0`` composes to, and nothing else is."""

from __future__ import annotations

from omegaconf import OmegaConf

from see_dml.config import CONFIG_DIR

RECIPE = OmegaConf.load(CONFIG_DIR / "recipe" / "emoji_styles_efficientnet_lite0.yaml")


def recipe_values(cfg) -> dict:
    """The composed values at the keys the recipe sets."""
    flat = {}

    def walk(node, prefix=""):
        for key, value in node.items():
            if OmegaConf.is_dict(value):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = OmegaConf.select(cfg, f"{prefix}{key}")

    walk(RECIPE)
    return flat


def test_the_issue_command_composes_the_recipe(make_cfg):
    expected = recipe_values(RECIPE)
    assert expected["model.backbone.trainable_stages"] is not None  # a partial fine-tune
    cfg = make_cfg("dataset=emoji_styles", "model=efficientnet_lite0", fast=False)
    assert recipe_values(cfg) == expected


def test_the_recipe_is_only_for_its_dataset_and_model(make_cfg):
    for overrides in (["dataset=emoji_styles"], ["model=efficientnet_lite0"]):
        cfg = make_cfg(*overrides, fast=False)
        assert cfg.model.backbone.trainable_stages is None
        assert recipe_values(cfg) != recipe_values(RECIPE)


def test_command_line_and_experiments_override_the_recipe(make_cfg):
    cfg = make_cfg("dataset=emoji_styles", "model=efficientnet_lite0",
                   "model.backbone.trainable_stages=5", "optimizer.lr=0.5", fast=False)
    assert cfg.model.backbone.trainable_stages == 5 and cfg.optimizer.lr == 0.5
    cfg = make_cfg("experiment=see_emoji", fast=False)  # an experiment that picks both
    assert recipe_values(cfg) == recipe_values(RECIPE)
