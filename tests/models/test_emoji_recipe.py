"""The Emoji-Styles fine-tuning recipe is an explicit choice, ``experiment=emoji_styles_lite0``:
it composes its values (and the cosine scheduler group), choosing the dataset and the model
alone does not apply it, and the command line and the studies built on it override it."""

from __future__ import annotations

from omegaconf import OmegaConf

from see_dml.runtime.config import CONFIG_DIR

RECIPE = OmegaConf.load(CONFIG_DIR / "experiment" / "emoji_styles_lite0.yaml")


def recipe_values(cfg) -> dict:
    """The composed values at the keys the recipe sets (its defaults list and name aside)."""
    flat = {}

    def walk(node, prefix=""):
        for key, value in node.items():
            if key in ("defaults", "task_name"):
                continue
            if OmegaConf.is_dict(value):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = OmegaConf.select(cfg, f"{prefix}{key}")

    walk(RECIPE)
    return flat


def test_the_experiment_composes_the_recipe(make_cfg):
    expected = recipe_values(RECIPE)
    assert expected["model.backbone.trainable_stages"] is not None  # a partial fine-tune
    cfg = make_cfg("experiment=emoji_styles_lite0", fast=False)
    assert recipe_values(cfg) == expected
    assert cfg.dataset._target_.endswith("EmojiStyles")
    assert cfg.model.backbone.name == "tf_efficientnet_lite0"
    assert cfg.scheduler._target_.endswith("CosineAnnealingLR")


def test_choosing_dataset_and_model_does_not_apply_a_recipe(make_cfg):
    cfg = make_cfg("dataset=emoji_styles", "model=efficientnet_lite0", fast=False)
    assert cfg.model.backbone.trainable_stages is None
    assert cfg.get("scheduler") is None
    assert recipe_values(cfg) != recipe_values(RECIPE)


def test_command_line_and_studies_override_the_recipe(make_cfg):
    cfg = make_cfg("experiment=emoji_styles_lite0", "model.backbone.trainable_stages=5",
                   "optimizer.lr=0.5", fast=False)
    assert cfg.model.backbone.trainable_stages == 5 and cfg.optimizer.lr == 0.5
    # another scheduler replaces the recipe's (a group choice, not a merged node)
    cfg = make_cfg("experiment=emoji_styles_lite0", "scheduler=step", fast=False)
    assert cfg.scheduler._target_.endswith("StepLR") and "T_max" not in cfg.scheduler
    assert recipe_values(make_cfg("experiment=see_emoji", fast=False)) == recipe_values(RECIPE)
    long = make_cfg("experiment=see_emoji_long", fast=False)
    assert long.trainer.max_epochs == 40 and long.data.batch_size == 180
    assert long.model.backbone.trainable_stages == RECIPE.model.backbone.trainable_stages
