from see_dml.losses.hphn import hphn_triplet_loss
from see_dml.losses.metric_loss import MetricLoss, build_metric_loss, full_precision, no_autocast

__all__ = ["MetricLoss", "build_metric_loss", "full_precision", "hphn_triplet_loss", "no_autocast"]
