"""The plain CNN that the tied models' quality is measured against: three 3x3 convolutions with GroupNorm and
ReLU, max-pooling after the first two, and a linear head on the flattened feature map (~35K parameters at width
16). It has no tied weights and no masks; a new user's first small CNN, trained by the same loop and optimizer."""

from dataclasses import dataclass

import torch
from torch import nn

from wtext.validation import require_ints


@dataclass(frozen=True)
class PlainCNNConfig:
    """width: channels of the first convolution (the others have 2 x width); groups: GroupNorm groups;
    image_size: the input side the flattened head is made for."""

    width: int = 16
    groups: int = 4
    image_size: int = 32
    num_classes: int = 10
    in_channels: int = 3

    def __post_init__(self):
        require_ints(self, ("width", "groups", "image_size", "num_classes", "in_channels"))
        if self.width % self.groups:
            raise ValueError(f"width must be divisible by the GroupNorm groups; got width={self.width}, "
                             f"groups={self.groups}")
        if self.image_size % 4:
            raise ValueError(f"image_size must be divisible by 4 (two 2x2 max-pools); got "
                             f"image_size={self.image_size}")


class PlainCNN(nn.Module):
    """forward(x [N, C, image_size, image_size]) -> logits [N, num_classes]."""

    def __init__(self, config: PlainCNNConfig):
        super().__init__()
        self.config = c = config
        wide = 2 * c.width

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(c.groups, cout), nn.ReLU()]

        self.features = nn.Sequential(*block(c.in_channels, c.width), nn.MaxPool2d(2), *block(c.width, wide),
                                      nn.MaxPool2d(2), *block(wide, wide))
        self.head = nn.Linear(wide * (c.image_size // 4) ** 2, c.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.config.image_size,) * 2:
            raise ValueError(f"PlainCNN is made for {self.config.image_size}x{self.config.image_size} images; got "
                             f"x.shape={tuple(x.shape)}")
        return self.head(self.features(x).flatten(1))

    def tied_weights(self) -> list:
        return []

    def flops_per_image(self, height: int = 32, width: int = 32) -> dict[str, float]:
        flops, size = 0, height * width
        for layer in self.features:
            if isinstance(layer, nn.Conv2d):
                flops += 2 * layer.weight.numel() * size
            elif isinstance(layer, nn.MaxPool2d):
                size //= 4
        flops += 2 * self.head.weight.numel()
        return {"dense": flops, "effective": flops}
