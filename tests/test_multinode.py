"""Two nodes of one DDP task each, started on localhost as SLURM starts the tasks of a
two-node job (the SLURM_* variables Lightning's SLURMEnvironment reads; gloo on the CPU; a
free local port): the class-balanced global batch is split across the nodes, training and
testing match one process with the same global batch, every file of the run directory is
written by the global rank zero alone, and a signal to one node stops both at the same step,
after which the relaunched job resumes exactly (tests/helpers/slurm_nodes.py)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from helpers.slurm_nodes import scontrol_stub, start_nodes, wait_all

#: 3 epochs of 2 steps; 32 images (8 classes x 4) per node, a global batch of 64. Frozen
#: BatchNorm and no augmentation: a sample's embedding does not depend on which node, or
#: which batch, it is in, so one process with a batch of 64 trains the same weights.
COMMON = ["trainer.max_epochs=3", "+trainer.limit_train_batches=2",
          "trainer.enable_progress_bar=false", "data.m_per_class=4", "data.eval_batch_size=128",
          "model.embed_dim=16", "dataset.images_per_class=20",
          "data.transforms.augment_digits=false", "model.freeze_bn=true",
          "callbacks.embedding_export.projection=pca"]
TWO_NODES = ["trainer=ddp_cpu", "trainer.devices=1", "trainer.num_nodes=2",
             "trainer.strategy=ddp", "data.batch_size=32", *COMMON]
TIMEOUT_S = 300  # per launch of the two nodes: a hung collective fails the test, not CI


def _launch(work: Path, run_dir: Path, cache: Path, *extra: str, job_id: str = "7001",
            restarts: int = 0) -> list[int]:
    procs = start_nodes([*TWO_NODES, f"hydra.run.dir={run_dir}", f"paths.cache_dir={cache}",
                         f"paths.output_dir={work / 'outputs'}", *extra],
                        job_id=job_id, work=work, restarts=restarts)
    return wait_all(procs, TIMEOUT_S)


def _writes(audit: Path, run_dir: Path) -> dict[str, list[str]]:
    """``{rank: [event path, ...]}`` of the run directory's files, from the audit hook."""
    out: dict[str, list[str]] = {}
    for file in audit.glob("writes_rank*_*.txt"):
        rank = file.name.split("_")[1].removeprefix("rank")
        out.setdefault(rank, []).extend(
            line for line in file.read_text().splitlines()
            if line.split(" ", 1)[1].startswith(str(run_dir) + "/"))
    return out


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory) -> dict:
    """The two-node run, unbroken, with the batch probe."""
    work = tmp_path_factory.mktemp("two_nodes")
    cache = tmp_path_factory.getbasetemp() / "see_dml_cache"
    run_dir = work / "run"
    codes = _launch(work, run_dir, cache, "+callbacks.probe._target_=helpers.ddp_probe.BatchProbe",
                    f"+callbacks.probe.out_dir={work / 'probe'}")
    logs = "\n".join(p.read_text()[-3000:] for p in sorted(work.glob("node*.log")))
    assert codes == [0, 0], logs
    return {"work": work, "run_dir": run_dir, "cache": cache,
            "metrics": json.loads((run_dir / "metrics.json").read_text())}


@pytest.mark.slow  # two node processes train, then one process: ~70 s
@pytest.mark.timeout(900)
def test_two_nodes_split_the_global_batch_and_match_one_process(unbroken, make_cfg, tmp_path):
    from see_dml.train import train

    work, run_dir = unbroken["work"], unbroken["run_dir"]
    probes = [json.loads((work / "probe" / f"batches_rank{r}.json").read_text()) for r in (0, 1)]
    assert [p["world_size"] for p in probes] == [2, 2]
    assert len(probes[0]["local"]) == 6  # 3 epochs x 2 steps
    for step, (mine, theirs) in enumerate(zip(probes[0]["local"], probes[1]["local"])):
        # each node loads 8 classes x 4 images, the two nodes' classes disjoint; the loss on
        # both sees the global batch: node 0's images, then node 1's
        for share in (mine, theirs):
            assert len(share) == 32 and set(Counter(share).values()) == {4}
        assert not set(mine) & set(theirs)
        assert probes[0]["gathered"][step] == probes[1]["gathered"][step] == mine + theirs

    # one process, the same global batch of 64: the same batches, the same weights
    cfg = make_cfg("trainer=cpu", "data.batch_size=64", *COMMON,
                   f"paths.cache_dir={unbroken['cache']}",
                   "+callbacks.probe._target_=helpers.ddp_probe.BatchProbe",
                   f"+callbacks.probe.out_dir={tmp_path / 'probe'}", fast=False)
    one = train(cfg)
    alone = json.loads((tmp_path / "probe" / "batches_rank0.json").read_text())
    assert alone["world_size"] == 1 and alone["gathered"] == probes[0]["gathered"]
    two_w = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    one_w = torch.load(Path(cfg.paths.run_dir) / "checkpoints" / "last.ckpt",
                       weights_only=False)["state_dict"]
    assert two_w.keys() == one_w.keys()
    for key in two_w:  # summed in another order by the all-reduce: float rounding apart
        torch.testing.assert_close(two_w[key], one_w[key], rtol=1e-4, atol=2e-5, msg=key)
    two = unbroken["metrics"]
    for key in ("test_final/recall@1", "test_final/recall@8", "test_final/map@r",
                "test_final/r_precision"):
        # the final weights' rounding differences move a near-tied neighbour of 400 queries
        # now and then (the selected epochs may differ, for the same reason)
        assert two[key] == pytest.approx(one[key], abs=0.01), (key, two[key], one[key])
    assert two["provenance/device_count"] == 2 and two["epochs"] == one["epochs"] == 3

    # the nodes' test of the selected checkpoint gives what one process gives for it
    from see_dml.evaluate import evaluate
    from see_dml.runtime.config import compose

    report = evaluate(compose([f"ckpt_path={two['best_checkpoint']}", "progress=false",
                               f"paths.run_dir={tmp_path / 'eval'}",
                               f"paths.cache_dir={unbroken['cache']}"], "evaluate"))
    for key in ("test/recall@1", "test/recall@2", "test/recall@4", "test/recall@8",
                "test/map@r", "test/r_precision"):
        assert report[key] == pytest.approx(two[key], abs=1e-6), key


