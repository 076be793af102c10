"""Parameter and compute accounting of weight-tied models."""

from torch import nn


def describe(model: nn.Module, height: int = 32, width: int = 32) -> dict[str, float]:
    """stored: parameters held (and saved), learned masks' scores left out (they are counted in mask_scores: they
    define masks, not weights, and a frozen model stores them as bits); effective_per_application: parameters unmasked in one application of the
    tied block plus all untied ones; tied_stored: parameters of tied weights; flops_dense / flops_effective: FLOPs
    per image (2 x multiply-adds) counting every weight / only unmasked tied weights."""
    tied = model.tied_weights()
    scores = sum(t.learned.scores.numel() for t in tied if t.learned is not None and not t.learned.frozen)
    stored = sum(p.numel() for p in model.parameters()) - scores
    tied_stored = sum(t.weight.numel() for t in tied)
    tied_effective = sum(t.kept_per_application() for t in tied)
    flops = model.flops_per_image(height, width)
    return {
        "stored": stored,
        "mask_scores": scores,
        "tied_stored": tied_stored,
        "effective_per_application": stored - tied_stored + tied_effective,
        "flops_dense": flops["dense"],
        "flops_effective": flops["effective"],
    }
