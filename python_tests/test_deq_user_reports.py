"""Problems users reported against other DEQ libraries, as specifications of wtext's DEQ layer:

- torchdeq#4: in eval mode with grad enabled the fixed point still has gradients, the same as in train mode;
- torchdeq#12: stop_mode="rel" at a loose tolerance stops each sample at its first iterate under the tolerance;
- torchdeq#10: the Jacobian regularizer keeps its gradient under torch.compile (or wtext says it cannot);
- locuslab/deq#20: Anderson on singular or near-singular systems neither raises nor returns non-finite values.

Every expected value comes from plain PyTorch (closed-form adjoints, hand-written iterations), not from wtext.
"""

import pytest
import torch
from torch import nn

from test_deq_gradients import TanhCell  # tanh(z W^T + x U^T), float64, ||W||_2 = 0.7
from wtext import deq

TIGHT_FORWARD = dict(f_max_iter=200, f_tol=1e-13, f_stop_mode="abs")
TIGHT_BACKWARD = dict(b_max_iter=200, b_tol=1e-13, b_stop_mode="abs")


class CountingCell(nn.Module):
    """A cell with a count of its calls."""

    def __init__(self, cell):
        super().__init__()
        self.inner, self.calls = cell, 0

    def forward(self, z, x):
        self.calls += 1
        return self.inner(z, x)

    def initial_state(self, x):
        return self.inner.initial_state(x)


def plain_fixed_point(cell, x, steps=300):
    """z* by plain iteration from zeros (the cells here contract by <= 0.7: 300 steps reach float64 rounding)."""
    with torch.no_grad():
        z = cell.initial_state(x)
        for _ in range(steps):
            z = cell(z, x)
    return z


# -- torchdeq#4: gradients in eval mode --------------------------------------------------------------------------

PHANTOM_STEPS, PHANTOM_TAU, REV_BETA, COUPLED_STEPS = 4, 0.6, 0.5, 15


def config_for(backward):
    """Each mode with the options it reads; the coupled modes get only f_max_iter / f_tol and rev_beta."""
    if backward in ("reversible", "unrolled"):
        return deq.DEQConfig(backward=backward, f_max_iter=COUPLED_STEPS, f_tol=1e-12, rev_beta=REV_BETA)
    if backward == "implicit":
        return deq.DEQConfig(backward=backward, **TIGHT_FORWARD, **TIGHT_BACKWARD)
    if backward == "phantom":
        return deq.DEQConfig(backward=backward, phantom_steps=PHANTOM_STEPS, phantom_tau=PHANTOM_TAU,
                             **TIGHT_FORWARD)
    return deq.DEQConfig(backward=backward, **TIGHT_FORWARD)


def reference_output(backward, cell, x):
    """The tensor whose gradient each backward mode gives, built in plain PyTorch (None for an unknown mode)."""
    if backward in ("reversible", "unrolled"):  # the coupled iteration from y_0 = z_0 = 0, back-propagated
        y = z = cell.initial_state(x)
        for _ in range(COUPLED_STEPS):
            y = (1 - REV_BETA) * y + REV_BETA * cell(z, x)
            z = (1 - REV_BETA) * z + REV_BETA * cell(y, x)
        return z
    z_star = plain_fixed_point(cell, x)
    if backward == "one_step":
        return cell(z_star, x)
    if backward == "phantom":
        z = z_star
        for _ in range(PHANTOM_STEPS):
            z = (1 - PHANTOM_TAU) * z + PHANTOM_TAU * cell(z, x)
        return z
    return None


def implicit_reference_gradients(cell, x, probe):
    """probe^T dz*/d(x, W, U) by the implicit function theorem: v = (I - J)^-T probe per sample, with
    J = diag(1 - z*^2) W the cell's Jacobian at z*, then v^T df/d(x, W, U) by one backward through f."""
    z_star = plain_fixed_point(cell, x)
    eye = torch.eye(cell.dim, dtype=torch.float64)
    jacobian = (1 - z_star.square())[:, :, None] * cell.w.detach()[None]
    adjoint = torch.linalg.solve((eye - jacobian).transpose(1, 2), probe[:, :, None])[:, :, 0]
    return torch.autograd.grad((cell(z_star, x) * adjoint).sum(), (x, cell.w, cell.u))


def gradients_of(layer, x, probe, training):
    layer.train(training)
    out = layer(x)
    assert out.z.requires_grad, f"training={training}: the fixed point has no graph"
    return torch.autograd.grad((out.z * probe).sum(), (x, layer.cell.w, layer.cell.u))


