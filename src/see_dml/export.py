"""Export a checkpoint's model: ``python -m see_dml.export ckpt_path=... format=onnx``.

Writes the checkpoint's backbone, head and L2 normalisation as one ONNX graph (input
``images`` ``(B, C, H, W)``, output ``embeddings`` ``(B, d)`` unit rows, ``B`` dynamic;
:mod:`see_dml.serving.onnx_graph`) and a JSON sidecar ``<output>.json`` with what the graph expects
(:func:`see_dml.serving.inference.eval_preprocessing`) and which model it is
(:func:`see_dml.serving.inference.model_identity`); unless ``check=false`` it runs the graph with
onnxruntime and compares it with PyTorch. Embeddings are exported by
``python -m see_dml.evaluate export.enabled=true`` (:mod:`see_dml.evaluation.embedding_files`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from see_dml.checkpoints.read import check_ckpt_path
from see_dml.runtime.config import hydra_main, warn_ignored_keys
from see_dml.runtime.errors import ConfigError
from see_dml.runtime.lock import check_writable

log = logging.getLogger(__name__)


def export_model(cfg: DictConfig) -> dict[str, Any]:
    """Export ``cfg.ckpt_path`` as ``cfg.format``; return what the sidecar JSON holds."""
    warn_ignored_keys(cfg, "export")
    if cfg.format not in ("onnx", "safetensors"):
        raise ConfigError(f"format must be onnx or safetensors, got '{cfg.format}' "
                          "(embeddings: python -m see_dml.evaluate export.enabled=true)")
    if cfg.format == "onnx":  # onnx writes the graph, onnxruntime checks it
        from see_dml.runtime.extras import check

        check("onnx", asked_by="format=onnx")
    ckpt = check_ckpt_path(None if OmegaConf.is_missing(cfg, "ckpt_path") else cfg.ckpt_path)
    out = (Path(cfg.output).expanduser() if cfg.get("output")
           else ckpt.with_suffix(f".{cfg.format}"))
    check_writable(out.parent, "output=<a file where you may write> (by default the export "
                               "goes beside the checkpoint)")  # before seconds of exporting
    if cfg.format == "safetensors":
        return export_safetensors(ckpt, out)
    import torch

    from see_dml.serving.inference import eval_preprocessing, open_checkpoint
    from see_dml.serving.onnx_graph import export_onnx, onnx_max_abs_diff

    run = open_checkpoint(cfg, device="cpu")
    prep = eval_preprocessing(run.datamodule())
    size = cfg.get("input_size") or prep["input_size"]
    if not size or len(size) != 2:
        raise ConfigError("input_size=[H,W] is required: this checkpoint's eval transform "
                          f"keeps each image's size (got input_size={size})")
    prep["input_size"] = [int(size[0]), int(size[1])]
    export_onnx(run.module, out, (prep["channels"], *prep["input_size"]), opset=int(cfg.opset))
    sidecar = {"format": "onnx", "ckpt_path": str(run.path.resolve()), **run.identity,
               "opset": int(cfg.opset),
               "inputs": {"images": ["batch", prep["channels"], *prep["input_size"]]},
               "outputs": {"embeddings": ["batch", int(run.config.model.embed_dim)]},
               "preprocessing": prep}
    if cfg.check:
        images = torch.randn(3, prep["channels"], *prep["input_size"])  # 3: not the traced 2
        sidecar["max_abs_diff"] = onnx_max_abs_diff(run.module, out, images)
        if sidecar["max_abs_diff"] > 1e-4:
            log.warning("the ONNX graph differs from PyTorch by up to %.2g",
                        sidecar["max_abs_diff"])
    Path(f"{out}.json").write_text(json.dumps(sidecar, indent=2))
    diff = (f"; onnxruntime vs PyTorch max |diff| {sidecar['max_abs_diff']:.2g}"
            if "max_abs_diff" in sidecar else "")
    print(f"Wrote {out} ({out.stat().st_size / 2**20:.1f} MiB) and {out}.json{diff}")
    return sidecar


def export_safetensors(ckpt: Path, out: Path) -> dict[str, Any]:
    """``ckpt`` as a checkpoint to share without pickle: its weights (the model's and the
    loss's) as ``safetensors`` tensors, and in the file's metadata the run's config (JSON
    text) and class count. Every tool reads it as ``ckpt_path=<out>`` (see
    :func:`see_dml.checkpoints.read.read_checkpoint`); training state (optimiser, loops) is left
    out: it evaluates, retrieves, indexes and exports, but does not resume."""
    from safetensors.torch import save_file

    from see_dml.checkpoints.read import SAFETENSORS_CLASSES, SAFETENSORS_CONFIG, read_checkpoint

    state = read_checkpoint(ckpt)
    # safetensors stores each tensor once and whole: contiguous copies, no shared storage
    tensors = {k: v.detach().clone().contiguous() for k, v in state["state_dict"].items()}
    config = state["see_dml_config"]
    if not isinstance(config, dict):  # an older see_dml's DictConfig
        config = OmegaConf.to_container(config, resolve=True)
    meta = {"format": "see_dml", SAFETENSORS_CONFIG: json.dumps(config, sort_keys=True)}
    if state.get("see_dml_num_classes") is not None:
        meta[SAFETENSORS_CLASSES] = str(int(state["see_dml_num_classes"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata=meta)
    print(f"Wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {len(tensors)} tensors, no "
          "pickle): evaluate, retrieve, index and export read it as ckpt_path=")
    return {"format": "safetensors", "ckpt_path": str(ckpt.resolve()), "output": str(out),
            "tensors": len(tensors)}


@hydra_main("export")
def main(cfg: DictConfig) -> None:
    from see_dml.runtime.cli import run_cli

    run_cli(export_model, cfg)


if __name__ == "__main__":
    main()
