"""A trained checkpoint opened for inference: the one layer every tool loads a model through.

``evaluate``, ``retrieve``, ``index`` and ``export`` each call :func:`open_checkpoint`, which
reads the checkpoint once and gives back an :class:`InferenceRun`: the rebuilt module in eval
mode, the run config it was trained with (``checkpoint["see_dml_config"]``, so no training
config has to be given again), that config with the dataset the tool was asked for, the
model's identity (config and weights hashes) and, when asked, the checkpoint's DataModule.
:func:`embed_split` embeds a split with it as training's test loop would.

Heavy libraries (torch, Lightning, timm) load inside the functions that need them: a tool's
cheap checks (a mistyped ``ckpt_path``, a split) fail before seconds of imports.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sized
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf, open_dict

from see_dml.checkpoints.read import check_ckpt_path, resolve_device
from see_dml.runtime.config import to_dict
from see_dml.runtime.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.utils.data import Dataset

    from see_dml.data.datamodule import RetrievalDataModule
    from see_dml.module import DMLModule

#: The splits ``evaluate`` scores: the test classes, or the held-out validation classes.
EVAL_SPLITS = ("test", "val")


# -- the tools' way in ----------------------------------------------------------------------
@dataclass
class InferenceRun:
    """A checkpoint opened by a tool (:func:`open_checkpoint`).

    Attributes:
        path: the checkpoint file.
        module: the trained :class:`~see_dml.module.DMLModule`, in eval mode on ``device``.
        config: the resolved run config it was trained with.
        run_config: ``config`` with the dataset the tool was given
            (:func:`resolve_dataset_config`).
        device: where ``module`` is.
        batch_size, num_workers: the tool's overrides of the DataModule's (None: the run's).
    """

    path: Path
    module: DMLModule
    config: DictConfig
    run_config: DictConfig
    device: torch.device
    batch_size: int | None = None
    num_workers: int | None = None
    _dm: RetrievalDataModule | None = field(default=None, repr=False)
    _set_up: bool = field(default=False, repr=False)
    _identity: dict[str, Any] | None = field(default=None, repr=False)

    def datamodule(self, setup: bool = False) -> RetrievalDataModule:
        """The run's DataModule on ``run_config``'s dataset (built once). ``setup=True`` loads
        its evaluation splits; without it, nothing of the dataset is read (a folder search
        needs only the eval transform)."""
        if self._dm is None:
            self._dm = build_eval_datamodule(self.run_config, self.module, setup=False,
                                             batch_size=self.batch_size,
                                             num_workers=self.num_workers)
        if setup and not self._set_up:
            self._dm.setup("test")
            self._set_up = True
        return self._dm

    @property
    def identity(self) -> dict[str, Any]:
        """:func:`model_identity` of the checkpoint (computed once)."""
        if self._identity is None:
            self._identity = model_identity(self.module, self.config)
        return self._identity


def open_checkpoint(cfg: DictConfig, device: str | torch.device | None = None
                    ) -> InferenceRun:
    """Open ``cfg.ckpt_path`` as a tool's config describes it.

    Reads ``ckpt_path``, ``device`` (unless ``device`` is given), ``dataset`` (see
    :func:`resolve_dataset_config`), ``batch_size`` and ``num_workers`` of ``cfg``.

    Raises:
        CheckpointError: naming ``ckpt_path``, for a missing, unreadable or foreign file.
    """
    ckpt_file = check_ckpt_path(None if OmegaConf.is_missing(cfg, "ckpt_path")
                                else cfg.ckpt_path)
    dev = resolve_device(device if device is not None else cfg.get("device", "auto"))
    from see_dml.module import load_module_from_checkpoint

    module, ckpt_cfg = load_module_from_checkpoint(ckpt_file, dev)
    run_cfg = ckpt_cfg.copy()
    with open_dict(run_cfg):
        run_cfg.dataset = resolve_dataset_config(cfg, ckpt_cfg)
    return InferenceRun(ckpt_file, module, ckpt_cfg, run_cfg, dev,
                        batch_size=cfg.get("batch_size"), num_workers=cfg.get("num_workers"))


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
        return OmegaConf.create(to_dict(user))
    dataset = OmegaConf.create(to_dict(ckpt_cfg.dataset))
    if user is not None:
        changes = {k: v for k, v in to_dict(user).items() if v is not None}
        merged = OmegaConf.merge(dataset, changes)
        assert isinstance(merged, DictConfig)  # a mapping merged into a mapping
        dataset = merged
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
    raise ConfigError(f"split must be one of {', '.join(EVAL_SPLITS)}; got '{split}'")


# -- embedding a split ---------------------------------------------------------------------
def embed_split(module: nn.Module, dataset: Dataset, batch_size: int = 256,
                device: str | torch.device | None = "auto", num_workers: int = 0,
                progress: bool = True, desc: str = "embedding"
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Embed every image of ``dataset`` (``(image, label, index)`` items) in dataset order.

    The module is put in eval mode (BatchNorm statistics, no dropout) and left there. The
    embeddings stay on ``device``: a search there needs no copy (``knn_backend=auto``
    searches GPU embeddings with torch), and faiss copies them to the host itself.

    Args:
        module: maps ``(B, C, H, W)`` images to ``(B, d)`` embeddings (a ``DMLModule``).
        dataset: a :class:`~see_dml.data.base.RetrievalDataset` or anything that yields
            ``(image, label, index)``.
        batch_size: images per forward pass.
        device: ``auto`` (cuda when available), ``cpu``, ``cuda:1``...
        num_workers: DataLoader workers.
        progress: show a tqdm bar.

    Returns:
        ``(embeddings (N, d) float32 on device, labels (N,) int64, indices (N,) int64)``
        (labels and indices on the CPU). An image that ``dataset.on_error=skip`` left out
        has no row: ``N`` is then less than the dataset's size, and ``indices`` say which
        images the rows are.

    Raises:
        RuntimeError: when the loop did not see each of the ``len(dataset)`` images exactly
            once (the embeddings would silently describe another set of images).
    """
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from see_dml.data.base import skipped_rows

    dev = resolve_device(device)
    module.eval().to(dev)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=dev.type == "cuda")
    embs, labels, indices = [], [], []
    with torch.no_grad():
        for images, label, index in tqdm(loader, desc=desc, disable=not progress, unit="batch"):
            embs.append(module(images.to(dev, non_blocking=True)).float())
            labels.append(torch.as_tensor(label))
            indices.append(torch.as_tensor(index))
    if not isinstance(dataset, Sized):  # torch's Dataset declares no __len__
        raise TypeError(f"{desc}: the dataset has no len() to check the embedded rows against")
    n = len(dataset)
    if not embs:
        raise RuntimeError(f"{desc}: the dataset is empty")
    emb = torch.cat(embs)
    lab = torch.cat(labels).long()
    idx = torch.cat(indices).long()
    dropped = skipped_rows(idx)  # dataset.on_error=skip: index -1 - i, left out
    seen = torch.where(dropped, -1 - idx, idx)
    if len(idx) != n or not torch.equal(torch.sort(seen).values, torch.arange(n)):
        raise RuntimeError(f"{desc}: embedded {len(idx)} rows for a dataset of {n} images, "
                           "or some index twice; a sampler or a custom dataset is the likely "
                           "cause")
    if bool(dropped.any()):
        keep = ~dropped
        emb, lab, idx = emb[keep.to(emb.device)], lab[keep], idx[keep]
    return emb, lab, idx


