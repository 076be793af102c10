"""CKA: identities, invariances, agreement with a direct formula, minibatch convergence, and model features."""

import pytest
import torch

from wtext.analysis import MinibatchCKA, application_outputs, cka_matrix, linear_cka, unbiased_hsic
from wtext.deq import DEQConfig
from wtext.models import TiedResNet, TiedResNetConfig, TiedViT, TiedViTConfig
from wtext.nn import MaskSpec


def direct_linear_cka(x, y):
    """CKA from its HSIC definition with explicit centering matrices: HSIC(K, L) = tr(K H L H) / (n - 1)^2."""
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - torch.full((n, n), 1.0 / n, dtype=torch.float64)
    k, l = x @ x.T, y @ y.T

    def hsic(a, b):
        return torch.trace(a @ h @ b @ h) / (n - 1) ** 2

    return hsic(k, l) / torch.sqrt(hsic(k, k) * hsic(l, l))


def test_cka_of_a_representation_with_itself_is_one():
    x = torch.randn(50, 20, dtype=torch.float64)
    torch.testing.assert_close(linear_cka(x, x), torch.tensor(1.0, dtype=torch.float64))


def test_invariance_to_orthogonal_transforms_and_isotropic_scaling():
    x, y = torch.randn(60, 12, dtype=torch.float64), torch.randn(60, 9, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(12, 12, dtype=torch.float64))
    base = linear_cka(x, y)
    torch.testing.assert_close(linear_cka(x @ q, y), base)
    torch.testing.assert_close(linear_cka(3.7 * x, 0.2 * y), base)
    assert not torch.isclose(linear_cka(x * torch.linspace(0.1, 5, 12, dtype=torch.float64), y), base)


def test_agreement_with_the_direct_formula():
    for seed in range(3):
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(40, 15, generator=generator, dtype=torch.float64)
        y = x[:, :8] @ torch.randn(8, 6, generator=generator, dtype=torch.float64) + \
            0.5 * torch.randn(40, 6, generator=generator, dtype=torch.float64)
        torch.testing.assert_close(linear_cka(x, y), direct_linear_cka(x, y))


def test_unbiased_hsic_is_unbiased_for_independent_data():
    estimates = [unbiased_hsic(*(lambda a, b: (a @ a.T, b @ b.T))(torch.randn(30, 5, dtype=torch.float64),
                                                                    torch.randn(30, 5, dtype=torch.float64)))
                 for _ in range(300)]
    mean, spread = torch.stack(estimates).mean(), torch.stack(estimates).std() / 300 ** 0.5
    assert abs(mean) < 4 * spread


def test_minibatch_cka_converges_to_the_full_batch_value():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 10, generator=generator, dtype=torch.float64)
    y = torch.tanh(x @ torch.randn(10, 10, generator=generator, dtype=torch.float64)) + \
        0.3 * torch.randn(4000, 10, generator=generator, dtype=torch.float64)
    full = linear_cka(x, y)
    errors = []
    for batches in (2, 20, 80):
        accumulator = MinibatchCKA(2)
        for chunk in torch.arange(4000).chunk(batches):
            accumulator.update([x[chunk], y[chunk]])
        errors.append(abs(accumulator.value()[0, 1] - full).item())
        torch.testing.assert_close(torch.diagonal(accumulator.value()), torch.ones(2, dtype=torch.float64))
    assert errors[0] < 0.02 and errors[-1] < 0.05


def test_features_of_every_application_and_cka_matrix():
    model = TiedResNet(TiedResNetConfig(width=8, depth=3, stages=2, groups=4, mask=MaskSpec(mode="multi")))
    images = torch.randn(8, 3, 16, 16)
    names, outputs = application_outputs(model, images)
    assert names == [f"stage{s}.application{a}" for s in range(2) for a in range(3)]
    assert outputs[0].shape == (8, 8, 16, 16) and outputs[-1].shape == (8, 16, 8, 8)
    loader = [(torch.randn(16, 3, 16, 16), None) for _ in range(3)]
    names, matrix = cka_matrix(model, loader)
    assert matrix.shape == (6, 6)
    torch.testing.assert_close(matrix, matrix.T)
    torch.testing.assert_close(torch.diagonal(matrix), torch.ones(6, dtype=torch.float64))
    vit = TiedViT(TiedViTConfig(dim=16, heads=2, depth=4, image_size=16))
    names, outputs = application_outputs(vit, images)
    assert names == [f"application{a}" for a in range(4)]


def test_features_of_a_deq_twin_are_its_solver_iterates():
    model = TiedResNet(TiedResNetConfig(width=8, depth=3, stages=1, groups=4, deq=DEQConfig(f_max_iter=5)))
    names, outputs = application_outputs(model, torch.randn(4, 3, 16, 16))
    assert names == [f"stage0.iterate{k}" for k in range(1, 5)]


def test_cka_input_errors():
    with pytest.raises(ValueError, match=r"same inputs; got 5 and 6 rows"):
        linear_cka(torch.randn(5, 3), torch.randn(6, 3))
    with pytest.raises(ValueError, match=r"at least 4 samples"):
        MinibatchCKA(1).update([torch.randn(3, 2)])
