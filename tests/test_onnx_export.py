"""``python -m see_dml.export format=onnx``: one graph, dynamic batch, parity with PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hydra.utils import instantiate

from conftest import FAST, compose_config
from see_dml.export import export_model
from see_dml.module import DMLModule
from see_dml.runtime.errors import ConfigError
from see_dml.serving.onnx_graph import export_onnx


def _model(tmp_path: Path, *overrides: str) -> tuple[torch.nn.Module, object]:
    """An untrained model of the real composed config (parity needs no training)."""
    cfg = compose_config([*FAST, f"paths.cache_dir={tmp_path.parent / 'see_dml_cache'}",
                          f"paths.run_dir={tmp_path / 'run'}", "dataset.images_per_class=20",
                          *overrides])
    torch.manual_seed(0)
    return DMLModule.from_config(cfg, num_classes=4, source=instantiate(cfg.dataset)).eval(), cfg


def _onnx_embeddings(path: Path, images: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["embeddings"], {"images": images.numpy()})[0]


@pytest.mark.parametrize(("overrides", "shape"), [
    ((), (1, 28, 56)),  # the embedded CNN on Double-MNIST's grey 28 x 56 digits
    (("model=efficientnet_lite0", "model.backbone.weights_path=null"), (1, 28, 56)),
], ids=["small_cnn", "tf_efficientnet_lite0"])
def test_onnx_matches_pytorch_at_any_batch_size(tmp_path, overrides, shape):
    module, cfg = _model(tmp_path, *overrides)
    assert module.backbone.name == cfg.model.backbone.name
    path = export_onnx(module, tmp_path / "model.onnx", shape, batch_size=2)
    graph = onnx.load(str(path)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    for batch in (1, 5):  # neither is the traced batch of 2
        images = torch.randn(batch, *shape)
        got = _onnx_embeddings(path, images)
        with torch.no_grad():
            want = module(images).numpy()
        assert got.shape == (batch, cfg.model.embed_dim)
        assert np.abs(got - want).max() < 1e-4
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # L2 in-graph


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """A checkpoint as training writes it (the module's own ``on_save_checkpoint``)."""
    module, _ = _model(tmp_path)
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    path = tmp_path / "last.ckpt"
    torch.save(ckpt, path)
    return path


def test_export_cli_writes_graph_and_sidecar(checkpoint, tmp_path, capsys):
    out = tmp_path / "exported" / "digits.onnx"
    cfg = compose_config([f"ckpt_path={checkpoint}", f"output={out}",
                          f"paths.run_dir={tmp_path}"], config_name="export")
    sidecar = export_model(cfg)
    assert out.is_file() and json.loads(Path(f"{out}.json").read_text()) == sidecar
    assert sidecar["max_abs_diff"] < 1e-4
    prep = sidecar["preprocessing"]
    assert prep["input_size"] == [28, 56] and prep["channels"] == 1
    assert prep["image_mode"] == "L" and len(prep["mean"]) == 1
    assert sidecar["embed_dim"] == 16 and len(sidecar["config_hash"]) == 16
    assert sidecar["inputs"]["images"] == ["batch", 1, 28, 56]
    assert f"Wrote {out}" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="format must be onnx or safetensors"):
        export_model(compose_config([f"ckpt_path={checkpoint}", "format=tflite"],
                                    config_name="export"))


def test_safetensors_export_is_a_checkpoint_without_pickle_every_tool_reads(checkpoint,
                                                                            tmp_path):
    """format=safetensors: the weights and the run's config with no pickle in the file; it
    rebuilds the same model (same identity: an index built from the .ckpt accepts it)."""
    from see_dml.checkpoints.read import read_checkpoint
    from see_dml.module import load_module_from_checkpoint
    from see_dml.serving.inference import model_identity

    out = tmp_path / "shared" / "model.safetensors"
    export_model(compose_config([f"ckpt_path={checkpoint}", "format=safetensors",
                                 f"output={out}", f"paths.run_dir={tmp_path}"],
                                config_name="export"))
    header_size = int.from_bytes(out.read_bytes()[:8], "little")  # safetensors' layout
    header = json.loads(out.read_bytes()[8:8 + header_size])
    assert json.loads(header["__metadata__"]["see_dml_config"])["model"]["embed_dim"] == 16
    assert set(read_checkpoint(out)["state_dict"]) == set(read_checkpoint(checkpoint)[
        "state_dict"])
    shared, shared_cfg = load_module_from_checkpoint(out)
    original, original_cfg = load_module_from_checkpoint(checkpoint)
    assert model_identity(shared, shared_cfg) == model_identity(original, original_cfg)
    images = torch.randn(2, 1, 28, 56)
    with torch.no_grad():
        assert torch.equal(shared(images), original(images))
