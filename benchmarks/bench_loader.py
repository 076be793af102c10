"""Loader benchmark: images/s of device-resident training batches (random crop with pad 4, horizontal flip,
normalization), against the same augmentation written per image in Python as torchvision-style loaders do.

    python benchmarks/bench_loader.py --device cpu|cuda [--images 20000] [--batch-size 256]
"""

import argparse
import time

import torch
import torch.nn.functional as F

from wtext.data import DeviceLoader, Split, synthetic


def per_image_reference(split: Split, batch_size: int, mean, std):
    """One Python-level crop/flip/normalize per image: the baseline a DataLoader with transforms pays."""
    mean_t, std_t = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    order = torch.randperm(len(split))
    for start in range(0, len(split) - batch_size + 1, batch_size):
        batch = []
        for index in order[start:start + batch_size].tolist():
            image = F.pad(split.images[index], (4, 4, 4, 4))
            y, x = torch.randint(0, 9, (2,)).tolist()
            image = image[:, y:y + 32, x:x + 32]
            if torch.rand(()) < 0.5:
                image = image.flip(-1)
            batch.append((image.float() / 255 - mean_t) / std_t)
        yield torch.stack(batch).to(split.images.device)


def images_per_second(batches, device) -> float:
    count, start = 0, time.perf_counter()
    for images in batches:
        count += images.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    device = torch.device(args.device)
    images, labels = synthetic.generate(args.images, seed=0)
    split = Split(images.to(device), labels.to(device))
    mean, std = (0.5, 0.5, 0.5), (0.29, 0.29, 0.29)
    loader = DeviceLoader(split, args.batch_size, mean, std, train=True, augment=True)
    next(iter(loader.epoch(0)))  # warm-up
    ours = images_per_second((x for x, _ in loader.epoch(1)), device)
    cpu_split = Split(images, labels)
    reference = images_per_second(per_image_reference(cpu_split, args.batch_size, mean, std), device)
    print(f"crop+flip+normalize batches of {args.batch_size}, {args.images} images, {device}")
    print(f"  per-image Python (CPU, then copied)   {reference:>12,.0f} images/s   1.00x")
    print(f"  wtext DeviceLoader ({device.type:<4})            {ours:>12,.0f} images/s   {ours / reference:.2f}x")


if __name__ == "__main__":
    main()
