"""The embedded default data set: procedurally generated 32x32 colour images of 10 shape classes.

Deterministic from a seed, generated in a few seconds, needs no download. The class is the shape only: position,
size, a small rotation, foreground and background colours, a background gradient and pixel noise are random
nuisances, so colour or position are no shortcut; a small CNN learns it well, a linear model does not.

Classes: 0 disk, 1 ring, 2 square, 3 plus, 4 triangle, 5 striped disk, 6 checkered square, 7 pair of dots,
8 bar, 9 cross (x).
"""

import math

import torch

CLASSES = ("disk", "ring", "square", "plus", "triangle", "striped disk", "checkered square", "dot pair", "bar",
           "cross")


def _shape_masks(labels, u, v, r):
    """Foreground masks [N, S, S] for each sample's class, in rotated coordinates (u, v) scaled by radius r."""
    a, b = u / r, v / r
    dist = torch.sqrt(a * a + b * b)
    masks = torch.stack([
        dist < 1.0,                                                              # disk
        (dist < 1.0) & (dist > 0.55),                                            # ring
        torch.maximum(a.abs(), b.abs()) < 0.8,                                   # square
        ((a.abs() < 0.25) & (b.abs() < 1.0)) | ((b.abs() < 0.25) & (a.abs() < 1.0)),  # plus
        (b > -0.6) & (a.abs() < 0.6 * (1.0 - b)),                                # triangle
        (dist < 1.0) & (torch.sin(b * 2.5 * math.pi) > 0),                       # striped disk
        (torch.maximum(a.abs(), b.abs()) < 0.9) & ((torch.floor(a * 2.2) + torch.floor(b * 2.2)) % 2 == 0),
        ((a - 0.55) ** 2 + b ** 2 < 0.16) | ((a + 0.55) ** 2 + b ** 2 < 0.16),   # dot pair
        (a.abs() < 1.1) & (b.abs() < 0.3),                                       # bar
        (((a - b).abs() < 0.3) | ((a + b).abs() < 0.3)) & (dist < 1.1),          # cross
    ], dim=1)
    return masks[torch.arange(labels.shape[0]), labels]


def generate(count: int, seed: int, size: int = 32, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` images (uint8 [N, 3, size, size]) and labels (int64 [N], balanced 0..9), reproducible from seed."""
    if count < 1:
        raise ValueError(f"count must be >= 1; got count={count}")
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % len(CLASSES)
    labels = labels[torch.randperm(count, generator=generator)]
    images = torch.empty(count, 3, size, size, dtype=torch.uint8)
    axis = torch.arange(size, dtype=torch.float32) + 0.5
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    for start in range(0, count, chunk):
        part = labels[start:start + chunk]
        n = part.shape[0]

        def uniform(low, high, *shape):
            return low + (high - low) * torch.rand(n, *shape, generator=generator)

        cx, cy = uniform(0.4 * size, 0.6 * size, 1, 1), uniform(0.4 * size, 0.6 * size, 1, 1)
        radius = uniform(0.26 * size, 0.36 * size, 1, 1)
        angle = uniform(-0.35, 0.35, 1, 1)  # about +-20 degrees: a plus stays distinguishable from a cross
        du, dv = x - cx, y - cy
        u = du * torch.cos(angle) + dv * torch.sin(angle)
        v = -du * torch.sin(angle) + dv * torch.cos(angle)
        foreground_mask = _shape_masks(part, u, v, radius).unsqueeze(1).float()
        foreground = uniform(0, 1, 3, 1, 1)
        background = uniform(0, 1, 3, 1, 1)
        # Keep enough contrast between the two colours that the shape is visible.
        background = torch.where((foreground - background).abs().sum(1, keepdim=True) < 0.9, 1 - foreground,
                                 background)
        slope = uniform(-0.3, 0.3, 2, 1, 1)
        gradient = (slope[:, 0:1] * (x - size / 2) + slope[:, 1:2] * (y - size / 2)) / size
        image = foreground_mask * foreground + (1 - foreground_mask) * (background + gradient)
        image = image + 0.05 * torch.randn(image.shape, generator=generator)
        images[start:start + n] = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    return images, labels
