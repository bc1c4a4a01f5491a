"""Evaluate a checkpoint: ``python -m see_dml.evaluate ckpt_path=... [key=value ...]``.

The model is rebuilt from the run config stored in the checkpoint
(``checkpoint["see_dml_config"]``), so no training config has to be given again. The test
split (or query + gallery for In-Shop) is embedded with a plain loop, then evaluated and
reported exactly as training's test is (:mod:`see_dml.evaluation`: one kNN search, one
report): Recall@K (the dataset's Ks), MAP@R, R-Precision and Precision@1 are printed as a
Markdown table and written to ``metrics.json`` / ``metrics.md`` in the output directory
(``${paths.output_dir}/evaluate/runs/<time>_<id>``); the last line printed names it.

Which dataset (see ``conf/evaluate.yaml``):

- nothing given: the checkpoint's dataset, exactly as it was trained (same splits, seed,
  transforms);
- ``dataset.root=/elsewhere`` (also ``dataset.strict_counts``, ``dataset.on_error``, or any
  other key with ``+dataset.<key>=...``): the checkpoint's dataset with those keys changed —
  every non-null key under ``dataset`` replaces the checkpoint's;
- ``dataset=<name>`` (a ``conf/dataset`` option, plus its own ``dataset.<key>=...``):
  another dataset, composed from its config file. Its image kind and Recall@K Ks then
  follow that dataset (transform sizes and batch size stay the checkpoint's); ``${seed}``
  in it is the checkpoint's seed.

Options: ``split=test|val`` (val: the held-out training classes), ``export.enabled=true``
(``embeddings_<split>.npz``, plus ``.parquet`` with ``export.format=parquet``),
``plots.enabled=true`` (``projection_<query split>.png``, ``recall_at_k.png``,
``retrieval_grid_<query split>.png``), ``device=auto|cpu|cuda``,
``batch_size=...``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from see_dml.config import CONFIG_DIR, check_knn_backend, warn_ignored_keys
from see_dml.errors import CheckpointError, ConfigError

# torch, Lightning, timm and faiss are imported where they are used: they take seconds to
# load, and a mistyped ckpt_path or split should fail before that, not after.
if TYPE_CHECKING:
    import torch

    from see_dml.data.datamodule import RetrievalDataModule
    from see_dml.module import DMLModule

log = logging.getLogger(__name__)

SPLITS = ("test", "val")


# -- checkpoint -> model --------------------------------------------------------------------
def check_ckpt_path(path: str | Path | None) -> Path:
    """``ckpt_path`` as an existing file, or :class:`CheckpointError` naming ``ckpt_path``.

    Cheap (no torch): the CLIs call it before seconds of imports.
    """
    if path is None or str(path) in ("", "???"):
        raise CheckpointError("ckpt_path is required, e.g. "
                              "ckpt_path=outputs/train/runs/<run>/checkpoints/last.ckpt")
    file = Path(path).expanduser()
    if not file.is_file():
        raise CheckpointError(f"ckpt_path='{path}' does not exist (or is not a file)")
    return file


def read_checkpoint(path: str | Path | None) -> dict[str, Any]:
    """Load a ``see_dml.train`` checkpoint on CPU; :class:`CheckpointError` names ``ckpt_path``.

    ``weights_only=False``: Lightning checkpoints hold loop and callback state besides
    tensors. Only load checkpoints you trust (as for any pickle).
    """
    file = check_ckpt_path(path)
    import torch

    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises pickle, zip and runtime errors alike
        raise CheckpointError(f"ckpt_path='{path}' is not a readable checkpoint: {err}") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"ckpt_path='{path}' is not a Lightning checkpoint "
                              "(no 'state_dict')")
    if "see_dml_config" not in ckpt:
        raise CheckpointError(f"ckpt_path='{path}' has no 'see_dml_config': it was not written "
                              "by python -m see_dml.train, so the model cannot be rebuilt")
    return ckpt


def load_module_from_checkpoint(path: str | Path, device: str | torch.device = "cpu"
                                ) -> tuple[DMLModule, DictConfig]:
    """Rebuild the trained :class:`DMLModule` from a checkpoint alone, in eval mode.

    Returns:
        ``(module, cfg)``: the module with the checkpoint's weights on ``device``, and the
        resolved run config it was trained with.
    """
    ckpt = read_checkpoint(path)
    from see_dml.cli import one_lightning_console
    from see_dml.export import resolve_device
    from see_dml.train import build_model

    one_lightning_console()

    cfg = OmegaConf.create(ckpt["see_dml_config"])
    check_config_layout(cfg, path)
    num_classes = ckpt.get("see_dml_num_classes")
    if num_classes is None:  # written before the class count was stored: read the proxies
        num_classes = _num_classes_from_loss(ckpt["state_dict"])
        if num_classes is None:
            raise CheckpointError(f"ckpt_path='{path}' stores no 'see_dml_num_classes' and "
                                  "its loss has no class weights to infer it from")
    with open_dict(cfg):
        # The weights come from the state dict: never reach for a hub or a weights file.
        cfg.model.backbone.pretrained = False
        cfg.model.backbone.weights_path = None
    module = build_model(cfg, int(num_classes))
    try:
        module.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"ckpt_path='{path}': weights do not fit the model its config "
                              f"describes: {err}") from err
    return module.eval().to(resolve_device(device)), cfg


def check_config_layout(cfg: DictConfig, path: str | Path) -> None:
    """:class:`CheckpointError` for a checkpoint whose stored config predates the
    ``_target_`` nodes (``model.backbone: resnet50`` where a ``Backbone`` node now stands, a
    loss without ``_target_``): this version cannot rebuild its model from it."""
    backbone = OmegaConf.select(cfg, "model.backbone")
    old = [key for key, ok in (("model.backbone", isinstance(backbone, DictConfig)
                                and "_target_" in backbone),
                               ("model.head", OmegaConf.select(cfg, "model.head") is not None),
                               ("loss._target_", OmegaConf.select(cfg, "loss._target_")
                                is not None)) if not ok]
    if old:
        what = f"model.backbone: {backbone}" if isinstance(backbone, str) else ", ".join(old)
        raise CheckpointError(
            f"ckpt_path='{path}' was written by an older see_dml, whose config stored the model "
            f"and loss as flat keys ({what}; missing: {', '.join(old)}), before they became "
            "_target_ nodes: this version cannot rebuild that model. Evaluate it with the "
            "see_dml version that trained it, or train it again")


def _num_classes_from_loss(state_dict: dict[str, Any]) -> int | None:
    """The class count of a loss's class weights, by their name (the shapes alone are
    ambiguous when C == d): pytorch-metric-learning's ``proxies`` are ``(C, d)``, the softmax
    family's ``W`` (NormSoftmax, ArcFace, CosFace) ``(d, C)``."""
    for key, weight in state_dict.items():
        if key.startswith("criterion.") and key.endswith((".proxies", ".W")):
            return int(weight.shape[0] if key.endswith(".proxies") else weight.shape[1])
    return None


