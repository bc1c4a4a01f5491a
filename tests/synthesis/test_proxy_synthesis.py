"""Proxy Synthesis as a pure function: partners, mixtures, new classes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from see_dml.synthesis import other_class_partners, proxy_synthesis


@pytest.mark.parametrize("labels", [
    [0, 0, 1, 1, 2, 2, 3, 3],            # class-balanced, m = 2
    [5, 5, 5, 5, 1, 1, 1, 1, 9, 9, 9, 9],  # m = 4
    [3, 1, 3, 2, 1, 2],                  # shuffled
    [0, 1, 2, 3],                        # one per class: the authors' roll by one
])
def test_partners_are_of_another_class(labels):
    labels = torch.tensor(labels)
    partners = other_class_partners(labels)
    assert (labels[partners] != labels).all()
    assert sorted(partners.tolist()) == list(range(len(labels)))  # a permutation


def test_mixtures_by_hand():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, dtype=torch.float64, generator=g)
    proxies = torch.randn(3, 6, dtype=torch.float64, generator=g)
    labels = torch.tensor([0, 1, 2, 1])
    partners = torch.tensor([1, 2, 3, 0])
    syn, syn_labels, syn_proxies = proxy_synthesis(x, labels, proxies, 0.5, 0.25, partners)
    assert syn_labels.tolist() == [3, 4]  # floor(4 * 0.5) new classes after the 3 real ones
    xn, pn = F.normalize(x, dim=1), F.normalize(proxies, dim=1)
    torch.testing.assert_close(syn[1], F.normalize(0.25 * xn[1] + 0.75 * xn[2], dim=0))
    torch.testing.assert_close(syn_proxies[0], F.normalize(0.25 * pn[0] + 0.75 * pn[1], dim=0))
    torch.testing.assert_close(syn_proxies[1], F.normalize(0.25 * pn[1] + 0.75 * pn[2], dim=0))
    with pytest.raises(ValueError, match="ratio"):
        proxy_synthesis(x, labels, proxies, 1.5, 0.5)


def test_gradients_reach_embeddings_and_proxies():
    x = torch.randn(6, 8, requires_grad=True)
    proxies = torch.randn(3, 8, requires_grad=True)
    syn, _, syn_proxies = proxy_synthesis(x, torch.tensor([0, 0, 1, 1, 2, 2]), proxies, 1.0, 0.3)
    (syn * syn_proxies).sum().backward()
    assert x.grad.abs().sum() > 0 and proxies.grad.abs().sum() > 0
