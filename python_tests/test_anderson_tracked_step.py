"""anderson_tracked_step (Anderson with the convergence tracking fused into its kernels) against the Python
tracker (ConvergenceTracker.update + keep_finished) wrapped around the plain anderson_step."""

import pytest
import torch

from wtext import deq
from wtext.deq.tracking import ConvergenceTracker


def python_tracked_anderson(f, z0, *, max_iter, tol, stop_mode, divergence_ratio=1e3, m=5, lam=1e-4, beta=1.0):
    """The solve as it ran before the fusion: the tracker's tensor ops between f and anderson_step."""
    tracker = ConvergenceTracker(z0, max_iter, tol, stop_mode, divergence_ratio)
    solve_dtype = torch.float64 if z0.dtype == torch.float64 else torch.float32
    g_history = z0.new_zeros((z0.shape[0], m, z0[0].numel()), dtype=solve_dtype)
    f_history, gram = torch.zeros_like(g_history), z0.new_zeros((z0.shape[0], m, m), dtype=solve_dtype)
    z = z0
    for step in range(max_iter):
        fz = f(z)
        tracker.update(step, z, fz)
        z_next = torch.ops.wtext.anderson_step(z.flatten(1).to(solve_dtype), fz.flatten(1).to(solve_dtype),
                                               g_history, f_history, gram, step, lam, beta)
        z = tracker.keep_finished(z, z_next.view(z.shape).to(z0.dtype))
    return tracker.finish()


def mixed_batch_problem(device, dtype):
    """Six samples that end differently: one starts at its fixed point (stops at once while the others go on), one
    has a NaN, one blows up (diverges), three converge."""
    generator = torch.Generator().manual_seed(3)
    dim = 12
    a = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    a = (0.9 * a / torch.linalg.matrix_norm(a, 2)).to(device, dtype)
    b = torch.randn(6, dim, generator=generator, dtype=torch.float64).to(device, dtype)
    b[0] = 0  # z0 = 0 is sample 0's fixed point
    explode = torch.tensor([False, False, False, True, False, False], device=device)[:, None]

    def f(z):
        linear = z @ a.T + b
        return torch.where(explode, torch.exp(torch.exp(z) + 10), linear)  # sample 3: inf at the second iterate

    z0 = torch.zeros(6, dim, device=device, dtype=dtype)
    z0[2, 5] = float("nan")
    return f, z0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("stop_mode", ["abs", "rel"])