# -- which model made an embedding ---------------------------------------------------------
def config_hash(config: Mapping[str, Any] | DictConfig) -> str:
    """A short hash of a checkpoint's ``see_dml_config``: which model made an embedding.

    Index and ONNX sidecars store it; two checkpoints of one run (another epoch) share it.
    ``config``: the stored dict, or the DictConfig :func:`load_module_from_checkpoint` made of
    it (same hash).
    """
    if isinstance(config, DictConfig):
        config = to_dict(config)
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def weights_hash(module: Any) -> str:
    """A short hash of the weights that make an embedding (backbone and head; not the loss's
    proxies): two epochs of one run share :func:`config_hash` but not this."""
    digest = hashlib.sha256()
    for part in ("backbone", "head"):
        for name, tensor in sorted(getattr(module, part).state_dict().items()):
            digest.update(f"{part}.{name}".encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def model_identity(module: Any, ckpt_cfg: DictConfig) -> dict[str, Any]:
    """Which model makes an embedding, as the index and ONNX sidecars record it and
    :meth:`see_dml.serving.gallery_index.SavedIndex.check_model` compares it: ``config_hash``,
    ``weights_hash`` and ``embed_dim``."""
    return {"config_hash": config_hash(ckpt_cfg), "weights_hash": weights_hash(module),
            "embed_dim": int(ckpt_cfg.model.embed_dim)}


def eval_preprocessing(dm: RetrievalDataModule) -> dict[str, Any]:
    """What an image must go through before the model sees it (the eval transform).

    Returns:
        ``image_kind``, ``image_mode`` (``L`` / ``RGB``), ``channels``, ``input_size``
        ``[H, W]`` (None where the eval transform keeps each image's size), ``mean`` and
        ``std`` per channel (after ``ToTensor``'s scaling to [0, 1]), and ``transform``: the
        torchvision pipeline as text.
    """
    from see_dml.data.transforms import build_transforms, eval_input_size

    cfg = dm.transform_cfg
    kind = dm.source.image_kind
    size = ([cfg.image_size or 224] * 2 if kind == "natural"
            else list(eval_input_size(cfg) or []) or None)
    _, eval_tf = build_transforms(kind, cfg, dm.mean, dm.std)
    return {"image_kind": kind, "image_mode": dm.source.image_mode,
            "channels": 1 if dm.source.image_mode == "L" else 3, "input_size": size,
            "mean": list(dm.mean), "std": list(dm.std), "transform": repr(eval_tf)}


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op CPU threads set to ``threads`` (train's ``threads`` key; evaluate
    uses the checkpoint's; None: left as they are) for the block, and set back after it.
    The thread count decides how CPU kernels split their float sums (convolutions,
    BatchNorm statistics, reductions), and so the last bits of every result: a fixed count
    gives the same weights on a machine with 2 cores or 64, loaded or idle (torch's OpenMP
    pool splits work by thread, statically)."""
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)