@pytest.mark.parametrize("backward", deq.BACKWARD_MODES)
def test_eval_mode_with_grad_enabled_gives_the_train_mode_gradients(backward):
    """layer.eval() only changes the training-time extras (regularizers, correction states): with grad enabled the
    fixed point is still differentiable, with respect to x and the cell's parameters, exactly as in train mode, and
    both equal the plain-PyTorch gradient of what the mode differentiates."""
    cell = TanhCell()
    layer = deq.DEQ(cell, config_for(backward))
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    probe = torch.randn(3, 5, generator=generator, dtype=torch.float64)

    train = gradients_of(layer, x, probe, training=True)
    evaluation = gradients_of(layer, x, probe, training=False)
    for name, got, want in zip(("x", "W", "U"), evaluation, train):
        assert got.abs().sum() > 0, f"{backward}: eval-mode gradient of {name} is zero"
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12, msg=lambda m: f"{backward}, d/d{name}: {m}")

    if backward == "implicit":
        expected = implicit_reference_gradients(cell, x, probe)
    else:
        reference = reference_output(backward, cell, x)
        if reference is None:
            return  # a mode this file has no plain-PyTorch reference for: the eval == train check above still ran
        expected = torch.autograd.grad((reference * probe).sum(), (x, cell.w, cell.u))
    for name, got, want in zip(("x", "W", "U"), evaluation, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-9, msg=lambda m: f"{backward}, d/d{name}: {m}")


# -- torchdeq#12: stop_mode="rel" honoured at a loose tolerance ------------------------------------------------------

LOOSE_TOL, BUDGET = 0.1, 60


def relative_residual(cell, z, x):
    """|f(z) - z| / |f(z)| per sample, computed here, not by wtext."""
    with torch.no_grad():
        fz = cell(z, x)
    return (fz - z).flatten(1).norm(dim=1) / fz.flatten(1).norm(dim=1)


