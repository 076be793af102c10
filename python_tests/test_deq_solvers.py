"""Fixed-point solvers on problems with known answers; per-sample stopping, divergence, NaN, configs, no syncs."""

import contextlib
import math
import re

import pytest
import torch

from wtext import deq
from forbid_sync import forbid_host_reads

SOLVER_NAMES = ["fixed_point_iter", "anderson", "broyden"]


def contractive_problem(device, dim=16, batch=4, norm=0.9, seed=0, symmetric_spectrum=None):
    generator = torch.Generator().manual_seed(seed)
    if symmetric_spectrum is None:
        a = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
        a = norm * a / torch.linalg.matrix_norm(a, 2)
    else:  # a symmetric map with a chosen spectrum: eigenvalues near 1 make plain iteration crawl
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
        a = q @ torch.diag(symmetric_spectrum.to(torch.float64)) @ q.T
    b = torch.randn(batch, dim, generator=generator, dtype=torch.float64)
    fixed_point = torch.linalg.solve(torch.eye(dim, dtype=torch.float64) - a, b.T).T
    a, b, fixed_point = a.to(device), b.to(device), fixed_point.to(device)
    return (lambda z: z @ a.T + b), b, fixed_point


@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_every_solver_reaches_the_closed_form_fixed_point(device, name):
    f, b, fixed_point = contractive_problem(device)
    z, stats = deq.get_solver(name)(f, torch.zeros_like(b), max_iter=300, tol=1e-10, stop_mode="abs")
    assert stats.converged.all()
    assert (stats.lowest <= 1e-10).all()
    torch.testing.assert_close(z, fixed_point, rtol=0, atol=1e-8)
    assert stats.trace.shape == (4, 300)


def test_anderson_and_broyden_beat_plain_iteration_when_ill_conditioned(device):
    spectrum = torch.linspace(0.0, 0.99, 32)
    f, b, fixed_point = contractive_problem(device, dim=32, symmetric_spectrum=spectrum)
    steps = {}
    for name in SOLVER_NAMES:
        z, stats = deq.get_solver(name)(f, torch.zeros_like(b), max_iter=400, tol=1e-9, stop_mode="rel")
        steps[name] = stats.steps
        if name != "fixed_point_iter":
            assert stats.converged.all(), name
            torch.testing.assert_close(z, fixed_point, rtol=0, atol=1e-5)  # error <= residual / (1 - 0.99)
    assert (steps["anderson"] < steps["fixed_point_iter"]).all()
    assert (steps["broyden"] < steps["fixed_point_iter"]).all()
    assert steps["anderson"].max() < 150 and steps["broyden"].max() < 150


@pytest.mark.parametrize("name", SOLVER_NAMES)
@pytest.mark.parametrize("output_format", [torch.channels_last, torch.contiguous_format])
def test_iterates_take_the_cells_output_layout_and_solve_the_same(device, name, output_format):
    """After the first step the cell sees its state in the layout it produces (so the solver's elementwise work
    never mixes layouts), and the fixed point does not depend on the starting layout."""
    generator = torch.Generator().manual_seed(3)
    weight = (0.2 * torch.randn(6, 6, 3, 3, generator=generator, dtype=torch.float64)).to(device)
    x = torch.randn(2, 6, 5, 4, generator=generator, dtype=torch.float64).to(device)
    seen = []

    def cell(z):
        seen.append(z.is_contiguous(memory_format=torch.channels_last))
        out = torch.tanh(torch.nn.functional.conv2d(z, weight, padding=1) + x)
        return out.contiguous(memory_format=output_format)

    results = []
    for start_format in (torch.contiguous_format, torch.channels_last):
        seen.clear()
        z0 = torch.zeros_like(x).contiguous(memory_format=start_format)
        z, _ = deq.get_solver(name)(cell, z0, max_iter=40, tol=1e-10, stop_mode="abs")
        assert all(channels_last == (output_format == torch.channels_last) for channels_last in seen[1:]), seen
        results.append(z)
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=1e-9)