# -- dataset of the evaluation --------------------------------------------------------------
def resolve_dataset_config(cfg: DictConfig, ckpt_cfg: DictConfig) -> DictConfig:
    """The dataset config to evaluate on: the checkpoint's, changed as ``cfg.dataset`` says.

    ``cfg.dataset`` with a ``_target_`` (``dataset=<name>`` was given) replaces the
    checkpoint's dataset; otherwise each of its non-null keys replaces that key.
    """
    user = cfg.get("dataset")
    if user is not None and "_target_" in user:
        with open_dict(cfg):
            if cfg.get("seed") is None:
                cfg.seed = ckpt_cfg.get("seed", 0)  # fills ${seed} of the dataset file
        return OmegaConf.create(OmegaConf.to_container(user, resolve=True))
    dataset = OmegaConf.create(OmegaConf.to_container(ckpt_cfg.dataset, resolve=True))
    if user is not None:
        changes = {k: v for k, v in OmegaConf.to_container(user, resolve=True).items()
                   if v is not None}
        dataset = OmegaConf.merge(dataset, changes)
    return dataset


def check_image_mode(module: DMLModule, source: Any) -> None:
    """:class:`ConfigError` when the network takes another number of channels than
    ``source``'s images have (a CUB model on Double-MNIST, or back): else ``conv2d`` fails
    deep inside the first batch."""
    weights = next((p for p in module.backbone.parameters() if p.ndim == 4), None)
    mode = getattr(source, "image_mode", None)
    if weights is None or mode is None:
        return
    takes, gives = int(weights.shape[1]), 1 if mode == "L" else 3
    if takes != gives:
        trained = ((getattr(module, "config", None) or {}).get("dataset") or {}).get(
            "_target_", "?")
        raise ConfigError(
            f"the checkpoint's network takes {takes}-channel images (trained on "
            f"{str(trained).rsplit('.', 1)[-1]}), but {type(source).__name__}'s are "
            f"{gives}-channel ({mode}): evaluate it on a dataset of its own image mode "
            "(leave dataset= out for the checkpoint's own)")