@pytest.mark.slow
def test_two_nodes_write_every_file_once_from_global_rank_zero(unbroken):
    run_dir = unbroken["run_dir"]
    writes = _writes(unbroken["work"] / "audit", run_dir)
    # node 1 (global rank 1, local rank 0 on its node) wrote only its own log
    assert [w.split(" ", 1)[1] for w in writes["1"]] == [str(run_dir / "train.rank1.log")]
    opened = Counter(w.split(" ", 1)[1] for w in writes["0"] if w.startswith("open "))
    for name in ("metrics.json", "config.yaml", ".hydra/config.yaml", ".hydra/overrides.yaml",
                 "train.log", "embeddings_test.npz", "recall_at_k.png", ".see_dml.lock.holder"):
        assert opened[str(run_dir / name)] == 1, name
    # the lock was rank zero's (its holder file is removed at the end; the lock file stays)
    assert (run_dir / ".see_dml.lock").exists() and not (run_dir / ".see_dml.lock.holder").exists()
    files = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())
    assert files.count("metrics.json") == 1 and "train.rank1.log" in files
    assert not [f for f in files if f.startswith(".hydra/") and "rank" in f]
    assert not list(run_dir.glob("checkpoints/.*.tmp-*"))  # no partial checkpoint left


@pytest.mark.slow  # three launches of the two nodes: ~100 s
@pytest.mark.timeout(900)
def test_a_signal_to_one_node_stops_both_and_the_requeued_job_resumes_exactly(unbroken,
                                                                             tmp_path):
    """A SIGTERM to node 1 alone (epoch 1): both nodes stop at the same step, status 143. The
    job is started again as SLURM requeues it (same job id, same run directory); there SLURM's
    requeue signal (SIGUSR1, Lightning's auto-requeue) reaches node 1 alone (epoch 2): rank 0
    runs ``scontrol requeue <job>`` (a stub that records it and, as SLURM, sends SIGTERM to
    the job's tasks) and both stop. The third start finishes: the same weights and metrics as
    the unbroken run."""
    run_dir, cache = tmp_path / "run", unbroken["cache"]
    scontrol_stub(tmp_path / "bin", tmp_path / "scontrol.log", tmp_path / "pids")

    def stop(signum: str, step: int) -> list[str]:
        return ["+callbacks.stop._target_=helpers.preemption.SignalOnce",
                f"+callbacks.stop.signum={signum}", f"+callbacks.stop.step={step}",
                "+callbacks.stop.rank=1", f"+callbacks.stop.marker={tmp_path / signum}"]

    assert _launch(tmp_path, run_dir, cache, *stop("SIGTERM", 3)) == [143, 143]
    logs = (tmp_path / "node0.0.log").read_text()
    assert "SIGTERM: stopped at epoch 1, step 4" in logs  # node 0 stopped after node 1's step
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (0, 2)
    assert not (tmp_path / "scontrol.log").exists()  # a SIGTERM alone requeues nothing

    assert _launch(tmp_path, run_dir, cache, *stop("SIGUSR1", 5), restarts=1) == [143, 143]
    assert (tmp_path / "scontrol.log").read_text() == "requeue 7001\n"  # once, by rank 0
    assert "requeued SLURM job 7001" in (tmp_path / "node0.1.log").read_text()
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (1, 4)

    assert _launch(tmp_path, run_dir, cache, restarts=2) == [0, 0]
    assert f"Restoring states from the checkpoint path at {run_dir / 'checkpoints' / 'last.ckpt'}" \
        in (tmp_path / "node0.2.log").read_text()
    resumed = json.loads((run_dir / "metrics.json").read_text())
    ref = unbroken["metrics"]
    for key in ("test/recall@1", "test/recall@8", "test/map@r", "test_final/map@r",
                "best/val/map@r", "epochs"):
        assert resumed[key] == ref[key], key
    got = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    want = torch.load(unbroken["run_dir"] / "checkpoints" / "last.ckpt",
                      weights_only=False)["state_dict"]
    for key in want:
        assert torch.equal(got[key], want[key]), key
    # the three starts: one metrics.json, every file by rank zero
    writes = _writes(tmp_path / "audit", run_dir)
    assert {w.split(" ", 1)[1] for w in writes["1"]} == {str(run_dir / "train.rank1.log")}


def test_other_ranks_write_no_hydra_files_and_log_to_their_own_file(monkeypatch):
    from see_dml.runtime.config import hydra_subdir, rank_log_suffix

    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert (hydra_subdir(None), rank_log_suffix()) == (".hydra", "")
    monkeypatch.setenv("SLURM_PROCID", "0")  # node 0's task: the global rank zero
    assert (hydra_subdir(None), rank_log_suffix()) == (".hydra", "")
    monkeypatch.setenv("SLURM_PROCID", "3")  # a task of another node: its local rank is 0
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert (hydra_subdir(None), hydra_subdir("/runs/a"), rank_log_suffix()) == (
        None, None, ".rank3")
    monkeypatch.delenv("SLURM_PROCID")
    monkeypatch.setenv("NODE_RANK", "1")  # started by hand: node 1, local rank 0
    assert (hydra_subdir(None), rank_log_suffix()) == (None, ".node1.local0")