def test_sample_flattener_is_a_view_both_ways():
    from wtext.deq.layout import SampleFlattener

    state = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    layout = SampleFlattener(state)
    flat = layout.flatten(state)
    assert flat.shape == (2, 60) and flat.data_ptr() == state.data_ptr()
    back = layout.unflatten(flat)
    assert back.data_ptr() == state.data_ptr() and torch.equal(back, state)
    assert back.is_contiguous(memory_format=torch.channels_last)
    plain = SampleFlattener(torch.randn(2, 7))
    assert torch.equal(plain.unflatten(plain.flatten(torch.ones(2, 7))), torch.ones(2, 7))


@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_finished_samples_stop_changing(device, name):
    f, b, _ = contractive_problem(device)
    z0 = torch.zeros_like(b)
    b[0] = 0  # sample 0 starts at its fixed point (z = 0)
    z, stats = deq.get_solver(name)(f, z0, max_iter=50, tol=1e-9, stop_mode="abs")
    assert stats.steps[0] == 1 and stats.steps[1:].min() > 1
    assert torch.equal(z[0], torch.zeros_like(z[0]))
    assert torch.isnan(stats.trace[0, 1:]).all() and not torch.isnan(stats.trace[1:, 0]).any()


@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_no_host_synchronization_inside_the_solve(device, name):
    f, b, _ = contractive_problem(device)
    with forbid_host_reads():
        z, stats = deq.get_solver(name)(f, torch.zeros_like(b), max_iter=30, tol=1e-8)
    assert stats.steps.max() == 30 or stats.converged.all()


def no_fixed_point(z):
    return z * z + z + 1.0  # residual z^2 + 1 >= 1 everywhere: there is no fixed point to find


@pytest.mark.parametrize("name", ["fixed_point_iter", "broyden"])
def test_divergence_is_detected_and_reported(device, name):
    z0 = torch.zeros(3, 5, device=device, dtype=torch.float64)
    z, stats = deq.get_solver(name)(no_fixed_point, z0, max_iter=60, tol=1e-8, stop_mode="abs")
    assert stats.diverged.all() and not stats.converged.any()
    assert (stats.steps < 60).all()  # diverged samples stop early
    assert torch.isfinite(z).all()  # the lowest-residual iterate is returned, not the exploded one


@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_a_map_without_fixed_point_is_never_reported_converged(device, name):
    z0 = torch.zeros(3, 5, device=device, dtype=torch.float64)
    z, stats = deq.get_solver(name)(no_fixed_point, z0, max_iter=60, tol=1e-8, stop_mode="abs")
    assert not stats.converged.any()
    assert (stats.lowest >= 5 ** 0.5 - 1e-9).all()  # ||z^2 + 1|| >= sqrt(5) for 5 elements
    assert torch.isfinite(z).all()


@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_nan_input_is_reported_not_silently_propagated(device, name):
    f, b, fixed_point = contractive_problem(device)
    z0 = torch.zeros_like(b)
    z0[2, 3] = float("nan")
    z, stats = deq.get_solver(name)(f, z0, max_iter=200, tol=1e-9, stop_mode="abs")
    assert stats.nonfinite.tolist() == [False, False, True, False]
    assert stats.diverged[2] and not stats.converged[2]
    keep = torch.tensor([0, 1, 3], device=device)
    assert stats.converged[keep].all()
    torch.testing.assert_close(z[keep], fixed_point[keep], rtol=0, atol=1e-7)


def test_recorded_iterates(device):
    f, b, _ = contractive_problem(device)
    _, stats = deq.get_solver("anderson")(f, torch.zeros_like(b), max_iter=10, tol=1e-12, record_steps=(0, 4))
    assert sorted(stats.recorded) == [0, 4]
    assert torch.equal(stats.recorded[0], torch.zeros_like(b))


def test_summary_is_plain_numbers(device):
    f, b, _ = contractive_problem(device)
    _, stats = deq.get_solver("anderson")(f, torch.zeros_like(b), max_iter=100, tol=1e-8)
    summary = stats.summary()
    assert summary["converged"] == 1.0 and 1 <= summary["steps"] <= 100


