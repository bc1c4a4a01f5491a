"""MetricLoss from the loss configs: Proxy-Anchor against the paper, class directions, miner."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from see_dml.losses import MetricLoss, build_metric_loss

B, C, D = 12, 5, 8


def paper_proxy_anchor(x: torch.Tensor, y: torch.Tensor, proxies: torch.Tensor, alpha: float,
                       delta: float) -> torch.Tensor:
    """Kim et al. (CVPR 2020), eq. 4, written out term by term with cosine similarity s.

    ``L = 1/|P+| sum_{p in P+} log(1 + sum_{x in X_p+} exp(-alpha (s(x, p) - delta)))
        + 1/|P|  sum_{p in P}  log(1 + sum_{x in X_p-} exp( alpha (s(x, p) + delta)))``
    """
    x, proxies = F.normalize(x, dim=1), F.normalize(proxies, dim=1)
    pos_terms, neg_terms = [], []
    for p in range(len(proxies)):
        s = x @ proxies[p]
        positives, negatives = s[y == p], s[y != p]
        if len(positives):  # p in P+: proxies with a positive in the batch
            pos_terms.append(torch.log1p(torch.exp(-alpha * (positives - delta)).sum()))
        neg_terms.append(torch.log1p(torch.exp(alpha * (negatives + delta)).sum()))
    return torch.stack(pos_terms).mean() + torch.stack(neg_terms).mean()


def build(make_cfg, loss: str, num_classes: int = C, embed_dim: int = D) -> MetricLoss:
    return build_metric_loss(make_cfg(f"loss={loss}").loss, num_classes, embed_dim)


def test_proxy_anchor_matches_the_paper_formula(make_cfg):
    torch.manual_seed(0)
    criterion = build(make_cfg, "proxy_anchor").double()
    assert criterion.loss.alpha == 32 and criterion.loss.margin == 0.1  # the config's values
    x = torch.randn(B, D, dtype=torch.float64) * 3  # not unit: the loss must normalise
    # class 4 has no sample in the batch: |P+| = 4 < |P| = 5
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    proxies = criterion.loss.proxies.detach()
    assert proxies.shape == (C, D) and proxies.dtype == torch.float64
    expected = paper_proxy_anchor(x, y, proxies, alpha=32.0, delta=0.1)
    got = criterion(x, y)
    assert got.dtype == torch.float64
    assert abs(got.item() - expected.item()) < 1e-10, (got.item(), expected.item())
    # the proxies are what is compared: other proxies, another value
    with torch.no_grad():
        criterion.loss.proxies.mul_(-1)
    assert abs(criterion(x, y).item() - expected.item()) > 1e-3


def test_proxy_anchor_gradient_reaches_embeddings_and_proxies(make_cfg):
    torch.manual_seed(1)
    criterion = build(make_cfg, "proxy_anchor").double()
    x = torch.randn(B, D, dtype=torch.float64, requires_grad=True)
    y = torch.arange(B) % C
    criterion(x, y).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert criterion.loss.proxies.grad.abs().sum() > 0
    assert criterion.lr_multiplier == 100  # proxies learn at lr x 100 (the config)
    assert [p is criterion.loss.proxies for p in criterion.parameters()] == [True]


@pytest.mark.parametrize("loss", ["proxy_anchor", "norm_softmax", "arcface"])
@pytest.mark.parametrize("num_classes", [C, D])  # C == d is ambiguous by shape alone
def test_class_directions_are_unit_class_rows(make_cfg, loss, num_classes):
    torch.manual_seed(2)
    criterion = build(make_cfg, loss, num_classes=num_classes)
    assert criterion.kind == "proxy"
    directions = criterion.class_directions()
    assert directions.shape == (num_classes, D)
    torch.testing.assert_close(directions.norm(dim=1), torch.ones(num_classes))
    if loss == "proxy_anchor":
        stored = criterion.loss.proxies  # (C, d)
    else:
        stored = criterion.loss.W.t()  # the softmax family stores (d, C)
        assert criterion.loss.W.shape == (D, num_classes)
    torch.testing.assert_close(directions, F.normalize(stored.detach(), dim=1))
    # row c is class c: the class whose logit it maximises
    x = directions[[3, 1]] * 5
    logits = x @ F.normalize(stored.detach(), dim=1).t()
    assert logits.argmax(1).tolist() == [3, 1]


@pytest.mark.parametrize("loss", ["multi_similarity", "contrastive", "triplet"])
def test_pair_losses_have_no_class_directions(make_cfg, loss):
    criterion = build(make_cfg, loss)
    assert criterion.kind == "pair"
    assert criterion.class_directions() is None
    assert list(criterion.parameters()) == []


def test_multi_similarity_uses_its_miner(make_cfg):
    torch.manual_seed(3)
    criterion = build(make_cfg, "multi_similarity")
    assert criterion.miner is not None
    calls = []
    criterion.miner.register_forward_hook(lambda mod, args, out: calls.append(out))
    x = F.normalize(torch.randn(B, D), dim=1)
    y = torch.arange(B) % 4
    got = criterion(x, y)
    assert len(calls) == 1
    mined = calls[0]  # (anchor, positive, anchor, negative) indices
    n_pairs = len(mined[0]) + len(mined[2])
    all_pairs = B * (B - 1)  # ordered positive + negative pairs
    assert 0 < n_pairs < all_pairs  # the miner dropped easy pairs
    torch.testing.assert_close(got, criterion.loss(x, y, mined))
    assert abs(got.item() - criterion.loss(x, y).item()) > 1e-4  # unmined differs
    # a given tuple bypasses the miner
    criterion(x, y, indices_tuple=mined)
    assert len(calls) == 1
