"""MetricLoss's tools for synthesisers: mining over any points, extra classes, precision."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from see_dml.losses import build_metric_loss


def test_mine_without_a_miner_gives_every_tuple_of_the_loss_kind(make_cfg):
    labels = torch.tensor([0, 0, 1, 1, 2])
    x = F.normalize(torch.randn(5, 8), dim=1)
    contrastive = build_metric_loss(make_cfg("loss=contrastive").loss, 3, 8)
    a1, p, a2, n = contrastive.mine(x, labels)
    assert len(a1) == 4 and len(a2) == 5 * 4 - 4  # ordered positive / negative pairs
    triplet = build_metric_loss(make_cfg("loss=triplet").loss, 3, 8)
    assert triplet.tuple_kind == "triplet" and len(triplet.mine(x, labels)) == 3


def test_extra_classes_are_for_one_call_only(make_cfg):
    criterion = build_metric_loss(make_cfg("loss=proxy_anchor").loss, 3, 8)
    before = criterion.loss.proxies.detach().clone()
    x = torch.randn(4, 8)
    extra = F.normalize(torch.randn(2, 8), dim=1)
    loss = criterion.forward_with_extra_classes(x, torch.tensor([0, 3, 4, 1]), extra)
    assert torch.isfinite(loss)
    assert criterion.loss.num_classes == 3 and criterion.loss.proxies.shape == (3, 8)
    torch.testing.assert_close(criterion.loss.proxies.detach(), before)
    # with no extra class it is the plain loss
    labels = torch.tensor([0, 1, 2, 1])
    torch.testing.assert_close(criterion.forward_with_extra_classes(x, labels, extra[:0]),
                               criterion(x, labels))


def test_half_precision_inputs_are_computed_in_float32(make_cfg):
    criterion = build_metric_loss(make_cfg("loss=proxy_anchor").loss, 3, 8)
    x = torch.randn(6, 8)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    half = criterion(x.bfloat16(), labels)
    assert half.dtype == torch.float32 and criterion.loss.proxies.dtype == torch.float32
    torch.testing.assert_close(half, criterion(x.bfloat16().float(), labels))
    assert criterion.double()(x.double(), labels).dtype == torch.float64