@pytest.mark.parametrize("beta", [1.0, 0.7])
def test_fused_tracking_matches_the_python_tracker(device, dtype, stop_mode, beta):
    f, z0 = mixed_batch_problem(device, dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    options = dict(max_iter=40, tol=tol, stop_mode=stop_mode, m=4, lam=1e-4, beta=beta, divergence_ratio=50.0)
    z, stats = deq.get_solver("anderson")(f, z0, **options)
    z_ref, ref = python_tracked_anderson(f, z0, **options)

    # The decisions are identical; the residuals agree to rounding (the kernel sums squares in float64).
    for name in ("steps", "converged", "diverged", "nonfinite"):
        assert torch.equal(getattr(stats, name), getattr(ref, name)), name
    close = dict(rtol=1e-4, atol=0) if dtype == torch.float32 else dict(rtol=1e-10, atol=0)
    torch.testing.assert_close(stats.trace, ref.trace, equal_nan=True, **close)
    torch.testing.assert_close(stats.lowest, ref.lowest, **close)
    torch.testing.assert_close(z, z_ref, equal_nan=True, **close)
    # the cases the problem was built to contain all happened
    assert stats.steps[0] == 1 and stats.converged[[0, 1, 4, 5]].all()
    assert stats.nonfinite[2] and stats.diverged[2] and stats.diverged[3] and not stats.converged[3]
    assert torch.equal(z[0], torch.zeros_like(z[0]))  # the sample that stopped at once kept its iterate


@pytest.mark.parametrize("max_iter", [1, 2, 5])
def test_a_budget_that_ends_while_improving_returns_the_last_iterate(device, max_iter):
    # Every sample still improves at the last step, so its best iterate is the last one, which the op only marked:
    # the solver must resolve that after the loop.
    f, z0 = mixed_batch_problem(device, torch.float64)
    options = dict(max_iter=max_iter, tol=1e-12, stop_mode="abs", m=3, lam=1e-4, beta=1.0)
    z, stats = deq.get_solver("anderson")(f, z0, **options)
    z_ref, ref = python_tracked_anderson(f, z0, **options)
    assert torch.equal(stats.steps, ref.steps)
    torch.testing.assert_close(z, z_ref, equal_nan=True, rtol=1e-12, atol=0)
    improving = stats.trace[:, -1] == stats.lowest  # improved at the last step
    assert improving[[1, 4, 5]].all()


def test_channels_last_states_keep_their_layout_and_results(device):
    conv = torch.nn.Conv2d(4, 4, 3, padding=1).to(device)
    with torch.no_grad():
        conv.weight.mul_(0.3 / conv.weight.flatten(1).norm(dim=1).max())
    x = torch.randn(3, 4, 5, 5, device=device).contiguous(memory_format=torch.channels_last)

    def f(z):
        return torch.tanh(conv(z) + x)

    z0 = torch.zeros_like(x)
    with torch.no_grad():
        z, stats = deq.get_solver("anderson")(f, z0, max_iter=30, tol=1e-5)
        z_ref, ref = python_tracked_anderson(f, z0, max_iter=30, tol=1e-5, stop_mode="rel")
    assert torch.equal(stats.steps, ref.steps) and stats.converged.all()
    assert z.is_contiguous(memory_format=torch.channels_last)  # the cell's output layout
    torch.testing.assert_close(z, z_ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(f(z), z, rtol=1e-4, atol=1e-4)


def tracked_args(device, batch=2, dim=7, m=3, max_iter=5):
    x, fx = torch.randn(batch, dim, device=device), torch.randn(batch, dim, device=device)
    history = torch.zeros(batch, m, dim, device=device)
    tracker = ConvergenceTracker(x, max_iter, 1e-6, "rel")
    best_pending = torch.zeros(batch, dtype=torch.bool, device=device)
    return [x, fx, history, history.clone(), torch.zeros(batch, m, m, device=device), x.clone(), x.clone(),
            best_pending, *tracker.fused_state()]


def test_opcheck(device):
    torch.library.opcheck(torch.ops.wtext.anderson_tracked_step.default,
                          (*tracked_args(device), 0, 1e-4, 0.9, 1e-6, True, 1e3))


@pytest.mark.parametrize("index,bad,message", [
    (5, lambda t: t[:1], r"previous_x must be like x \(shape \[2, 7\], Float, on cpu\); got previous_x.shape=\[1, 7\]"),
    (6, lambda t: t[:, :3].contiguous(), r"best must have shape \[2, 7\]; got best.shape=\[2, 3\]"),
    (7, lambda t: t.int(), r"best_pending must have dtype Bool; got best_pending.dtype=Int"),
    (8, lambda t: t.double(), r"lowest must have dtype Float; got lowest.dtype=Double"),
    (10, lambda t: t.int(), r"steps must have dtype Long; got steps.dtype=Int"),
    (11, lambda t: t.float(), r"active must have dtype Bool; got active.dtype=Float"),
    (14, lambda t: t[:, :1].contiguous(), r"trace must have shape \[B, max_iter\] with max_iter > step=3"),
])
def test_bad_tracker_tensors_are_named(index, bad, message):
    args = tracked_args("cpu")
    args[index] = bad(args[index])
    with pytest.raises(RuntimeError, match=message):
        torch.ops.wtext.anderson_tracked_step(*args, 3, 1e-4, 1.0, 1e-6, True, 1e3)


def test_bad_tracker_options_are_named():
    step = torch.ops.wtext.anderson_tracked_step
    with pytest.raises(RuntimeError, match=r"tol must be > 0; got tol=0"):
        step(*tracked_args("cpu"), 0, 1e-4, 1.0, 0.0, True, 1e3)
    with pytest.raises(RuntimeError, match=r"divergence_ratio must be > 1; got divergence_ratio=1"):
        step(*tracked_args("cpu"), 0, 1e-4, 1.0, 1e-6, True, 1.0)


def test_empty_states_converge_at_once_on_every_device(device):
    # Residual 0: every sample stops at step 0 with its (empty) iterate, on CPU and CUDA alike.
    args = tracked_args(device, batch=3, dim=0)
    x_next = torch.ops.wtext.anderson_tracked_step(*args, 0, 1e-4, 1.0, 1e-6, False, 1e3)
    lowest, first, steps, active, diverged, nonfinite, trace = args[8:]
    assert x_next.shape == (3, 0)
    assert steps.tolist() == [1, 1, 1] and not active.any() and not diverged.any() and not nonfinite.any()
    assert lowest.tolist() == [0.0, 0.0, 0.0] and trace[:, 0].tolist() == [0.0, 0.0, 0.0]


def test_the_best_iterate_is_copied_only_when_a_step_fails_to_improve(device):
    # Residuals 1, 0.5, 2 (abs): steps 0 and 1 improve and only mark their iterate (best_pending); step 2 does not,
    # so the op copies the previous iterate (step 1's) into best.
    batch, dim, m = 1, 4, 3
    iterates = [torch.full((batch, dim), value, device=device) for value in (1.0, 2.0, 3.0)]
    residuals = [1.0, 0.5, 2.0]
    images = [x + residual / dim ** 0.5 for x, residual in zip(iterates, residuals)]
    history = torch.zeros(batch, m, dim, device=device)
    f_history, gram = history.clone(), torch.zeros(batch, m, m, device=device)
    tracker = ConvergenceTracker(iterates[0], 3, 1e-9, "abs")
    best = torch.zeros(batch, dim, device=device)
    best_pending = torch.zeros(batch, dtype=torch.bool, device=device)
    for step in range(3):
        previous = iterates[step - 1] if step else iterates[0]
        torch.ops.wtext.anderson_tracked_step(iterates[step], images[step], history, f_history, gram, previous, best,
                                              best_pending, *tracker.fused_state(), step, 1e-4, 1.0, 1e-9, False, 1e3)
        if step < 2:
            assert best_pending.tolist() == [True] and not best.any()  # marked, not copied
    assert best_pending.tolist() == [False]
    torch.testing.assert_close(best, iterates[1])
    torch.testing.assert_close(tracker.lowest, torch.tensor([0.5], device=device))
