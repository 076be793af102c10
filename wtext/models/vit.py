"""Weight-tied ViT-like model: a tokenizer (convolutional, or ViT's patchify), one transformer block (masked q/k/v,
projection and MLP weights) applied `depth` times with a mask per application, and an attention-pooling,
class-token or mean-pooling head."""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from wtext.deq import DEQConfig
from wtext.nn import MaskSpec, TiedMaskedWeight, autocast_dtype
from wtext.validation import require_ints

from .tied_model import TiedModel


POOLS = ("attention", "cls", "mean")


@dataclass(frozen=True)
class TiedViTConfig:
    """dim: token width; heads: attention heads (must divide dim); depth: tied applications; mlp_ratio: MLP width
    / dim; patch: the side of the image square one token stands for (a power of 2 for the conv tokenizer);
    tokenizer: "conv" (log2(patch) stages of conv3x3 + ReLU + max-pool 3x3/2, as compact convolutional transformers
    tokenize) or "patch" (ViT's one strided patch convolution); image_size: the size the positional embedding is
    made for (other sizes interpolate it); pool: "attention" (a learned softmax weighting of the tokens, the
    sequence pooling of compact convolutional transformers), "cls" (a class token) or "mean"; mask: masking of
    the block's four weights (density 0.9 by default, as the paper finds best for Transformer-like models); deq:
    when set, the DEQ twin: z* = LN(block(z* + embedding)) solved to its fixed point with these options (one mask,
    that of application 0)."""

    dim: int = 192
    heads: int = 3
    depth: int = 6
    mlp_ratio: int = 4
    patch: int = 4
    tokenizer: str = "conv"
    image_size: int = 32
    pool: str = "attention"
    num_classes: int = 10
    in_channels: int = 3
    mask: MaskSpec = field(default_factory=lambda: MaskSpec(density=0.9))
    deq: DEQConfig | None = None

    def __post_init__(self):
        require_ints(self, ("dim", "heads", "depth", "mlp_ratio", "patch", "image_size", "num_classes", "in_channels"))
        if self.dim % self.heads:
            raise ValueError(f"dim must be divisible by heads; got dim={self.dim}, heads={self.heads}")
        if self.tokenizer not in ("conv", "patch"):
            raise ValueError(f"tokenizer must be 'conv' or 'patch'; got tokenizer={self.tokenizer!r}")
        if self.tokenizer == "conv" and self.patch & (self.patch - 1):
            raise ValueError(f"the conv tokenizer halves the image per stage, so patch must be a power of 2; got "
                             f"patch={self.patch}")
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}; got pool={self.pool!r}")
        if self.image_size % self.patch:
            raise ValueError(f"image_size must be divisible by patch; got image_size={self.image_size}, "
                             f"patch={self.patch}")


class TransformerBlock(nn.Module):
    """z' = z + proj(attn(LN(z) q/k/v)); z'' = z' + fc2(gelu(fc1(LN(z')))), every weight tied and masked."""

    def __init__(self, config: TiedViTConfig, applications: int):
        super().__init__()
        dim, hidden, spec, depth = config.dim, config.dim * config.mlp_ratio, config.mask, applications
        self.heads = config.heads
        self.qkv = TiedMaskedWeight((3 * dim, dim), depth, spec, seed_offset=0)
        self.proj = TiedMaskedWeight((dim, dim), depth, spec, seed_offset=1)
        self.fc1 = TiedMaskedWeight((hidden, dim), depth, spec, seed_offset=2)
        self.fc2 = TiedMaskedWeight((dim, hidden), depth, spec, seed_offset=3)
        for tied in (self.qkv, self.proj, self.fc1, self.fc2):
            nn.init.trunc_normal_(tied.weight, std=0.02)
        self.qkv_bias = nn.Parameter(torch.zeros(3 * dim))
        self.proj_bias = nn.Parameter(torch.zeros(dim))
        self.fc1_bias = nn.Parameter(torch.zeros(hidden))
        self.fc2_bias = nn.Parameter(torch.zeros(dim))
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def masked_weights(self, device: torch.device):
        dtype = autocast_dtype(device)
        return tuple(tied.split(dtype) for tied in (self.qkv, self.proj, self.fc1, self.fc2))

    def forward(self, z, weights, application: int):
        qkv_w, proj_w, fc1_w, fc2_w = (tied.view(w, application)
                                       for tied, w in zip((self.qkv, self.proj, self.fc1, self.fc2), weights))
        batch, tokens, dim = z.shape
        qkv = F.linear(self.norm1(z), qkv_w, self.qkv_bias).view(batch, tokens, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, tokens, dim)
        z = z + F.linear(attended, proj_w, self.proj_bias)
        return z + F.linear(F.gelu(F.linear(self.norm2(z), fc1_w, self.fc1_bias)), fc2_w, self.fc2_bias)


