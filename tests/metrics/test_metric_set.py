"""The metric set (config group ``metrics``): its keys, its search width, and the one place
every display takes metric names and their order from."""

from __future__ import annotations

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from see_dml.metrics.metric_set import (
    HEADLINE,
    MetricSet,
    display_name,
    metric_rank,
    shown_metrics,
)


def test_the_default_set_is_the_metrics_of_before():
    """recall@K at the data's Ks, precision@1, MAP@R, R-Precision: what metrics.json held
    before the set was configurable."""
    assert MetricSet().names((1, 2, 4, 8)) == [
        "recall@1", "recall@2", "recall@4", "recall@8", "precision@1", "map@r", "r_precision"]
    assert MetricSet().resolved((8, 1, 2)).recall_at == (1, 2, 8)
    assert MetricSet(recall_at=[4]).resolved((1, 2)).recall_at == (4,)  # its own Ks win
    ms = MetricSet(precision_at=[10, 1, 10], map_at=[5], map_at_r=False, nmi=True)
    assert ms.precision_at == (1, 10) and ms.map_at == (5,)  # sorted, distinct tuples
    assert ms.names((1,)) == ["recall@1", "precision@1", "precision@10", "map@5",
                              "r_precision", "nmi"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"precision_at": [0]}, "precision_at=[0]: must be a list of positive integers"),
    ({"map_at": [2, -1]}, "map_at=[2, -1]: must be a list of positive integers"),
    ({"recall_at": [1.5]}, "recall_at=[1.5]"),
    ({"precision_at": [True]}, "precision_at=[True]"),
    ({"precision_at": 10}, "precision_at=10"),
    ({"precision_at": "10"}, "precision_at='10'"),
    ({"nmi": "yes"}, "nmi='yes': must be true or false"),
])
def test_a_bad_value_names_its_field(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        MetricSet(**kwargs)


def test_one_function_decides_the_width():
    """The largest K of any metric, the largest R only when a metric reads R neighbours,
    capped at the references there are, never 0."""
    assert MetricSet(recall_at=(1, 8)).width(max_r=30, available=1000) == 30
    assert MetricSet(recall_at=(1, 8), precision_at=(50,)).width(30, 1000) == 50
    assert MetricSet(recall_at=(1,), map_at=(100,)).width(30, 60) == 60  # capped
    no_r = MetricSet(recall_at=(1, 8), map_at_r=False, r_precision=False)
    assert no_r.width(max_r=500, available=1000) == 8
    assert MetricSet(recall_at=(), precision_at=(), map_at_r=False,
                     r_precision=False).width(500, 1000) == 1


def test_from_config_reads_the_node_and_old_configs():
    node = OmegaConf.create({"metrics": {"_target_": "see_dml.metrics.MetricSet",
                                         "recall_at": None, "precision_at": [1, 10],
                                         "map_at": [10], "map_at_r": True,
                                         "r_precision": False, "nmi": False}})
    assert MetricSet.from_config(node) == MetricSet(precision_at=(1, 10), map_at=(10,),
                                                    r_precision=False)
    # a config from before the metrics group: the defaults, and its top-level nmi switch
    assert MetricSet.from_config(OmegaConf.create({"nmi": True})) == MetricSet(nmi=True)
    assert MetricSet.from_config({"metrics": {"precision_at": [3]}}).precision_at == (3,)
    assert MetricSet.from_config(None) == MetricSet()


def test_display_names_and_order_are_defined_once():
    assert [display_name(k) for k in ("recall@1", "precision@10", "map@10", "map@r",
                                      "r_precision", "nmi", "num_queries")] == [
        "R@1", "P@10", "mAP@10", "MAP@R", "RP", "NMI", "num_queries"]
    keys = ["nmi", "r_precision", "map@r", "map@10", "precision@10", "precision@1",
            "recall@8", "recall@1", "num_queries", "num_excluded_queries", "skipped_images",
            "epoch"]
    # precision@1 equals recall@1: shown once; counts are no metric
    assert shown_metrics(keys) == ["recall@1", "recall@8", "precision@10", "map@10", "map@r",
                                   "r_precision", "nmi"]
    assert shown_metrics(["precision@1", "map@r"]) == ["precision@1", "map@r"]  # no recall@1
    assert metric_rank("recall@100") == (0, 100) and metric_rank("best_checkpoint") is None
    assert set(HEADLINE) <= set(MetricSet().names((1,)))


def test_importing_the_metric_set_loads_no_search():
    """The config checks and the tables read the metric set; torch and faiss load with the
    search only."""
    code = ("import sys; from see_dml.metrics import MetricSet, display_name; "
            "from see_dml.metrics.metric_set import shown_metrics; "
            "print(sorted(m for m in ('torch', 'faiss', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