@pytest.mark.parametrize("option,value,message", [
    ("anderson_m", 0, r"anderson window m must be an int in \[1, 16\]; got m=0"),
    ("f_tol", 0.0, r"f_tol must be > 0; got f_tol=0.0"),
    ("b_tol", -1e-6, r"b_tol must be > 0; got b_tol=-1e-06"),
    ("f_max_iter", 0, r"f_max_iter must be an int >= 1; got f_max_iter=0"),
    ("f_solver", "newton", r"unknown solver 'newton'; registered solvers: anderson, broyden, fixed_point_iter"),
    ("b_solver", "lbfgs", r"unknown solver 'lbfgs'"),
    ("backward", "adjoint", r"backward must be one of"),
    ("phantom_tau", 0.0, r"phantom_tau must be in \(0, 1\]; got phantom_tau=0.0"),
    ("anderson_beta", 1.5, r"anderson damping beta must be in \(0, 1\]; got beta=1.5"),
    ("broyden_memory", 0, r"broyden_memory must be an int >= 1"),
    ("f_stop_mode", "max", r"f_stop_mode must be one of"),
    ("f_check_every", -1, r"f_check_every must be an int >= 0 .*got f_check_every=-1"),
    ("b_check_every", 2.0, r"b_check_every must be an int >= 0 .*got b_check_every=2.0"),
])
def test_bad_config_names_the_option(option, value, message):
    with pytest.raises(ValueError, match=message):
        deq.DEQConfig(**{option: value})


def test_bad_solver_arguments():
    f, b, _ = contractive_problem("cpu")
    with pytest.raises(ValueError, match=r"max_iter must be an int >= 1; got max_iter=0"):
        deq.get_solver("anderson")(f, b, max_iter=0, tol=1e-3)
    with pytest.raises(ValueError, match=r"tol must be > 0; got tol=0"):
        deq.get_solver("broyden")(f, b, max_iter=5, tol=0)
    with pytest.raises(ValueError, match=r"damping must be in \(0, 1\]"):
        deq.get_solver("fixed_point_iter")(f, b, max_iter=5, tol=1e-3, damping=2.0)


# -- check_every: an early end once every sample stopped, with the full-budget result --------------------------------

def mixed_ending_problem(device):
    """Six float64 samples that all stop well within a budget of 40, each differently: sample 0 starts at its fixed
    point (stops at step 1), sample 2 starts with a NaN, sample 3 blows up to inf at its second iterate (both
    diverge: their best iterate is an earlier one), the others converge after a few steps."""
    generator = torch.Generator().manual_seed(3)
    dim = 12
    a = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    a = (0.5 * a / torch.linalg.matrix_norm(a, 2)).to(device)
    b = torch.randn(6, dim, generator=generator, dtype=torch.float64).to(device)
    b[0] = 0  # z0 = 0 is sample 0's fixed point
    explode = torch.tensor([False, False, False, True, False, False], device=device)[:, None]

    def f(z):
        return torch.where(explode, torch.exp(torch.exp(z) + 10), z @ a.T + b)

    z0 = torch.zeros(6, dim, device=device, dtype=torch.float64)
    z0[2, 5] = float("nan")
    return f, z0


class CountingMap:
    """f (a solver's map or a DEQ cell) with a count of its calls."""

    def __init__(self, f):
        self.f, self.calls = f, 0

    def __call__(self, *args):
        self.calls += 1
        return self.f(*args)


@contextlib.contextmanager
def counting_bool_reads():
    """Counts Tensor.__bool__ calls (the host read of ConvergenceTracker.all_stopped)."""
    counter = [0]
    original = torch.Tensor.__bool__

    def counted(self):
        counter[0] += 1
        return original(self)

    torch.Tensor.__bool__ = counted
    try:
        yield counter
    finally:
        torch.Tensor.__bool__ = original


def assert_same_solve(result, reference):
    (z, stats), (z_ref, ref) = result, reference
    assert torch.equal(z.isnan(), z_ref.isnan()) and torch.equal(z.nan_to_num(), z_ref.nan_to_num())
    for name in ("steps", "lowest", "converged", "diverged", "nonfinite"):
        assert torch.equal(getattr(stats, name), getattr(ref, name)), name
    torch.testing.assert_close(stats.trace, ref.trace, equal_nan=True, rtol=0, atol=0)
    assert stats.recorded.keys() == ref.recorded.keys()
    for step in ref.recorded:
        assert torch.equal(stats.recorded[step].nan_to_num(), ref.recorded[step].nan_to_num()), step


