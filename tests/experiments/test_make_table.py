"""experiments/make_table.py on hand-made run folders: what is pooled, the paired Δ, the
paper layout (datasets side by side) and --checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from see_dml.reporting import tables as make_table  # noqa: E402
from see_dml.runtime.errors import TableError


def _run(root: Path, name: str, seed: int, map_r: float, *, see: bool = False,
         n_points: int = 8, lr: float = 1e-4, synthesis: str | None = None) -> None:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    cfg = {
        "seed": seed,
        "ckpt_path": "auto",
        "paths": {"run_dir": str(run_dir), "output_dir": "outputs"},
        "dataset": {"_target_": "see_dml.data.mnist.DoubleMNIST", "seed": seed},
        "data": {"batch_size": 64, "seed": seed},
        "model": {"backbone": {"name": "small_cnn"}, "embed_dim": 16},
        "loss": {"name": "proxy_anchor"},
        "see": {"enabled": see, "n_points": n_points},
        "synthesis": {"name": synthesis, "n_points": 2} if synthesis else None,
        "optimizer": {"lr": lr},
        "trainer": {"max_epochs": 5, "default_root_dir": str(run_dir)},
        "callbacks": {"last_checkpoint": {"dirpath": str(run_dir / "checkpoints")}},
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run_dir / "metrics.json").write_text(json.dumps({"test/map@r": map_r,
                                                      "test/recall@1": 2 * map_r}))


def test_runs_are_pooled_only_across_seeds_and_paired_to_none(tmp_path):
    for seed, (plain, see) in enumerate([(0.10, 0.13), (0.12, 0.13), (0.11, 0.15)]):
        _run(tmp_path, f"none{seed}", seed, plain)
        _run(tmp_path, f"see{seed}", seed, see, see=True)
        _run(tmp_path, f"see_n4_{seed}", seed, plain + 0.005, see=True, n_points=4)
    _run(tmp_path, "none_lr", 0, 0.5, lr=1e-3)  # another learning rate: its own row
    rows = make_table.table_rows(make_table.collect([tmp_path]))
    by = {(r["synthesis"], r["other"]): r for r in rows}
    assert sorted(by) == [("SEE", "see.n_points=4"), ("SEE", "see.n_points=8"),
                          ("none", "optimizer.lr=0.0001"), ("none", "optimizer.lr=0.001")]
    assert [by[k]["seeds"] for k in sorted(by)] == [3, 3, 3, 1]
    see = by[("SEE", "see.n_points=8")]
    assert see["MAP@R"][0] == pytest.approx(100 * (0.13 + 0.13 + 0.15) / 3)
    # paired differences by hand: 3, 1, 4 points; mean 8/3, sd 1.5275, t(0.975, 2) = 4.3027
    mean, low, high, pairs = see["ΔMAP@R"]
    half = 4.302653 * math.sqrt(((3 - 8 / 3) ** 2 + (1 - 8 / 3) ** 2 + (4 - 8 / 3) ** 2) / 2)
    half /= math.sqrt(3)
    assert pairs == 3 and mean == pytest.approx(8 / 3)
    assert (low, high) == pytest.approx((8 / 3 - half, 8 / 3 + half), abs=1e-4)
    assert low < 0 < high  # three seeds cannot tell this effect from none
    n4 = by[("SEE", "see.n_points=4")]["ΔMAP@R"]
    assert n4[0] == pytest.approx(0.5) and n4[1] == pytest.approx(0.5)  # constant: no spread
    # the lr=1e-3 run has no baseline of its own kind: no Δ; baselines have none either
    assert by[("none", "optimizer.lr=0.001")]["ΔMAP@R"] is None
    assert by[("none", "optimizer.lr=0.0001")]["ΔMAP@R"] is None
    markdown = make_table.to_markdown(rows)
    assert "+2.67 [" in markdown and "| other |" in markdown


def test_keys_that_only_change_reporting_do_not_split_a_cell(tmp_path):
    """A run with test_every_epoch / another logger, or one written before such a key
    existed, trains the same weights: it pools with the others as a seed, and pairs."""
    _run(tmp_path, "none0", 0, 0.10)
    _run(tmp_path, "see0", 0, 0.13, see=True)
    for name, seed, value, extra in (("none1", 1, 0.12, {"test_every_epoch": False}),
                                     ("see1", 1, 0.13, {"test_every_epoch": True,
                                                        "logger": {"wandb": {"x": 1}}})):
        _run(tmp_path, name, seed, value, see=name.startswith("see"))
        cfg = yaml.safe_load((tmp_path / name / "config.yaml").read_text())
        (tmp_path / name / "config.yaml").write_text(yaml.safe_dump({**cfg, **extra}))
    rows = make_table.table_rows(make_table.collect([tmp_path]))
    assert [(r["synthesis"], r["seeds"]) for r in rows] == [("SEE", 2), ("none", 2)]
    assert rows[0]["ΔMAP@R"][3] == 2  # paired over both seeds: 3 and 1 points
    assert rows[0]["ΔMAP@R"][0] == pytest.approx(2.0)


def test_baselines_by_name_and_duplicate_seeds(tmp_path):
    _run(tmp_path, "ee0", 0, 0.2, synthesis="embedding_expansion")
    _run(tmp_path, "none0", 0, 0.1)
    rows = make_table.table_rows(make_table.collect([tmp_path]))
    ee = next(r for r in rows if r["synthesis"] == "embedding_expansion")
    assert ee["ΔMAP@R"][0] == pytest.approx(10.0) and math.isnan(ee["ΔMAP@R"][1])
    _run(tmp_path, "none0_again", 0, 0.1)
    with pytest.raises(TableError, match="seed 0"):
        make_table.collect([tmp_path])


def test_plot_has_one_panel_per_requested_metric(tmp_path):
    from matplotlib.image import imread

    for seed in range(2):
        for dim in (16, 64):
            _run(tmp_path / f"d{dim}", f"none{seed}", seed, 0.1 + seed / 100)
            _run(tmp_path / f"d{dim}", f"see{seed}", seed, 0.12, see=True)
    for path in tmp_path.rglob("config.yaml"):  # the two sizes
        cfg = yaml.safe_load(path.read_text())
        cfg["model"]["embed_dim"] = int(path.parent.parent.name[1:])
        path.write_text(yaml.safe_dump(cfg))
    make_table.main([str(tmp_path)])
    one = imread(tmp_path / "results.png").shape
    make_table.main([str(tmp_path), "--plot-metrics", "R@1", "MAP@R"])
    two = imread(tmp_path / "results.png").shape
    assert two[0] == one[0] and two[1] == 2 * one[1]
    with pytest.raises(SystemExit):
        make_table.main([str(tmp_path), "--plot-metrics", "nope"])


def test_long_columns_are_the_metrics_the_runs_hold(tmp_path):
    """Runs trained with ``metrics.precision_at=[1,10] metrics.nmi=true``: their P@10 and
    NMI get columns (Precision@1, equal to Recall@1, does not), named and ordered as every
    table names them, and can be plotted; the CSV has them too."""
    for seed in range(2):
        _run(tmp_path, f"none{seed}", seed, 0.1 + seed / 100)
        path = tmp_path / f"none{seed}" / "metrics.json"
        metrics = json.loads(path.read_text())
        path.write_text(json.dumps({**metrics, "test/precision@1": metrics["test/recall@1"],
                                    "test/precision@10": 0.3, "test/nmi": 0.5,
                                    "test/num_queries": 400.0}))
    markdown = make_table.main([str(tmp_path), "--plot-metrics", "P@10"])
    header = _cells(markdown.split("\n\n")[0].splitlines()[0])
    assert header[header.index("seeds"):] == ["seeds", "R@1", "P@10", "MAP@R", "NMI",
                                              "R@1 final", "MAP@R final"]
    assert "| 30.00 ± 0.00 | " in markdown  # P@10 in %
    assert "P@10 mean" in (tmp_path / "results.csv").read_text().splitlines()[0]
    with pytest.raises(SystemExit):  # RP: a column of the default runs, not of these
        make_table.main([str(tmp_path), "--plot-metrics", "RP"])


# --- the paper layout: a fake reproduction sweep, DeiT-S / 128 with and without SEE on two
# datasets, two seeds each ---

KS = {"CUB200": (1, 2, 4, 8, 16, 32), "StanfordOnlineProducts": (1, 10, 100, 1000)}
# R@1 (fraction) of (no SEE, SEE) by seed; the folders list SOP first, the table CUB first
SWEEP = {"StanfordOnlineProducts": [(0.80, 0.82), (0.81, 0.85)],
         "CUB200": [(0.70, 0.74), (0.72, 0.77)]}
T_975_1 = 12.706205  # scipy.stats.t.ppf(0.975, 1)


def _paper_run(root: Path, dataset: str, seed: int, r1: float, *, see: bool,
               best_on_test: bool = True, protocol: str = "authors") -> Path:
    """A run of the sweep. Under each checkpoint's prefix R@K is R@1 + 2 points for each K
    further down the dataset's list of Ks and MAP@R is R@1 / 2; the final epoch's R@1 is 1
    point below the validation-selected one, the best on test 2 (no SEE) or 3 (SEE) above."""
    run_dir = root / f"{list(SWEEP).index(dataset)}_{dataset}" / f"{'see' if see else 'none'}{seed}"
    run_dir.mkdir(parents=True)
    cfg = {"seed": seed, "paths": {"run_dir": str(run_dir)}, "protocol": protocol,
           "dataset": {"_target_": f"see_dml.data.x.{dataset}", "seed": seed},
           "model": {"backbone": {"name": "deit_small_distilled_patch16_224"}, "embed_dim": 128},
           "loss": {"name": "proxy_anchor"}, "see": {"enabled": see, "n_points": 8},
           "synthesis": None,
           # each dataset its own recipe: not a reason for a line of its own
           "optimizer": {"lr": 1e-5, "weight_decay": 1e-2 if dataset == "CUB200" else 1e-4},
           "trainer": {"max_epochs": 100 if dataset == "CUB200" else 150}}
    shifts = {"test/": 0.0, "test_final/": -0.01}
    if best_on_test:
        shifts["best_on_test/"] = 0.03 if see else 0.02
    metrics: dict[str, float] = {"best_on_test/epoch": 41} if best_on_test else {}
    for prefix, shift in shifts.items():
        for i, k in enumerate(KS[dataset]):
            metrics[f"{prefix}recall@{k}"] = r1 + shift + 0.02 * i
        metrics[f"{prefix}map@r"] = (r1 + shift) / 2
        metrics[f"{prefix}r_precision"] = (r1 + shift) / 2 + 0.01
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return run_dir


def _sweep(root: Path) -> None:
    for dataset, seeds in SWEEP.items():
        for seed, (plain, see) in enumerate(seeds):
            _paper_run(root, dataset, seed, plain, see=False)
            _paper_run(root, dataset, seed, see, see=True)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _paper_lines(markdown: str) -> tuple[str, list[str], dict[str, dict[str, str]], str]:
    """(heading, header, {method: {column: cell}}, what follows the table)."""
    heading, table, *after = markdown.split("\n\n")
    header, _, *rows = table.splitlines()
    header = _cells(header)
    return heading, header, {cells[0]: dict(zip(header, cells)) for cells in map(_cells, rows)
                             }, "\n\n".join(after)


def _interval(diffs: list[float]) -> str:
    """mean [95% t interval] of two paired differences, by hand."""
    mean = sum(diffs) / 2
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs))  # n - 1 = 1
    half = T_975_1 * sd / math.sqrt(2)
    return f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}]"


def test_paper_layout_puts_datasets_side_by_side(tmp_path, capsys):
    _sweep(tmp_path)
    markdown = make_table.main([str(tmp_path)])  # two datasets: auto is the paper layout
    assert capsys.readouterr().out.strip() == markdown
    heading, header, rows, after = _paper_lines(markdown)
    assert heading == ("Checkpoint: validation-selected: best val/map@r on held-out training "
                       "classes (`--checkpoint val`, `test/*` in metrics.json). Recall@K and "
                       "MAP@R in %, mean ± std over 2 seeds.")
    # CUB before SOP; each dataset's first four Ks, MAP@R, SEE - none (no published R@1: these
    # are validation-selected numbers, not the authors' best epoch on test)
    group = ["MAP@R", "ΔR@1"]
    assert header == ["method", "backbone / dim",
                      *(f"CUB {c}" for c in ["R@1", "R@2", "R@4", "R@8", *group]),
                      *(f"SOP {c}" for c in ["R@1", "R@10", "R@100", "R@1000", *group])]
    assert list(rows) == ["none", "SEE"]  # one line each, though CUB and SOP recipes differ
    see, plain = rows["SEE"], rows["none"]
    assert see["backbone / dim"] == "deit_small_distilled_patch16_224 / 128"
    # SEE on CUB: R@1 74, 77 -> 75.50 ± 2.12; R@2 76, 79; MAP@R 37, 38.5 -> 37.75 ± 1.06
    sd = math.sqrt(2 * 1.5**2)
    assert see["CUB R@1"] == f"75.50 ± {sd:.2f}" == "75.50 ± 2.12"
    assert see["CUB R@2"] == "77.50 ± 2.12" and see["CUB R@8"] == "81.50 ± 2.12"
    assert see["CUB MAP@R"] == "37.75 ± 1.06"
    # SOP: no SEE 80, 81 -> 80.50 ± 0.71; SEE R@1000 = R@1 + 6: 88, 91
    assert plain["SOP R@1"] == "80.50 ± 0.71" and see["SOP R@1000"] == "89.50 ± 2.12"
    assert [plain[f"{d} ΔR@1"] for d in ("CUB", "SOP")] == ["–"] * 2
    # SEE - none by seed: CUB 4, 5 -> +4.50 [-1.85, +10.85]; SOP 2, 4 -> +3.00 [-9.71, +15.71]
    assert see["CUB ΔR@1"] == _interval([4, 5]) == "+4.50 [-1.85, +10.85]"
    assert see["SOP ΔR@1"] == _interval([2, 4]) == "+3.00 [-9.71, +15.71]"
    assert "ΔR@1: R@1 minus that of the none line" in after
    assert after.startswith("Protocol: the authors' (every training class trains")
    assert "R@1 paper: not shown beside 2 row(s) with a published number" in after
    assert "--checkpoint best_on_test" in after
    assert (tmp_path / "results_paper.md").read_text() == markdown + "\n"
    assert not (tmp_path / "results.md").exists()
    csv = (tmp_path / "results_paper.csv").read_text().splitlines()
    by_method = {line.split(",")[0].strip('"'): dict(zip(csv[0].split(","), line.split(",")))
                 for line in csv[1:]}
    assert by_method["SEE"]["CUB R@1 mean"] == "75.5000"
    assert by_method["SEE"]["SOP ΔR@1 pairs"] == "2"
    assert float(by_method["SEE"]["SOP ΔR@1 low95"]) == pytest.approx(3 - T_975_1, abs=1e-3)


def test_checkpoint_option_chooses_the_metrics_and_says_so(tmp_path, capsys):
    _sweep(tmp_path)
    markdown = make_table.main([str(tmp_path), "--checkpoint", "best_on_test"])
    heading, _, rows, after = _paper_lines(markdown)
    assert heading.startswith("Checkpoint: best epoch on the test classes: the papers' "
                              "protocol, for comparison with published numbers only "
                              "(`--checkpoint best_on_test`, `best_on_test/*` in metrics.json)")
    see = rows["SEE"]
    # best on test, SEE = 3 points above: CUB 77, 80; no SEE 2 above: SEE - none 5, 6
    assert see["CUB R@1"] == "78.50 ± 2.12" and see["CUB R@4"] == "82.50 ± 2.12"
    # published (reporting/published.yaml, DeiT-S / 128 + SEE): CUB 75.1, SOP 83.0
    assert (see["CUB R@1 paper"], see["CUB ΔR@1 paper"]) == ("75.1", "+3.40")
    assert (see["SOP R@1 paper"], see["SOP ΔR@1 paper"]) == ("83.0", "+3.50")
    assert rows["none"]["CUB R@1 paper"] == "–"
    assert "10.1007/978-981-97-2253-2_11" in after
    assert see["CUB ΔR@1"] == _interval([5, 6]) == "+5.50 [-0.85, +11.85]"
    assert "ours: the authors' protocol, best epoch on the test classes)" in after
    # the long layout honours it too, and names it above the table
    markdown = make_table.main([str(tmp_path), "--layout", "long", "--checkpoint", "final"])
    heading, table = markdown.split("\n\n")[:2]
    assert heading == "Checkpoint: final epoch (`--checkpoint final`, `test_final/*` in " \
                      "metrics.json)."
    header, _, *lines = table.splitlines()
    header = _cells(header)
    assert "R@1 final" not in header  # the same numbers as R@1 here
    cub_see = next(dict(zip(header, c)) for c in map(_cells, lines)
                   if c[0] == "CUB200" and c[4] == "SEE")
    assert cub_see["R@1"] == "74.50 ± 2.12" and cub_see["ΔR@1"] == _interval([4, 5])
    capsys.readouterr()


def test_runs_without_the_checkpoint_are_an_error_naming_them(tmp_path, capsys):
    _sweep(tmp_path)
    old = _paper_run(tmp_path / "older", "CUB200", 2, 0.75, see=True, best_on_test=False)
    make_table.main([str(tmp_path)])  # validation-selected: every run has it
    assert "over the n seeds of each dataset's n column" in capsys.readouterr().out
    with pytest.raises(SystemExit) as error:
        make_table.main([str(tmp_path), "--checkpoint", "best_on_test"])
    assert error.value.code == 2  # an error of the user's making, as every tool's
    message = capsys.readouterr().err
    assert message.startswith("error: --checkpoint best_on_test: 1 of 9 runs have no "
                              "'best_on_test/*' metrics in metrics.json:")
    assert f"\n  {old}\n" in message and "choose --checkpoint val or final" in message


def test_seed_counts_that_differ_get_an_n_column(tmp_path):
    _sweep(tmp_path)
    _paper_run(tmp_path / "more", "CUB200", 2, 0.78, see=True)
    _, header, rows, _ = _paper_lines(make_table.main([str(tmp_path)]))
    assert "CUB n" in header and header.index("CUB n") == header.index("CUB MAP@R") + 1
    assert (rows["SEE"]["CUB n"], rows["none"]["CUB n"], rows["SEE"]["SOP n"]) == ("3", "2", "2")
    assert rows["SEE"]["CUB R@1"] == "76.33 ± 2.08"  # 74, 77, 78
    assert rows["SEE"]["CUB ΔR@1"] == "+4.50 [-1.85, +10.85]"  # seed 2 has no pair


def test_long_layout_keeps_the_old_table(tmp_path):
    _sweep(tmp_path)
    markdown = make_table.main([str(tmp_path), "--layout", "long"])
    table, *notes = markdown.split("\n\n")  # no checkpoint line: the default one
    header, _, *lines = table.splitlines()
    assert _cells(header) == ["dataset", "backbone", "dim", "loss", "synthesis", "epochs",
                              "seeds", "R@1", "MAP@R", "RP",
                              "R@1 final", "MAP@R final", "ΔMAP@R", "ΔR@1"]
    rows = [_cells(line) for line in lines]
    assert [(r[0], r[4], r[5]) for r in rows] == [
        ("CUB200", "SEE", "100"), ("CUB200", "none", "100"),
        ("StanfordOnlineProducts", "SEE", "150"), ("StanfordOnlineProducts", "none", "150")]
    assert rows[0][7:9] == ["75.50 ± 2.12", "37.75 ± 1.06"]
    assert rows[0][10] == "74.50 ± 2.12" and rows[0][-1] == "+4.50 [-1.85, +10.85]"
    assert notes[0].startswith("Protocol: the authors'")
    assert (tmp_path / "results.md").exists() and (tmp_path / "results.png").exists()
    assert not (tmp_path / "results_paper.md").exists()


def test_a_setting_at_two_lengths_on_one_dataset_gets_lines_by_epochs(tmp_path):
    _sweep(tmp_path)
    short = _paper_run(tmp_path / "short", "CUB200", 0, 0.5, see=False)
    cfg = yaml.safe_load((short / "config.yaml").read_text())
    cfg["trainer"]["max_epochs"] = 50
    (short / "config.yaml").write_text(yaml.safe_dump(cfg))
    table = make_table.main([str(tmp_path), "--published", "none"]).split("\n\n")[1]
    header, _, *lines = table.splitlines()
    rows = [dict(zip(_cells(header), c)) for c in map(_cells, lines)]
    # none: CUB at 50 and 100 epochs, SOP at 150 (each its own line); SEE: one line as before
    assert [(r["method"], r["epochs"], r["CUB R@1"], r["SOP R@1"]) for r in rows] == [
        ("none", "50", "50.00", "–"), ("none", "100", "71.00 ± 1.41", "–"),
        ("none", "150", "–", "80.50 ± 0.71"), ("SEE", "", "75.50 ± 2.12", "83.50 ± 2.12")]


def test_runs_without_metrics_are_left_out_and_listed(tmp_path, capsys):
    """A sweep with a run still going (or failed): the table is that of the finished runs,
    and stderr lists the others' directories."""
    _sweep(tmp_path)
    before = make_table.main([str(tmp_path)])
    capsys.readouterr()
    failed = _paper_run(tmp_path / "later", "CUB200", 2, 0.9, see=True)
    (failed / "metrics.json").unlink()
    assert make_table.main([str(tmp_path)]) == before
    err = capsys.readouterr().err
    assert err.startswith("\nNot in the table: 1 run(s) without metrics.json")
    assert f"\n  {failed}" in err


