"""DatasetCache: data sets loaded once for many runs that read the same data (a fused group, an experiment's
measurements after training)."""

from .datasets import Dataset, load_dataset

# Only the synthetic set is made from the seed and the sizes; every other data set is the same files whatever they
# say, so they do not tell its copies apart.
SYNTHETIC_ONLY_OPTIONS = ("seed", "synthetic_train", "synthetic_test")


class DatasetCache:
    """load_dataset with memory: calling it with the arguments of load_dataset returns the data set loaded before
    for the same data (the same name, folder, device and shard; for the synthetic set also the same seed and
    sizes), so K runs hold one copy instead of K."""

    def __init__(self):
        self.loaded: dict[tuple, Dataset] = {}

    def __call__(self, name: str, data_dir=None, **options) -> Dataset:
        if name != "synthetic":
            options = {k: v for k, v in options.items() if k not in SYNTHETIC_ONLY_OPTIONS}
        key = (name, str(data_dir), tuple(sorted((k, str(v)) for k, v in options.items())))
        if key not in self.loaded:
            self.loaded[key] = load_dataset(name, data_dir, **options)
        return self.loaded[key]
