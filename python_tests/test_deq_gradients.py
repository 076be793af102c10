"""Gradients through fixed points: implicit (closed form), phantom (tends to it), 1-step (its definition); a
nonlinear cell against finite differences; the regularizers; DEQ over a masked conv cell."""

import pytest
import torch
from torch import nn

from wtext import deq, ops

TIGHT = dict(f_max_iter=400, f_tol=1e-13, f_stop_mode="abs", b_max_iter=400, b_tol=1e-13, b_stop_mode="abs")


class LinearCell(nn.Module):
    """f(z, x) = z A^T + x with ||A||_2 = 0.8: the fixed point is (I - A)^-1 x, per sample."""

    def __init__(self, dim=6, seed=0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        a = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
        self.a = nn.Parameter(0.8 * a / torch.linalg.matrix_norm(a, 2))

    def forward(self, z, x):
        return z @ self.a.T + x


class TanhCell(nn.Module):
    """f(z, x) = tanh(W z + U x), with W scaled to be contractive."""

    def __init__(self, dim=5, in_dim=3, seed=0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        w = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
        self.w = nn.Parameter(0.7 * w / torch.linalg.matrix_norm(w, 2))
        self.u = nn.Parameter(torch.randn(dim, in_dim, generator=generator, dtype=torch.float64))
        self.dim = dim

    def forward(self, z, x):
        return torch.tanh(z @ self.w.T + x @ self.u.T)

    def initial_state(self, x):
        return x.new_zeros(x.shape[0], self.dim)


def closed_form_gradients(cell, x, probe):
    eye = torch.eye(cell.a.shape[0], dtype=torch.float64)
    z = torch.linalg.solve(eye - cell.a, x.T).T
    return torch.autograd.grad((z * probe).sum(), (x, cell.a))


def deq_gradients(layer, x, probe):
    out = layer(x)
    return torch.autograd.grad((out.z * probe).sum(), (x, layer.cell.a))


@pytest.mark.parametrize("solver", ["anderson", "broyden", "fixed_point_iter"])
def test_implicit_gradient_equals_closed_form(solver):
    cell = LinearCell()
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    probe = torch.randn(3, 6, dtype=torch.float64)
    layer = deq.DEQ(cell, deq.DEQConfig(f_solver=solver, b_solver=solver, backward="implicit", **TIGHT))
    for got, want in zip(deq_gradients(layer, x, probe), closed_form_gradients(cell, x, probe)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_implicit_backward_reports_its_adjoint_solve():
    cell = LinearCell()
    x = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    out = deq.DEQ(cell, deq.DEQConfig(**TIGHT))(x)
    assert out.backward_stats == []
    out.z.sum().backward()
    assert len(out.backward_stats) == 1 and out.backward_stats[0].converged.all()


def test_phantom_gradient_tends_to_the_implicit_one():
    cell = LinearCell()
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    probe = torch.randn(3, 6, dtype=torch.float64)
    exact = closed_form_gradients(cell, x, probe)
    errors = []
    for steps in (1, 4, 16, 64):
        layer = deq.DEQ(cell, deq.DEQConfig(backward="phantom", phantom_steps=steps, phantom_tau=0.8, **TIGHT))
        got = deq_gradients(layer, x, probe)
        errors.append(max((g - e).abs().max().item() for g, e in zip(got, exact)))
    assert all(later < earlier for earlier, later in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-6


def test_one_step_gradient_is_the_gradient_of_one_application_at_the_fixed_point():
    cell = TanhCell()
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    probe = torch.randn(4, 5, dtype=torch.float64)
    layer = deq.DEQ(cell, deq.DEQConfig(backward="one_step", **TIGHT))
    got = torch.autograd.grad((layer(x).z * probe).sum(), (x, cell.w, cell.u))
    with torch.no_grad():
        z_star = layer(x).z
    want = torch.autograd.grad((cell(z_star, x) * probe).sum(), (x, cell.w, cell.u))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-12)


def test_nonlinear_fixed_point_and_finite_difference_gradients():
    cell = TanhCell()
    layer = deq.DEQ(cell, deq.DEQConfig(**TIGHT))
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    assert out.stats.converged.all()
    torch.testing.assert_close(cell(out.z, x), out.z, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x, w, u: layer(x).z, (x, cell.w, cell.u), atol=1e-6)


def test_jacobian_regularizer_estimates_the_frobenius_norm():
    torch.manual_seed(0)
    a = torch.randn(6, 6, dtype=torch.float64, requires_grad=True)
    z = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    estimate = deq.jacobian_frobenius(z @ a.T, z, vectors=4000)
    exact = a.square().sum() / 6  # ||J||_F^2 per sample is ||A||_F^2; averaged over z's 4*6 elements
    torch.testing.assert_close(estimate, exact, rtol=0.05, atol=0)
    (grad,) = torch.autograd.grad(estimate, a)
    torch.testing.assert_close(grad, 2 * a.detach() / 6, rtol=0.1, atol=0.02)


def test_deq_output_regularizers_and_correction_states():
    cell = TanhCell()
    config = deq.DEQConfig(f_max_iter=12, f_tol=1e-12, jac_reg_weight=0.5, correction_points=3)
    layer = deq.DEQ(cell, config).train()
    x = torch.randn(4, 3, dtype=torch.float64)
    out = layer(x)
    assert out.jacobian_loss > 0
    torch.testing.assert_close(out.regularization, 0.5 * out.jacobian_loss)
    assert len(out.correction_states) == 3 and all(s.requires_grad for s in out.correction_states)
    loss = out.z.sum() + out.regularization + sum(s.square().mean() for s in out.correction_states)
    loss.backward()
    assert cell.w.grad is not None and torch.isfinite(cell.w.grad).all()
    layer.eval()
    with torch.no_grad():
        out = layer(x)
    assert not out.z.requires_grad and out.correction_states == [] and out.jacobian_loss == 0


class MaskedConvCell(nn.Module):
    """A cell on wtext's masked conv, f(z, x) = tanh(conv(z, W ⊙ M) + x), contractive through W's small scale."""

    def __init__(self, channels=8):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(channels, channels, 3, 3) * 0.05)

    def forward(self, z, x):
        return torch.tanh(ops.masked_conv2d(z, self.weight, None, 7, 0, 0.5, "exact", 1, 1) + x)


@pytest.mark.parametrize("backward", ["implicit", "phantom", "one_step"])
def test_deq_over_a_masked_conv_cell(device, backward):
    cell = MaskedConvCell().to(device)
    layer = deq.DEQ(cell, deq.DEQConfig(backward=backward, f_max_iter=30, f_tol=1e-5, jac_reg_weight=0.1)).train()
    x = torch.randn(2, 8, 6, 6, device=device)
    out = layer(x)
    assert out.stats.converged.all()
    (out.z.square().mean() + out.regularization).backward()
    assert torch.isfinite(cell.weight.grad).all() and cell.weight.grad.abs().sum() > 0
    mask = ops.mask(cell.weight.shape, 7, 0, 0.5, "exact", device=device)
    assert torch.all(cell.weight.grad[mask == 0] == 0)  # pruned weights get no gradient
