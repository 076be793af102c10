"""Mask seeds of an adapted module, derived from the config's seed and the module's qualified name."""

import hashlib


def mask_seeds(seed: int, name: str) -> tuple[int, int]:
    """(seed of A's masks, seed of B's masks) of the module called `name`, each in [0, 2^64).

    A keyed hash (BLAKE2b), not Python's hash(): that one is salted per process, so the masks, which are never
    stored, would differ between the run that trained an adapter and the one that loads it.
    """
    seeds = []
    for factor in ("A", "B"):
        digest = hashlib.blake2b(f"{seed}\0{name}\0{factor}".encode(), digest_size=8, person=b"wtext-lora").digest()
        seeds.append(int.from_bytes(digest, "little"))
    return seeds[0], seeds[1]
