"""The anderson_step op against a plain PyTorch reference of one Anderson step."""

import pytest
import torch

import wtext.ops  # noqa: F401  (registers the ops)


def reference_weights(gram, lam, newest):
    """alpha = w / sum(w), (H / mean(diag H) + lam I) w = 1; a plain step when that is impossible."""
    n = gram.shape[0]
    plain = torch.zeros(n, dtype=gram.dtype)
    plain[newest] = 1
    scale = gram.diagonal().mean()
    if not scale > 0:
        return plain
    system = gram / scale + lam * torch.eye(n, dtype=gram.dtype)
    w = torch.linalg.solve(system, torch.ones(n, dtype=gram.dtype))
    return w / w.sum()


def run_steps(device, dtype, batch=3, dim=10, m=3, steps=7, lam=1e-3, beta=0.7, offset=0):
    """Drives the op through `steps` steps on random iterates, checking each against the reference. With offset > 0
    the histories start `offset` elements into their storage (contiguous, but not 16-byte aligned)."""
    generator = torch.Generator().manual_seed(1)

    def history():  # slots not written yet hold NaN: the op must never read them (the solver allocates them empty)
        flat = torch.full((offset + batch * m * dim,), float("nan"), dtype=dtype, device=device)
        return flat[offset:].view(batch, m, dim)

    g_history, f_history = history(), history()
    gram = torch.zeros(batch, m, m, dtype=dtype, device=device)
    ref_x = torch.zeros(batch, m, dim, dtype=dtype)  # the iterates and images the op was given, on the CPU
    ref_f = torch.zeros_like(ref_x)
    for step in range(steps):
        x = torch.randn(batch, dim, generator=generator, dtype=dtype)
        fx = torch.randn(batch, dim, generator=generator, dtype=dtype)
        x_next = torch.ops.wtext.anderson_step(x.to(device), fx.to(device), g_history, f_history, gram, step, lam,
                                               beta)
        slot, valid = step % m, min(step + 1, m)
        ref_x[:, slot], ref_f[:, slot] = x, fx
        residuals = (ref_f - ref_x)[:, :valid]
        # the op accumulates dot products in float64, so the reference does too
        full_gram = (residuals.double() @ residuals.double().transpose(1, 2)).to(dtype)
        torch.testing.assert_close(gram[:, :valid, :valid].cpu(), full_gram)
        # the op keeps residuals, not iterates
        torch.testing.assert_close(g_history[:, :valid].cpu(), (ref_f - ref_x)[:, :valid])
        torch.testing.assert_close(f_history[:, :valid].cpu(), ref_f[:, :valid])
        for b in range(batch):
            alpha = reference_weights(full_gram[b], lam, slot)
            expected = (alpha[:, None] * (beta * ref_f[b, :valid] + (1 - beta) * ref_x[b, :valid])).sum(0)
            torch.testing.assert_close(x_next[b].cpu(), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference_over_many_steps(device, dtype):
    run_steps(device, dtype)
    run_steps(device, dtype, batch=1, dim=1, m=1, steps=3, lam=0.0, beta=1.0)
    # a state longer than one pass of a CUDA reduction block (256 threads), not a multiple of it; beta = 1 takes
    # the undamped mix, which never reads the stored residuals
    run_steps(device, dtype, batch=2, dim=9001, m=4, steps=6, beta=1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("beta", [1.0, 0.7])
def test_16_byte_and_misaligned_states_match_the_reference(device, dtype, beta):
    # dim a multiple of 4: the CUDA kernels move 16-byte packs; histories one element off a 16-byte boundary make
    # them fall back to one element per access. Both must compute the same step.
    run_steps(device, dtype, batch=3, dim=4100, m=5, steps=8, beta=beta)
    run_steps(device, dtype, batch=3, dim=4100, m=5, steps=8, beta=beta, offset=1)


def test_singular_system_falls_back_to_plain_step_without_nan(device):
    batch, dim, m = 2, 6, 4
    g_history = torch.zeros(batch, m, dim, device=device)
    f_history, gram = torch.zeros_like(g_history), torch.zeros(batch, m, m, device=device)
    residual = torch.randn(batch, dim, device=device)
    for step in range(5):  # the same residual every step: a rank-one Gram matrix, singular without regularization
        x = torch.randn(batch, dim, device=device)
        x_next = torch.ops.wtext.anderson_step(x, x + residual, g_history, f_history, gram, step, 0.0, 1.0)
        assert torch.isfinite(x_next).all()
    torch.testing.assert_close(x_next, x + residual)  # the fallback is the plain step f(x)


def test_zero_residual_gives_plain_step(device):
    x = torch.randn(2, 5, device=device)
    g_history = torch.zeros(2, 3, 5, device=device)
    out = torch.ops.wtext.anderson_step(x, x.clone(), g_history, torch.zeros_like(g_history),
                                        torch.zeros(2, 3, 3, device=device), 0, 1e-4, 1.0)
    torch.testing.assert_close(out, x)


def test_opcheck(device):
    args = (torch.randn(2, 7, device=device), torch.randn(2, 7, device=device), torch.randn(2, 3, 7, device=device),
            torch.randn(2, 3, 7, device=device), torch.randn(2, 3, 3, device=device), 4, 1e-4, 0.9)
    torch.library.opcheck(torch.ops.wtext.anderson_step.default, args)


def test_bad_arguments():
    x, h, g = torch.randn(2, 4), torch.zeros(2, 3, 4), torch.zeros(2, 3, 3)
    step = torch.ops.wtext.anderson_step
    with pytest.raises(RuntimeError, match=r"the window m must be in \[1, 16\]; got m=17"):
        step(x, x, torch.zeros(2, 17, 4), torch.zeros(2, 17, 4), torch.zeros(2, 17, 17), 0, 0.0, 1.0)
    with pytest.raises(RuntimeError, match=r"x must be float32 or float64; got x.dtype=BFloat16"):
        step(x.bfloat16(), x.bfloat16(), h.bfloat16(), h.bfloat16(), g.bfloat16(), 0, 0.0, 1.0)
    with pytest.raises(RuntimeError, match=r"fx must have x's shape"):
        step(x, torch.randn(2, 5), h, h.clone(), g, 0, 0.0, 1.0)
    with pytest.raises(RuntimeError, match=r"gram must have shape \[B, m, m\] = \[2, 3, 3\]"):
        step(x, x, h, h.clone(), torch.zeros(2, 3, 4), 0, 0.0, 1.0)
    with pytest.raises(RuntimeError, match=r"lam must be a finite number >= 0; got lam=-1"):
        step(x, x, h, h.clone(), g, 0, -1.0, 1.0)
    with pytest.raises(RuntimeError, match=r"beta must be in \(0, 1\]; got beta=0"):
        step(x, x, h, h.clone(), g, 0, 0.0, 0.0)
    with pytest.raises(RuntimeError, match=r"step must be >= 0; got step=-1"):
        step(x, x, h, h.clone(), g, -1, 0.0, 1.0)
