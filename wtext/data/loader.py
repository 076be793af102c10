"""Batches from a device-resident split: shuffling, random crop (pad 4), horizontal flip and normalization run on
the split's device over whole batches, with no per-image Python.

The epoch order and the augmentation draws are pure functions of (seed, epoch), so a run resumed mid-epoch sees
exactly the batches an uninterrupted run would (start=... skips the batches already done).
"""

import torch
import torch.nn.functional as F

from .datasets import Split


def crop_flip(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int) -> torch.Tensor:
    """Random crops of the zero-padded images (uint8 [B, C, H, W]) at offsets [B, 2] in [0, 2 pad], mirrored where
    flips [B] is True: one gather, the flip folded into the column index."""
    batch, channels, height, width = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    device = images.device
    rows = offsets[:, 0:1] + torch.arange(height, device=device)
    cols = offsets[:, 1:2] + torch.arange(width, device=device)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    return padded[torch.arange(batch, device=device)[:, None, None, None],
                  torch.arange(channels, device=device)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


class DeviceLoader:
    """Iterates (images float [B, 3, H, W] normalized, labels int64 [B]) over a Split held on its device.

    train=True shuffles, augments (augment=True: a random crop with `pad` unless crop=False, and a horizontal flip
    unless flip=False) and drops the last partial batch; train=False keeps order and every image.

    Data-parallel runs: rank r of W holds the shard r, r+W, ... of the training set (see load_dataset) and loads it
    with rank=r: all ranks share the shuffle of shard positions, each has its own augmentation stream.
    `interleave=W` makes one process see, batch for batch, the union of what W such ranks see (batch_size is then
    the global batch), so a single process can reproduce a W-rank run exactly.
    """

    def __init__(self, split: Split, batch_size: int, mean, std, *, train: bool, seed: int = 0, augment: bool = True,
                 pad: int = 4, crop: bool = True, flip: bool = True, channels_last: bool = False, rank: int = 0,
                 interleave: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got batch_size={batch_size}")
        if interleave < 1 or batch_size % interleave:
            raise ValueError(f"interleave must be >= 1 and divide batch_size; got interleave={interleave}, "
                             f"batch_size={batch_size}")
        self.split, self.batch_size, self.train = split, batch_size, train
        self.seed, self.augment, self.pad, self.channels_last = seed, augment and train, pad, channels_last
        self.crop, self.flip = crop, flip
        self.rank, self.interleave = rank, interleave
        device = split.images.device
        self.scale = (1.0 / (255.0 * torch.tensor(std, device=device))).view(1, 3, 1, 1)
        self.shift = (-torch.tensor(mean, device=device) / torch.tensor(std, device=device)).view(1, 3, 1, 1)

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        """The epoch's sample order (a permutation drawn on the CPU from (seed, epoch), identical on any device)."""
        n = len(self.split)
        if not self.train:
            return torch.arange(n)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        if self.interleave == 1:
            return torch.randperm(n, generator=generator)
        # Shard positions shuffled as every rank shuffles them; step k takes each shard's slice of the step.
        shards, per_rank = self.interleave, self.batch_size // self.interleave
        positions = torch.randperm(n // shards, generator=generator)
        steps = len(positions) // per_rank
        positions = positions[:steps * per_rank].view(steps, 1, per_rank)
        return (torch.arange(shards).view(1, shards, 1) + shards * positions).reshape(-1)

    def _augmentation_generators(self, epoch: int) -> list[torch.Generator]:
        """Generators on the data's device: augmentation draws never cross to the host (a host-to-device copy per
        batch could synchronize). CPU and CUDA runs therefore augment differently, each reproducibly."""
        device = self.split.images.device
        ranks = range(self.interleave) if self.interleave > 1 else [self.rank]
        return [torch.Generator(device=device).manual_seed(self.seed * 1_000_003 + epoch + 7919 * (rank + 1))
                for rank in ranks]

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        out = images.float() * self.scale + self.shift
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out

    def epoch(self, epoch: int, start: int = 0):
        """Yields the epoch's batches from batch index `start` on."""
        order = self.order(epoch).to(self.split.images.device)
        generators = self._augmentation_generators(epoch)
        for index in range(len(self)):
            batch = order[index * self.batch_size:(index + 1) * self.batch_size]
            # Draws happen for every batch, skipped or not, so a resumed epoch continues the same random stream.
            if self.augment:
                device = self.split.images.device
                per_rank = len(batch) // len(generators)
                offsets = torch.cat([torch.randint(0, 2 * self.pad + 1, (per_rank, 2), generator=g, device=device)
                                     for g in generators])
                # Both are drawn whatever the parts chosen, so that the crops do not depend on the flip setting nor
                # the flips on the crop setting; an unshifted crop (offset pad) is the image itself.
                flips = torch.cat([torch.rand(per_rank, generator=g, device=device) < 0.5 for g in generators])
                flips &= self.flip
                if not self.crop:
                    offsets.fill_(self.pad)
            if index < start:
                continue
            images = self.split.images[batch]
            if self.augment:
                images = crop_flip(images, offsets, flips, self.pad)
            yield self.normalize(images), self.split.labels[batch]