def conv_tokenizer(in_channels: int, dim: int, patch: int) -> nn.Sequential:
    """log2(patch) stages of conv3x3 + ReLU + max-pool 3x3 stride 2; the last stage has `dim` channels, the ones
    before it dim / 2. Tokens made from local features train far faster than patchified pixels on small data
    (measured: 83% against 19-27% on the quick synthetic set after 4 epochs; docs/model-quality.md)."""
    stages = max(1, patch.bit_length() - 1)
    layers, channels = [], in_channels
    for stage in range(stages):
        out = dim if stage == stages - 1 else dim // 2
        layers += [nn.Conv2d(channels, out, 3, padding=1), nn.ReLU()]
        if patch > 1:
            layers.append(nn.MaxPool2d(3, stride=2, padding=1))
        channels = out
    return nn.Sequential(*layers)


class TiedViT(TiedModel):
    """forward(x [N, C, H, W]) -> logits [N, num_classes]; H and W divisible by the patch size."""

    def __init__(self, config: TiedViTConfig):
        super().__init__(config)
        c = config
        if c.tokenizer == "conv":
            self.patch_embed = conv_tokenizer(c.in_channels, c.dim, c.patch)
        else:
            self.patch_embed = nn.Conv2d(c.in_channels, c.dim, c.patch, stride=c.patch)
        grid = c.image_size // c.patch
        self.pos_embed = nn.Parameter(torch.randn(1, grid * grid, c.dim) * 0.02)
        # Only the class-token head has a class token; the other heads read the image tokens alone.
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim)) if c.pool == "cls" else None
        # Attention pooling learned real digits twice as fast as a class token (measured: 75% against 31-39% after
        # the main job's 6 epochs; docs/model-quality.md).
        self.pool_score = nn.Linear(c.dim, 1) if c.pool == "attention" else None
        self.block = TransformerBlock(c, self.applications)
        self.norm = nn.LayerNorm(c.dim)
        self.head = nn.Linear(c.dim, c.num_classes)
        self.deq_norm = nn.LayerNorm(c.dim) if c.deq else nn.Identity()

    def positional_embedding(self, height: int, width: int) -> torch.Tensor:
        grid = self.config.image_size // self.config.patch
        if (height, width) == (grid, grid):
            return self.pos_embed
        table = self.pos_embed.reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
        table = F.interpolate(table, size=(height, width), mode="bicubic", align_corners=False)
        return table.permute(0, 2, 3, 1).reshape(1, height * width, -1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens with positional embedding, and the class token first if the head uses one: [N, (1 +) T, dim]."""
        if x.shape[-1] % self.config.patch or x.shape[-2] % self.config.patch:
            raise ValueError(f"image height and width must be divisible by patch={self.config.patch}; "
                             f"got x.shape={tuple(x.shape)}")
        patches = self.patch_embed(x)
        tokens = patches.flatten(2).transpose(1, 2) + self.positional_embedding(*patches.shape[-2:])
        if self.cls_token is None:
            return tokens
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)

    def readout(self, z: torch.Tensor) -> torch.Tensor:
        if self.config.pool == "cls":
            return self.head(self.norm(z[:, 0]))
        if self.config.pool == "mean":
            return self.head(self.norm(z.mean(1)))
        tokens = self.norm(z)
        weights = torch.softmax(self.pool_score(tokens), dim=1)  # [N, T, 1]
        return self.head((weights * tokens).sum(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        embedding = self.embed(x)
        weights = self.block.masked_weights(x.device)
        self.deq_outputs = []
        if self.config.deq is not None:
            # The block is residual (z + ...), so z = block(z + e) alone has no fixed point in general; the final
            # LayerNorm bounds the map, as in DEQ transformers' post-norm cells.
            fixed_point = self.solve(lambda z, e: self.deq_norm(self.block(z + e, weights, 0)), embedding,
                                     torch.zeros_like(embedding),
                                     inputs=[*(t for group in weights for t in group), *self.block.parameters(),
                                             *self.deq_norm.parameters()])
            return self.readout(fixed_point)
        z = embedding
        for application in range(self.config.depth):
            z = self.block(z, weights, application)
            self.record(f"application{application}", z)
        return self.readout(z)

    def flops_per_image(self, height: int = 32, width: int = 32) -> dict[str, float]:
        """Multiply-adds x 2 for one image: dense, and counting only unmasked tied weights (effective)."""
        c = self.config
        tokens = (height // c.patch) * (width // c.patch) + (c.pool == "cls")
        embed = 0
        size = height * width
        for layer in self.patch_embed.modules() if c.tokenizer == "conv" else [self.patch_embed]:
            if isinstance(layer, nn.Conv2d):
                per_position = 2 * layer.weight.numel()
                embed += per_position * (size if c.tokenizer == "conv" else (height // c.patch) * (width // c.patch))
            elif isinstance(layer, nn.MaxPool2d):
                size = -(-size // 4)
        attention = 2 * 2 * tokens * tokens * c.dim  # QK^T and AV
        applications = self.applications  # a DEQ twin: per block application
        dense = effective = embed + applications * attention + 2 * self.head.weight.numel()
        for tied in self.tied_weights():
            dense += applications * 2 * tokens * tied.weight.numel()
            effective += applications * 2 * tokens * tied.kept_per_application()
        return {"dense": dense, "effective": effective}
