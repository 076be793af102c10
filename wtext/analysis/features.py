"""Representations of every tied application (or every DEQ solver iterate) of a model, for CKA."""

import torch
from torch import nn

from wtext.models import TiedModel

from .cka import MinibatchCKA


@torch.no_grad()
def application_outputs(model: nn.Module, images: torch.Tensor) -> tuple[list[str], list[torch.Tensor]]:
    """Names and outputs of each tied application, stage by stage (ResNet) or block by block (ViT); for a DEQ twin,
    the iterates of its forward solve, step by step."""
    model.eval()
    with model.recording() as recorded:
        model(images)
    return [name for name, _ in recorded], [output for _, output in recorded]


@torch.no_grad()
def cka_matrix(model: nn.Module, loader, max_batches: int | None = None) -> tuple[list[str], torch.Tensor]:
    """Minibatch CKA between all recorded representations over the loader's batches."""
    if not isinstance(model, TiedModel):
        raise TypeError(f"CKA needs a weight-tied wtext model (a TiedModel: TiedResNet, TiedViT); got "
                        f"{type(model).__name__}")
    names, accumulator = None, None
    for index, (images, _) in enumerate(loader):
        if max_batches is not None and index >= max_batches:
            break
        batch_names, outputs = application_outputs(model, images)
        if accumulator is None:
            names, accumulator = batch_names, MinibatchCKA(len(outputs))
        accumulator.update(outputs)
    if accumulator is None:
        raise ValueError("the loader yielded no batches")
    return names, accumulator.value()