def build_eval_datamodule(run_cfg: DictConfig, module: DMLModule, *, setup: bool = True,
                          batch_size: int | None = None, num_workers: int | None = None
                          ) -> RetrievalDataModule:
    """The run's DataModule (its eval transforms, the backbone's normalisation), set up."""
    from hydra.utils import instantiate

    source = instantiate(run_cfg.dataset)
    check_image_mode(module, source)
    dm: RetrievalDataModule = instantiate(run_cfg.data, source=source, _convert_="all")
    dm.set_normalization(module.backbone.mean, module.backbone.std)
    if batch_size is not None:
        dm.eval_batch_size = int(batch_size)
    if num_workers is not None:
        dm.num_workers = int(num_workers)
    if setup:
        dm.setup("test")
    return dm


def eval_split_names(dm: RetrievalDataModule, split: str) -> list[str]:
    """``[test]``, ``[query, gallery]`` or ``[val]``; :class:`ConfigError` naming ``split``."""
    if split == "test":
        return dm.test_split_names
    if split == "val":
        if not dm.has_val:
            raise ConfigError(f"split=val: {dm.source.name} has no validation classes in this "
                              "run (dataset.val_fraction=0); use split=test")
        return ["val"]
    raise ConfigError(f"split must be one of {', '.join(SPLITS)}; got '{split}'")


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` as ``cfg`` says; return what ``metrics.json`` holds."""
    warn_ignored_keys(cfg, "evaluate")
    split = str(cfg.split)
    if split not in SPLITS:  # before seconds of loading
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}; got '{split}'")
    if cfg.export.format not in ("npz", "parquet"):
        raise ConfigError(f"export.format must be npz or parquet, got '{cfg.export.format}'")
    check_knn_backend(cfg)
    ckpt_path = None if OmegaConf.is_missing(cfg, "ckpt_path") else cfg.ckpt_path
    ckpt_file = check_ckpt_path(ckpt_path)
    from see_dml.evaluation import ReportOptions, evaluate_embeddings, report, write_metrics
    from see_dml.export import embed_split, resolve_device

    device = resolve_device(cfg.get("device", "auto"))
    module, ckpt_cfg = load_module_from_checkpoint(ckpt_path, device)
    run_cfg = ckpt_cfg.copy()
    with open_dict(run_cfg):
        run_cfg.dataset = resolve_dataset_config(cfg, ckpt_cfg)
    dm = build_eval_datamodule(run_cfg, module, batch_size=cfg.get("batch_size"),
                               num_workers=cfg.get("num_workers"))
    names = eval_split_names(dm, split)
    out_dir = Path(cfg.paths.run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    # The embeddings stay where the model ran; the search that train's test runs
    # (see_dml.evaluation.evaluate_embeddings), so the numbers agree.
    embedded = {name: embed_split(module, dm.eval_dataset(name), dm.eval_batch_size, device,
                                  dm.num_workers, progress=cfg.get("progress", True),
                                  desc=f"embedding {name}")
                for name in names}
    result = evaluate_embeddings(split, embedded, dm.source.recall_ks,
                                 knn_backend=cfg.get("knn_backend", "auto"),
                                 compute_nmi=bool(cfg.get("nmi", False)))
    sizes = {s.name: len(s.indices) for s in result.splits}
    query = result.query
    title = (f"{dm.source.name} {split}: " + (
        f"{sizes[names[0]]} query vs {sizes[names[1]]} gallery images" if result.gallery else
        f"{sizes[names[0]]} images, {len(set(query.labels.tolist()))} classes, all vs all"))
    summary = {**result.prefixed_metrics(), "ckpt_path": str(ckpt_file.resolve()),
               "dataset": dm.source.name, "split": split, "num_images": sizes}
    write_metrics(out_dir, summary, device)  # before any export or plot: nothing there costs them
    done = report(result, dm, out_dir, ReportOptions(
        export=bool(cfg.export.enabled), format=cfg.export.format,
        plots=bool(cfg.plots.enabled), projection=cfg.plots.projection,
        grid_queries=cfg.plots.grid_queries, grid_k=cfg.plots.grid_k), row_name=ckpt_file.name)
    (out_dir / "metrics.md").write_text(f"# {title}\n\n{done.table}\n")
    print(f"\n{title}\n{done.table}")
    print(f"Output directory: {out_dir.resolve()}")
    return summary


@hydra.main(config_path=str(CONFIG_DIR), config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from see_dml.cli import run_cli

    return run_cli(evaluate, cfg).get(f"{cfg.split}/map@r")


if __name__ == "__main__":
    main()