def loose_problem():
    """A tanh cell whose W is symmetric with eigenvalues spread over [-0.9, 0.9] (plain iteration oscillates and
    crawls), and four samples of growing input scale: each solver stops them at different steps (3 to 7)."""
    cell = TanhCell(dim=16, in_dim=4, seed=2)
    generator = torch.Generator().manual_seed(2)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=generator, dtype=torch.float64))
    with torch.no_grad():
        cell.w.copy_(q @ torch.diag(torch.linspace(-0.9, 0.9, 16, dtype=torch.float64)) @ q.T)
    scale = torch.tensor([[0.05], [0.2], [0.5], [1.5]], dtype=torch.float64)
    x = scale * torch.randn(4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return cell, x


@pytest.mark.parametrize("solver", ["anderson", "broyden", "fixed_point_iter"])
def test_relative_stop_mode_stops_each_sample_at_its_first_iterate_under_a_loose_tolerance(solver):
    """With f_tol=0.1 in "rel" mode each sample stops at the first iterate whose |f(z) - z| / |f(z)| <= 0.1: the
    trace is above the tolerance before that step and NaN after it, stats.steps is that step + 1, and the returned z
    is that iterate (its independently computed relative residual is the trace's value there, not the much smaller
    one of a solve that ran on)."""
    cell, x = loose_problem()
    layer = deq.DEQ(cell, deq.DEQConfig(f_solver=solver, f_max_iter=BUDGET, f_tol=LOOSE_TOL, f_stop_mode="rel"))
    with torch.no_grad():
        out = layer(x)
    stats = out.stats
    assert stats.stop_mode == "rel" and stats.tol == LOOSE_TOL
    assert stats.converged.all()
    assert len(set(stats.steps.tolist())) > 1, "the samples must stop at different steps"
    independent = relative_residual(cell, out.z, x)
    for sample in range(x.shape[0]):
        steps = int(stats.steps[sample])
        trace = stats.trace[sample]
        assert 2 <= steps < BUDGET, (solver, sample, steps)  # step 0 has relative residual 1: never a stop
        assert trace[steps - 1] <= LOOSE_TOL, (solver, sample, trace[:steps])
        assert (trace[: steps - 1] > LOOSE_TOL).all(), (solver, sample, trace[:steps])
        assert torch.isnan(trace[steps:]).all(), (solver, sample, trace)
        assert independent[sample] <= LOOSE_TOL
        torch.testing.assert_close(independent[sample], trace[steps - 1], rtol=1e-6, atol=0)
        torch.testing.assert_close(stats.lowest[sample], trace[steps - 1], rtol=0, atol=0)


@pytest.mark.parametrize("solver", ["anderson", "broyden", "fixed_point_iter"])
def test_relative_stop_with_check_every_one_ends_the_solve_when_the_last_sample_stops(solver):
    """With f_check_every=1 the solve ends at the first iteration after which every sample has stopped:
    stats.iterations (and the calls of the cell) equal the largest stats.steps, not f_max_iter, and the result is
    the full-budget solve's."""
    cell, x = loose_problem()
    results = {}
    for every in (0, 1):
        counting = CountingCell(cell)
        config = deq.DEQConfig(f_solver=solver, f_max_iter=BUDGET, f_tol=LOOSE_TOL, f_stop_mode="rel",
                               f_check_every=every)
        with torch.no_grad():
            results[every] = deq.DEQ(counting, config)(x), counting.calls
    (full, full_calls), (early, early_calls) = results[0], results[1]
    last = int(early.stats.steps.max())
    assert last < BUDGET
    assert early.stats.iterations == early_calls == last
    assert full.stats.iterations == full_calls == BUDGET
    assert torch.equal(early.z, full.z) and torch.equal(early.stats.steps, full.stats.steps)
    torch.testing.assert_close(early.stats.trace, full.stats.trace, equal_nan=True, rtol=0, atol=0)


def test_relative_stop_statistics_do_not_depend_on_grad_mode():
    """The forward solve is the same with grad enabled (training) and without: same stop steps and trace."""
    cell, x = loose_problem()
    layer = deq.DEQ(cell, deq.DEQConfig(f_max_iter=BUDGET, f_tol=LOOSE_TOL, f_stop_mode="rel")).train()
    with torch.no_grad():
        inference = layer(x)
    training = layer(x)
    assert torch.equal(training.stats.steps, inference.stats.steps)
    torch.testing.assert_close(training.stats.trace, inference.stats.trace, equal_nan=True, rtol=0, atol=0)
    assert (training.stats.steps < BUDGET).all()


# -- torchdeq#10: the Jacobian regularizer under torch.compile -------------------------------------------------------

def regularized_gradients(layer, x, probe, seed):
    """(jacobian_loss, its gradient, the gradient of a training loss (z * probe).sum() + regularization), with
    respect to the cell's W and U, from one forward pass."""
    torch.manual_seed(seed)  # the Hutchinson probe is drawn inside the forward pass
    out = layer(x)
    parameters = (layer.cell.w, layer.cell.u)
    assert out.jacobian_loss.requires_grad
    regularizer = torch.autograd.grad(out.jacobian_loss, parameters, retain_graph=True)
    total = torch.autograd.grad((out.z * probe).sum() + out.regularization, parameters)
    return out.jacobian_loss.detach(), regularizer, total


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_jacobian_regularizer_keeps_its_gradient_under_torch_compile(backend):
    """torch.compile(layer) in train mode with jac_reg_weight > 0: the regularizer's gradient with respect to the
    cell's parameters is non-zero and equal to the eager one, and so is that of a training loss adding the
    regularization to a loss on z. The acceptable alternative is a clear error from wtext naming the Jacobian
    regularizer (jac_reg_weight) -- never a zero or wrong gradient, nor an error from deep inside PyTorch's backward
    that does not say what to change."""
    torch._dynamo.reset()
    cell = TanhCell()
    layer = deq.DEQ(cell, deq.DEQConfig(jac_reg_weight=0.5, f_max_iter=30, f_tol=1e-10)).train()
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(3, 3, generator=generator, dtype=torch.float64)
    probe = torch.randn(3, 5, generator=generator, dtype=torch.float64)
    eager_loss, eager_regularizer, eager_total = regularized_gradients(layer, x, probe, seed=5)
    assert eager_loss > 0 and all(g.abs().sum() > 0 for g in eager_regularizer)

    compiled = torch.compile(layer, backend=backend)
    try:
        loss, regularizer, total = regularized_gradients(compiled, x, probe, seed=5)
    except Exception as error:  # noqa: BLE001  (any error must at least name what to change)
        message = str(error)
        assert "jac_reg_weight" in message and "compile" in message, (
            f"torch.compile ({backend}) of a DEQ with jac_reg_weight > 0 failed with an error that does not name "
            f"the Jacobian regularizer: {type(error).__name__}: {message}")
        return
    torch.testing.assert_close(loss, eager_loss, rtol=1e-10, atol=0)
    for what, got_grads, want_grads in (("regularizer", regularizer, eager_regularizer),
                                        ("training loss", total, eager_total)):
        for name, got, want in zip(("W", "U"), got_grads, want_grads):
            assert got.abs().sum() > 0, f"{backend}: zero {what} gradient for {name}"
            torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-12,
                                       msg=lambda m: f"{backend}, {what}, d/d{name}: {m}")


