"""Regularizers of DEQ training."""

import torch


def jacobian_frobenius(fz: torch.Tensor, z: torch.Tensor, vectors: int = 1) -> torch.Tensor:
    """Hutchinson estimate of ||df/dz||_F^2 / numel(z), per batch (a scalar), differentiable (create_graph).

    fz = f(z) must have been computed with z requiring grad. Each probe e ~ N(0, I) gives ||e^T J||^2, an unbiased
    estimate of ||J||_F^2; `vectors` probes are averaged.
    """
    if vectors < 1:
        raise ValueError(f"vectors must be >= 1; got vectors={vectors}")
    total = fz.new_zeros(())
    for _ in range(vectors):
        probe = torch.randn_like(fz)
        (vjp,) = torch.autograd.grad(fz, z, probe, create_graph=True)
        total = total + vjp.square().sum()
    return total / (vectors * z.numel())