def test_long_layout_plot_draws_one_line_per_dataset(tmp_path, monkeypatch):
    """Forced onto a two-dataset sweep, the long layout's plot keeps the datasets apart."""
    import matplotlib.axes

    _sweep(tmp_path)
    labels: list[str] = []
    original = matplotlib.axes.Axes.errorbar

    def spy(self, *args, label=None, **kwargs):
        labels.append(label)
        return original(self, *args, label=label, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", spy)
    make_table.main([str(tmp_path), "--layout", "long"])
    assert sorted(labels) == ["CUB200: proxy_anchor", "CUB200: proxy_anchor + SEE",
                              "StanfordOnlineProducts: proxy_anchor",
                              "StanfordOnlineProducts: proxy_anchor + SEE"]


def test_paper_plot_draws_our_r1_and_marks_the_published_one(tmp_path, monkeypatch):
    import matplotlib.axes

    _sweep(tmp_path)
    bars, ticks = [], []
    bar, scatter = matplotlib.axes.Axes.bar, matplotlib.axes.Axes.scatter

    def spy_bar(self, x, height, *args, label=None, **kwargs):
        bars.append((self.get_title() or "?", label, list(height)))
        return bar(self, x, height, *args, label=label, **kwargs)

    def spy_scatter(self, x, y, *args, **kwargs):
        ticks.append(list(y))
        return scatter(self, x, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "bar", spy_bar)
    monkeypatch.setattr(matplotlib.axes.Axes, "scatter", spy_scatter)
    make_table.main([str(tmp_path), "--checkpoint", "best_on_test"])
    assert (tmp_path / "results_paper.png").stat().st_size > 0
    # a panel per dataset (its title is set after its bars), a bar per method: the means of
    # the table (best on test: CUB none 72 and 74, SEE 77 and 80; SOP none 82 and 83, SEE 85
    # and 88)
    heights = [(label, [round(h, 2) for h in hs]) for _, label, hs in bars]
    assert heights == [("none", [73.0]), ("SEE", [78.5]), ("none", [82.5]), ("SEE", [86.5])]
    # the published R@1 of DeiT-S / 128 with SEE: CUB 75.1, SOP 83.0
    assert [[round(v, 2) for v in t] for t in ticks] == [[75.1], [83.0]]


def test_published_numbers_stand_only_beside_the_authors_protocol(tmp_path):
    """Runs that held out validation classes (protocol=held_out) are not the authors' run:
    even at --checkpoint best_on_test the published column stays empty and says why."""
    for seed, (plain, see) in enumerate(SWEEP["CUB200"]):
        _paper_run(tmp_path, "CUB200", seed, plain, see=False, protocol="held_out")
        _paper_run(tmp_path, "CUB200", seed, see, see=True, protocol="held_out")
    markdown = make_table.main([str(tmp_path), "--layout", "long", "--checkpoint",
                                "best_on_test"])
    heading, table, *notes = markdown.split("\n\n")
    assert "R@1 paper" not in table
    assert notes[0].startswith("Protocol: ours (held-out validation classes choose")
    assert "not shown beside 1 row(s)" in notes[1] and "protocol=authors" in notes[1]
    # runs from before the protocol key: no validation classes + every-epoch test = authors'
    cfg = {"dataset": {"val_fraction": 0.0}, "test_every_epoch": True}
    assert make_table.run_protocol(cfg) == "authors"
    assert make_table.run_protocol({"dataset": {"val_fraction": 0.1},
                                    "test_every_epoch": True}) == "held_out"


def test_a_fixed_nested_seed_and_a_key_added_later_do_not_split_a_cell(tmp_path):
    """A nested seed fixed at 0 (the geometry monitor's class draw) equals the run seed in
    the seed-0 run only, and an older run lacks a key added since (config.ADDED_KEYS): the
    seeds still pool, while a run with another value of that key gets its own row."""
    from see_dml.runtime.config import ADDED_KEYS

    for seed in range(3):
        _run(tmp_path, f"none{seed}", seed, 0.1 + seed / 100)
    for path in sorted(tmp_path.rglob("config.yaml")):
        cfg = yaml.safe_load(path.read_text())
        cfg["callbacks"]["geometry"] = {"seed": 0}
        if cfg["seed"] > 0:  # made after the key existed, with the value of the code before
            cfg["protocol"] = ADDED_KEYS["protocol"]
        path.write_text(yaml.safe_dump(cfg))
    _run(tmp_path, "authors0", 0, 0.3)
    cfg = yaml.safe_load((tmp_path / "authors0" / "config.yaml").read_text())
    cfg["protocol"] = "authors"
    (tmp_path / "authors0" / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = make_table.table_rows(make_table.collect([tmp_path]))
    assert sorted(r["seeds"] for r in rows) == [1, 3]