# -- locuslab/deq#20: Anderson on singular and near-singular systems ------------------------------------------------

DTYPES = [torch.float32, torch.float64]


def assert_finite_solve(z, stats, max_iter):
    """No NaN/inf in the result, and the statistics finite wherever they are defined (the trace up to each
    sample's stop; NaN after it is by design)."""
    assert torch.isfinite(z).all()
    assert ((stats.steps >= 1) & (stats.steps <= max_iter)).all()
    assert torch.isfinite(stats.lowest).all()
    assert not stats.nonfinite.any()
    for sample, steps in enumerate(stats.steps.tolist()):
        assert torch.isfinite(stats.trace[sample, :steps]).all(), stats.trace[sample]
        assert torch.isnan(stats.trace[sample, steps:]).all()


def random_state(shape, dtype, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stop_mode", ["abs", "rel"])
def test_anderson_on_the_identity_map_stops_at_once_with_the_start(dtype, stop_mode):
    """f(z) = z: every residual is zero (an all-zero, singular Gram matrix). The solve stops at step 1 with the
    starting iterate, converged."""
    z0 = random_state((3, 8), dtype, seed=0)
    z, stats = deq.get_solver("anderson")(lambda z: z.clone(), z0, max_iter=20, tol=1e-6, stop_mode=stop_mode)
    assert_finite_solve(z, stats, 20)
    assert torch.equal(z, z0)
    assert (stats.steps == 1).all() and stats.converged.all() and (stats.lowest == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lam", [0.0, 1e-4])
def test_anderson_with_identical_residuals_every_step_stays_finite(dtype, lam):
    """f(z) = z + c: the residual is c at every iterate, so every Gram matrix is c^T c times all-ones (rank one:
    singular without regularization, lam = 0). There is no fixed point: the solve runs its budget, never reports
    convergence or divergence, stays finite, and its lowest residual is |c|."""
    z0 = random_state((3, 8), dtype, seed=1)
    shift = random_state((3, 8), dtype, seed=2)
    z, stats = deq.get_solver("anderson")(lambda z: z + shift, z0, max_iter=20, tol=1e-6, stop_mode="abs", lam=lam)
    assert_finite_solve(z, stats, 20)
    assert (stats.steps == 20).all() and not stats.converged.any() and not stats.diverged.any()
    torch.testing.assert_close(stats.lowest, shift.flatten(1).norm(dim=1).to(stats.lowest.dtype),
                               rtol=1e-5, atol=0)


def near_singular_map(dtype, dim=12, batch=3, spread=True, seed=3):
    """f(z) = A z + b with eigenvalues of A at 0.999999 (all of them, or half of them and the rest spread over
    [0.5, 0.99]): I - A is nearly singular and successive residuals are nearly parallel."""
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    spectrum = torch.full((dim,), 0.999999, dtype=torch.float64)
    if spread:
        spectrum[: dim // 2] = torch.linspace(0.5, 0.99, dim // 2, dtype=torch.float64)
    a = (q @ torch.diag(spectrum) @ q.T).to(dtype)
    b = torch.randn(batch, dim, generator=generator, dtype=torch.float64).to(dtype)
    return (lambda z: z @ a.T + b), b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spread", [False, True])
@pytest.mark.parametrize("stop_mode", ["abs", "rel"])
def test_anderson_on_an_ill_conditioned_linear_map_stays_finite(dtype, spread, stop_mode):
    """f(z) = A z + b with eigenvalues 0.999999: no exception, finite iterates and statistics, no sample reported
    non-finite; the returned iterate's residual (computed here) is the lowest one the trace recorded."""
    f, b = near_singular_map(dtype, spread=spread)
    z, stats = deq.get_solver("anderson")(f, torch.zeros_like(b), max_iter=40, tol=1e-8, stop_mode=stop_mode)
    assert_finite_solve(z, stats, 40)
    residual = (f(z) - z).double().flatten(1).norm(dim=1)
    if stop_mode == "rel":
        residual = residual / (f(z).double().flatten(1).norm(dim=1) + 1e-8)
    torch.testing.assert_close(residual, stats.lowest.double(), rtol=1e-3 if dtype == torch.float32 else 1e-8,
                               atol=1e-6 if dtype == torch.float32 else 1e-12)
    assert stats.trace.nan_to_num(float("inf")).amin(dim=1).le(stats.lowest).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_anderson_on_a_constant_map_converges_in_two_steps(dtype):
    """f(z) = c: the second iterate is c itself, whose residual is exactly zero (a zero Gram row next to a non-zero
    one). No exception, and z = c."""
    z0 = random_state((3, 8), dtype, seed=4)
    constant = random_state((3, 8), dtype, seed=5)
    z, stats = deq.get_solver("anderson")(lambda z: constant.clone(), z0, max_iter=10, tol=1e-6, stop_mode="rel")
    assert_finite_solve(z, stats, 10)
    assert torch.equal(z, constant)
    assert (stats.steps == 2).all() and stats.converged.all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stop_mode", ["abs", "rel"])
def test_anderson_keeps_a_sample_that_starts_at_its_fixed_point_while_the_others_iterate(dtype, stop_mode):
    """A batch where sample 0 starts exactly at its (non-zero) fixed point p: f(z) = A (z - p) + p with f(p) = p in
    floating point. Sample 0 stops at step 1 with z = p; the others, with the same ill-conditioned A, iterate on and
    stay finite."""
    f_linear, _ = near_singular_map(dtype, batch=3)
    fixed_points = random_state((3, 12), dtype, seed=6)

    def f(z):
        return f_linear(z - fixed_points) - f_linear(torch.zeros_like(z)) + fixed_points

    z0 = torch.zeros_like(fixed_points)
    z0[0] = fixed_points[0]
    assert torch.equal(f(z0)[0], fixed_points[0])  # the premise: sample 0 is exactly at its fixed point
    z, stats = deq.get_solver("anderson")(f, z0, max_iter=30, tol=1e-8, stop_mode=stop_mode)
    assert_finite_solve(z, stats, 30)
    assert torch.equal(z[0], fixed_points[0])
    assert stats.steps[0] == 1 and stats.converged[0] and stats.lowest[0] == 0
    assert (stats.steps[1:] > 1).all()


class NearSingularCell(nn.Module):
    """f(z, x) = z A^T + x U^T with eigenvalues of A at 0.999999 (half of them): a DEQ whose forward and adjoint
    systems are both nearly singular."""

    def __init__(self, dtype, dim=12, in_dim=4):
        super().__init__()
        generator = torch.Generator().manual_seed(7)
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
        spectrum = torch.linspace(0.5, 0.999999, dim, dtype=torch.float64)
        spectrum[dim // 2:] = 0.999999
        self.a = nn.Parameter((q @ torch.diag(spectrum) @ q.T).to(dtype))
        self.u = nn.Parameter(torch.randn(dim, in_dim, generator=generator, dtype=torch.float64).to(dtype))
        self.dim = dim

    def forward(self, z, x):
        return z @ self.a.T + x @ self.u.T

    def initial_state(self, x):
        return x.new_zeros(x.shape[0], self.dim)


@pytest.mark.parametrize("dtype", DTYPES)
def test_deq_with_anderson_on_a_near_singular_cell_gives_finite_values_and_gradients(dtype):
    """The DEQ layer end to end (Anderson forward and adjoint solves, implicit gradient) on the near-singular cell,
    with sample 0 at its fixed point from the start (x_0 = 0, z_0 = 0): no exception, finite z and finite
    gradients, sample 0 returned unchanged."""
    cell = NearSingularCell(dtype)
    layer = deq.DEQ(cell, deq.DEQConfig(f_max_iter=30, b_max_iter=30)).train()
    x = random_state((3, 4), dtype, seed=8)
    x[0] = 0
    x.requires_grad_()
    out = layer(x)
    assert_finite_solve(out.z.detach(), out.stats, 30)
    assert torch.equal(out.z[0].detach(), torch.zeros(cell.dim, dtype=dtype))
    out.z.square().sum().backward()
    assert len(out.backward_stats) == 1
    for name, grad in (("x", x.grad), ("A", cell.a.grad), ("U", cell.u.grad)):
        assert grad is not None and torch.isfinite(grad).all(), name
        assert grad.abs().sum() > 0, name
