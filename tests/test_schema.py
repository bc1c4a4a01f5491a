"""The schema of the owned config groups (``see_dml.runtime.schema``): an unknown key, a wrongly
typed value or a value outside its choices is one line naming the key, from
``validate_config``, before anything is built; every shipped option and experiment passes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import compose_config
from see_dml.runtime.errors import ConfigError
from see_dml.runtime.schema import check_schema
from see_dml.training.config_checks import validate_config

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.mark.parametrize(("override", "message"), [
    ("see.mode=bogus", "see.mode='bogus': must be one of top_fraction, threshold"),
    ("data.transforms.hflip=maybe", "data.transforms.hflip='maybe': must be true or false"),
    ("+data.batchsize=32", "data.batchsize is not an option of data "
                           "(see_dml.data.datamodule.RetrievalDataModule); did you mean "
                           "data.batch_size?"),
    ("+see.weigth=1", "see.weigth is not an option of see"),
    ("+dataset.rooot=/x", "did you mean dataset.root?"),
    ("model.head.pooling=mean", "model.head.pooling='mean': must be one of avg, max"),
    ("model.backbone.in_chans=three", "model.backbone.in_chans='three': must be an integer"),
    ("see.n_points=2.5", "see.n_points=2.5: must be an integer"),
    ("data.transforms.interpolation=3", "data.transforms.interpolation=3: must be a string"),
    # the metric set (conf/metrics/default.yaml): its keys, types, Ks, and the metrics that
    # other keys name
    ("+metrics.precison_at=[10]", "metrics.precison_at is not an option of metrics "
                                  "(see_dml.metrics.MetricSet); did you mean "
                                  "metrics.precision_at?"),
    ("metrics.precision_at=[0]", "metrics.precision_at=[0]: must be a list of positive "
                                 "integers"),
    ("metrics.map_at=[a]", "metrics.map_at=['a']: every item must be an integer"),
    ("metrics.recall_at=4", "metrics.recall_at=4: must be a list"),
    ("metrics.nmi=maybe", "metrics.nmi='maybe': must be true or false"),
])
def test_slipping_values_fail_in_validation_naming_the_key(override, message):
    cfg = compose_config([override])
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_metric_other_keys_name_is_one_the_set_computes():
    """The checkpoint's monitor and the tuning objective are metrics of the set; the papers'
    best epoch (test_every_epoch) needs Recall@1."""
    def error(*overrides: str) -> str:
        with pytest.raises(ConfigError) as err:
            validate_config(compose_config(list(overrides)))
        return str(err.value)

    assert error("metrics.map_at_r=false").startswith(
        "callbacks.model_checkpoint.monitor=val/map@r, but the metric set does not compute "
        "map@r (it computes recall@K at the dataset's Ks, precision@1, r_precision)")
    on_p10 = ["objective=val/precision@10", "callbacks.model_checkpoint.monitor=val/precision@10"]
    assert "does not compute precision@10" in error(*on_p10)
    validate_config(compose_config([*on_p10, "metrics.precision_at=[1,10]"]))
    assert error("metrics.recall_at=[2,4]", "test_every_epoch=true").startswith(
        "test_every_epoch=true reports the epoch of the best test Recall@1")
    validate_config(compose_config(["metrics.recall_at=[1,5]", "test_every_epoch=true"]))


def test_see_mode_is_checked_while_see_is_off():
    cfg = compose_config(["see.enabled=false", "see.mode=bogus"])
    with pytest.raises(ConfigError, match="see.mode"):
        check_schema(cfg)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("override", [
    *(f"dataset={o}" for o in _options("dataset")),
    *(f"model={o}" for o in _options("model")),
    *(f"synthesis={o}" for o in _options("synthesis")),
    "see.enabled=true", "model.backbone.in_chans=3",
])
def test_every_shipped_option_passes(override):
    check_schema(compose_config([override]))


def test_the_cli_says_it_in_one_line_before_any_work(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    done = subprocess.run([sys.executable, "-m", "see_dml.train", "+data.batchsize=32",
                           f"paths.output_dir={tmp_path / 'out'}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "error: data.batchsize is not an option of data (see_dml.data.datamodule."
        "RetrievalDataModule); did you mean data.batch_size?")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.ckpt"))


_CHECK = """
import sys
from see_dml.runtime.config import compose
from see_dml.runtime.errors import ConfigError
from see_dml.training.config_checks import validate_config
try:
    validate_config(compose([sys.argv[1], "paths.cache_dir=" + sys.argv[2]]))
