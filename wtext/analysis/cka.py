"""Centered kernel alignment (CKA) between layer representations.

linear_cka(x, y): the full-batch linear CKA of Kornblith et al. (2019),
    CKA = ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F),  X_c, Y_c column-centered [n, features].
MinibatchCKA: the estimator of Nguyen et al. (2021): the unbiased HSIC of Song et al. (2012) computed on each
minibatch's linear kernels and summed over batches, CKA = sum HSIC(K, L) / sqrt(sum HSIC(K, K) sum HSIC(L, L)).
It needs no full n x n kernel, so it scales to whole test sets, and converges to linear CKA as data grows.
"""

import torch


def _flat(features: torch.Tensor) -> torch.Tensor:
    return features.reshape(features.shape[0], -1).double()


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear CKA of two representations of the same n inputs: x [n, ...], y [n, ...] (any feature shapes)."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must describe the same inputs; got {x.shape[0]} and {y.shape[0]} rows")
    x, y = _flat(x), _flat(y)
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    cross = (y.T @ x).square().sum()
    return cross / ((x.T @ x).norm() * (y.T @ y).norm())


def unbiased_hsic(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """HSIC_1 of Song et al. (2012) for kernel matrices k, l [n, n], n >= 4 (diagonals are ignored)."""
    n = k.shape[0]
    if n < 4:
        raise ValueError(f"unbiased HSIC needs at least 4 samples per batch; got {n}")
    k = k - torch.diag_embed(torch.diagonal(k))
    l = l - torch.diag_embed(torch.diagonal(l))
    ones = torch.ones(n, dtype=k.dtype, device=k.device)
    trace = (k * l.T).sum()
    middle = (ones @ k @ ones) * (ones @ l @ ones) / ((n - 1) * (n - 2))
    last = 2.0 / (n - 2) * (ones @ k @ l @ ones)
    return (trace + middle - last) / (n * (n - 3))


class MinibatchCKA:
    """Accumulates the CKA matrix between `count` representations over minibatches.

    update([f_0, ..., f_{count-1}]) with each f_i [batch, ...] for the same batch of inputs; value() -> [count, count].
    """

    def __init__(self, count: int):
        self.count = count
        self.hsic = torch.zeros(count, count, dtype=torch.float64)

    def update(self, features: list[torch.Tensor]) -> None:
        if len(features) != self.count:
            raise ValueError(f"expected {self.count} representations, got {len(features)}")
        kernels = [(_flat(f) @ _flat(f).T).cpu() for f in features]
        for i in range(self.count):
            for j in range(i, self.count):
                value = unbiased_hsic(kernels[i], kernels[j])
                self.hsic[i, j] += value
                if i != j:
                    self.hsic[j, i] += value

    def value(self) -> torch.Tensor:
        diagonal = torch.sqrt(torch.diagonal(self.hsic))
        return self.hsic / (diagonal[:, None] * diagonal[None, :])