@pytest.mark.parametrize("name", SOLVER_NAMES)
@pytest.mark.parametrize("check_every", [1, 3])
@pytest.mark.parametrize("problem", ["mixed", "converging"])
def test_check_every_ends_early_with_the_full_budget_result(device, name, check_every, problem):
    """Same iterate, steps, trace and recorded iterates as check_every=0, from fewer calls of f: the loop ends at
    the first test after the last sample stopped, one host read per test."""
    max_iter, record_steps = 40, (0, 2, 25, 39)
    if problem == "mixed":
        f, z0 = mixed_ending_problem(device)
        options = dict(max_iter=max_iter, tol=1e-9, stop_mode="abs", divergence_ratio=50.0)
    else:
        f, b, _ = contractive_problem(device, norm=0.5)
        z0 = torch.zeros_like(b)
        options = dict(max_iter=max_iter, tol=1e-6, stop_mode="rel")
    solve = deq.get_solver(name)
    full, early = CountingMap(f), CountingMap(f)
    reference = solve(full, z0, record_steps=record_steps, **options)
    with counting_bool_reads() as reads:
        result = solve(early, z0, record_steps=record_steps, check_every=check_every, **options)
    assert_same_solve(result, reference)
    last = int(reference[1].steps.max())  # the iteration after which no sample was active
    assert last < max_iter - check_every, "the problem must let every sample stop well within the budget"
    assert full.calls == reference[1].iterations == max_iter
    assert early.calls == result[1].iterations == math.ceil(last / check_every) * check_every < max_iter
    assert reads[0] == early.calls // check_every
    assert reference[1].diverged[3] == (problem == "mixed")  # the mixed problem had its divergent sample


@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_check_every_runs_the_whole_budget_while_a_sample_is_active(device, name):
    f, b, _ = contractive_problem(device)
    options = dict(max_iter=8, tol=1e-13, stop_mode="abs")  # nothing converges in 8 iterations
    full, early = CountingMap(f), CountingMap(f)
    reference = deq.get_solver(name)(full, torch.zeros_like(b), **options)
    result = deq.get_solver(name)(early, torch.zeros_like(b), check_every=2, **options)
    assert (reference[1].steps == 8).all()
    assert_same_solve(result, reference)
    assert early.calls == full.calls == result[1].iterations == 8


@pytest.mark.parametrize("name", SOLVER_NAMES)
@pytest.mark.parametrize("value", [-1, 1.5, True, "2", None])
def test_bad_check_every_names_the_option(name, value):
    f, b, _ = contractive_problem("cpu")
    message = rf"check_every must be an int >= 0 .*got check_every={re.escape(repr(value))}"
    with pytest.raises(ValueError, match=message):
        deq.get_solver(name)(f, b, max_iter=5, tol=1e-3, check_every=value)


def test_deq_layer_passes_check_every_to_the_forward_and_adjoint_solves():
    """A DEQ with f_check_every / b_check_every gives the same fixed point, gradients and statistics as with 0, with
    fewer cell calls (the forward and the adjoint solve both end early)."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(8, 8, generator=generator, dtype=torch.float64)
    weight = torch.nn.Parameter(0.4 * weight / torch.linalg.matrix_norm(weight, 2))
    x = torch.randn(5, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    results = {}
    for every in (0, 2):
        cell = CountingMap(lambda z, x: torch.tanh(z @ weight.T + x))
        config = deq.DEQConfig(f_max_iter=30, f_tol=1e-8, b_max_iter=30, b_tol=1e-8, f_check_every=every,
                               b_check_every=every)
        out = deq.DEQ(cell, config)(x)
        out.z.square().sum().backward()
        results[every] = (out, cell.calls, weight.grad.clone(), x.grad.clone())
        weight.grad = x.grad = None
    (full, full_calls, *full_grads), (early, early_calls, *early_grads) = results[0], results[2]
    assert torch.equal(early.z, full.z)
    assert torch.equal(early.stats.steps, full.stats.steps)
    assert len(early.backward_stats) == len(full.backward_stats) == 1
    assert torch.equal(early.backward_stats[0].steps, full.backward_stats[0].steps)
    assert full.stats.steps.max() < 30 and full.backward_stats[0].steps.max() < 30
    for grad, reference in zip(early_grads, full_grads):
        assert torch.equal(grad, reference)
    assert early_calls < full_calls
    assert early.stats.iterations < 30 and early.backward_stats[0].iterations < 30
    assert full.stats.iterations == full.backward_stats[0].iterations == 30
