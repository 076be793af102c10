"""Masks that overlap their predecessor: between same-mask (overlap 1) and independent multi-mask (overlap 0).

Specification (docs/masks.md, version 2): with overlap ρ in (0, 1], application 0 uses the bernoulli mask of layer
0; application l >= 1 keeps, element by element, the previous application's decision where the carry coin
C_l(i) is 1 and takes its own fresh mask's decision where it is 0:

    M_0(i) = F_0(i),    M_l(i) = C_l(i) ? M_{l-1}(i) : F_l(i)
    F_l = bernoulli mask (seed, layer l, density p),   C_l = bernoulli mask (seed, layer CARRY_LAYER_OFFSET + l, ρ)

Every M_l keeps each weight with probability p, consecutive masks differ in a fraction (1 - ρ)·2p(1 - p) of the
weights, ρ = 1 gives the same mask everywhere (bit-identical to mode "same") and ρ → 0 independent masks.
"""

import torch

# Layer index of the carry coins of application l: far above any depth, so no coin stream is a mask stream.
CARRY_LAYER_OFFSET = 1 << 32


def carry_layers(applications: int) -> list[int]:
    return [CARRY_LAYER_OFFSET + application for application in range(applications)]


def chain_masks(fresh: torch.Tensor, carry: torch.Tensor) -> torch.Tensor:
    """The overlapping masks M [L, *shape] from the fresh masks F and the carry coins C (both [L, *shape], 0/1):
    M_l(i) = F_s(i) for the last s <= l with C_s(i) = 0 (s = 0 when there is none); C_0 is not used."""
    applications = fresh.shape[0]
    index = torch.arange(applications, device=fresh.device).view(-1, *([1] * (fresh.dim() - 1)))
    own = (carry == 0) | (index == 0)  # applications that draw their own decision
    source = torch.where(own, index, torch.zeros_like(index)).cummax(dim=0).values
    return fresh.gather(0, source.expand(fresh.shape))


def consecutive_hamming(masks: torch.Tensor) -> float:
    """Mean fraction of weights whose decision differs between consecutive masks (masks [L, *shape]; 0 for L=1)."""
    if masks.shape[0] < 2:
        return 0.0
    return (masks[1:] != masks[:-1]).float().mean().item()
