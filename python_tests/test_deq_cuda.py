"""DEQ solvers on a GPU: agreement with the CPU, no host synchronization, CUDA-graph capture (GPU only)."""

import pytest
import torch

from conftest import requires_cuda
from wtext import deq

pytestmark = requires_cuda


def linear_problem(device, batch=8, dim=64):
    generator = torch.Generator().manual_seed(3)
    a = torch.randn(dim, dim, generator=generator)
    a = (0.9 * a / torch.linalg.matrix_norm(a, 2)).to(device)
    b = torch.randn(batch, dim, generator=generator).to(device)
    return (lambda z: torch.tanh(z @ a.T + b)), b


@pytest.mark.parametrize("name", ["anderson", "broyden", "fixed_point_iter"])
def test_cpu_and_cuda_solvers_agree(name):
    f_cpu, b_cpu = linear_problem("cpu")
    f_gpu, b_gpu = linear_problem("cuda")
    z_cpu, stats_cpu = deq.get_solver(name)(f_cpu, torch.zeros_like(b_cpu), max_iter=40, tol=1e-6)
    z_gpu, stats_gpu = deq.get_solver(name)(f_gpu, torch.zeros_like(b_gpu), max_iter=40, tol=1e-6)
    torch.testing.assert_close(z_gpu.cpu(), z_cpu, rtol=1e-4, atol=1e-5)
    assert torch.equal(stats_gpu.converged.cpu(), stats_cpu.converged)


@pytest.mark.parametrize("name", ["anderson", "broyden", "fixed_point_iter"])
def test_no_host_synchronization(name):
    f, b = linear_problem("cuda")
    z0 = torch.zeros_like(b)
    f(z0)  # warm up cuBLAS outside the checked region
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        deq.get_solver(name)(f, z0, max_iter=20, tol=1e-6)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_fixed_budget_anderson_solve_captures_in_a_cuda_graph():
    f, b = linear_problem("cuda")
    static_z0 = torch.zeros_like(b)
    solve = deq.get_solver("anderson")
    eager, _ = solve(f, static_z0, max_iter=15, tol=1e-12)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as graph capture requires
        solve(f, static_z0, max_iter=15, tol=1e-12)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured, _ = solve(f, static_z0, max_iter=15, tol=1e-12)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(captured, eager)