except ConfigError as err:
    print(err)
print(sorted(m for m in ("torch", "lightning", "timm") if m in sys.modules))
"""


def _check_in_a_process(override: str, cache: Path) -> list[str]:
    out = subprocess.run([sys.executable, "-c", _CHECK, override, str(cache)],
                         capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.strip().splitlines()


def test_the_signatures_read_once_are_kept_and_a_later_check_imports_nothing(tmp_path):
    """The first check reads the components' signatures from the code (importing torch and
    Lightning: seconds); it keeps them under paths.cache_dir, and the next process names the
    same bad key without importing either."""
    first = _check_in_a_process("see.mode=bogus", tmp_path)
    assert "see.mode='bogus': must be one of top_fraction, threshold" in first[0]
    assert first[1] != "[]"  # read from the code
    [kept] = tmp_path.glob("schema-*.json")
    assert "see_dml.callbacks.synthesis.SEECallback" in kept.read_text()
    second = _check_in_a_process("see.mode=bogus", tmp_path)
    assert second == [first[0], "[]"]


def test_kept_signatures_of_other_code_or_unreadable_are_not_used(tmp_path, monkeypatch):
    import see_dml.runtime.schema as schema

    cfg = compose_config(["see.mode=bogus", f"paths.cache_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="must be one of top_fraction"):
        check_schema(cfg)
    [kept] = tmp_path.glob("schema-*.json")
    # a file with another digest (code edited since) is not read: SEE takes any mode there
    monkeypatch.setattr(schema, "_source_digest", lambda: "edited")
    other = tmp_path / "schema-edited.json"
    other.write_text(kept.read_text().replace('"top_fraction"', '"bogus", "top_fraction"'))
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="must be one of top_fraction, threshold"):
        check_schema(cfg)
    kept.write_text("{not json")  # unreadable: read from the code again, and rewritten
    with pytest.raises(ConfigError, match="must be one of top_fraction, threshold"):
        check_schema(cfg)
    assert "SEECallback" in kept.read_text()


def test_a_digest_covers_every_source_file(tmp_path):
    import shutil

    import see_dml.runtime.schema as schema

    package = Path(schema.__file__).resolve().parents[1]
    copy = tmp_path / "see_dml"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__", "conf"))
    assert schema._source_digest(copy) == schema._source_digest()
    (copy / "data" / "mine.py").write_text("x = 1\n")  # a new file
    added = schema._source_digest(copy)
    assert added != schema._source_digest()
    (copy / "data" / "mine.py").write_text("x = 2\n")  # an edit
    assert schema._source_digest(copy) not in (added, schema._source_digest())


def test_a_bad_metric_set_is_one_line_from_evaluate_too(tmp_path):
    """``evaluate`` takes the metric set too: a bad K is its one ``error:`` line, status 2,
    before the checkpoint is read; so is the old top-level ``nmi`` switch, now
    ``metrics.nmi``."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    for tool, override, line in (
            ("see_dml.evaluate", "metrics.precision_at=[0]",
             "error: metrics.precision_at=[0]: must be a list of positive integers (the Ks)"),
            ("see_dml.evaluate", "+metrics.mapat=[5]",
             "error: metrics.mapat is not an option of metrics (see_dml.metrics.MetricSet); "
             "did you mean metrics.map_at?"),
            ("see_dml.train", "nmi=true", "error: nmi is now metrics.nmi: metrics.nmi=true")):
        done = subprocess.run([sys.executable, "-m", tool, f"ckpt_path={tmp_path / 'x.ckpt'}",
                               override, f"paths.output_dir={tmp_path / 'out'}"], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 2, done.stderr[-2000:]
        assert done.stderr.strip().splitlines()[-1] == line
