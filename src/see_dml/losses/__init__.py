from see_dml.losses.metric_loss import MetricLoss, build_metric_loss

__all__ = ["MetricLoss", "build_metric_loss"]
