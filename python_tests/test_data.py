"""Data: the synthetic set, CIFAR-10 and ImageNet32 readers on small files in the real formats (written here),
every corrupt-file case, the device loader's augmentation, order and resumption, and the download helper."""

import hashlib
import http.server
import pickle
import threading
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wtext.data import DatasetError, DeviceLoader, Split, crop_flip, load_dataset
from wtext.data import synthetic
from wtext.data.download import ChecksumError, download


def write_cifar(folder, per_batch=6, labels_offset=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"labels": list(rng.integers(0, 10, per_batch) + labels_offset), b"batch_label": name.encode()}
        with (folder / name).open("wb") as handle:
            pickle.dump(batch, handle)
    return folder


def write_imagenet32(folder, per_batch=4, use_npz=True):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for stem in [f"train_data_batch_{i}" for i in range(1, 11)] + ["val_data"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(1, 1001, per_batch)
        if use_npz:
            np.savez(folder / f"{stem}.npz", data=data, labels=labels, mean=data.mean(0))
        else:
            with (folder / stem).open("wb") as handle:
                pickle.dump({"data": data, "labels": list(labels), "mean": data.mean(0)}, handle)
    return folder


def test_synthetic_is_deterministic_balanced_and_uint8():
    images, labels = synthetic.generate(200, seed=3)
    again, again_labels = synthetic.generate(200, seed=3)
    assert images.dtype == torch.uint8 and images.shape == (200, 3, 32, 32)
    assert torch.equal(images, again) and torch.equal(labels, again_labels)
    assert torch.equal(labels.bincount(), torch.full((10,), 20))
    assert not torch.equal(synthetic.generate(200, seed=4)[0], images)


def test_cifar10_reader(tmp_path):
    folder = write_cifar(tmp_path / "cifar-10-batches-py")
    data = load_dataset("cifar10", tmp_path)
    assert len(data.train) == 30 and len(data.test) == 6 and data.num_classes == 10
    with (folder / "data_batch_2").open("rb") as handle:
        batch = pickle.load(handle)
    expected = torch.from_numpy(batch[b"data"].reshape(-1, 3, 32, 32))
    assert torch.equal(data.train.images[6:12], expected)  # CHW order kept, files in order
    assert data.train.labels[6:12].tolist() == [int(v) for v in batch[b"labels"]]


@pytest.mark.parametrize("use_npz", [True, False])
def test_imagenet32_reader_shifts_labels_to_zero_based(tmp_path, use_npz):
    write_imagenet32(tmp_path, use_npz=use_npz)
    data = load_dataset("imagenet32", tmp_path)
    assert len(data.train) == 40 and len(data.test) == 4 and data.num_classes == 1000
    name = "val_data.npz" if use_npz else "val_data"
    if use_npz:
        raw = np.load(tmp_path / name)["labels"]
    else:
        with (tmp_path / name).open("rb") as handle:
            raw = np.asarray(pickle.load(handle)["labels"])
    assert data.test.labels.tolist() == (raw - 1).tolist()


def test_sharding_keeps_every_world_th_image(tmp_path):
    write_cifar(tmp_path)
    whole = load_dataset("cifar10", tmp_path)
    shards = [load_dataset("cifar10", tmp_path, shard=(rank, 3)) for rank in range(3)]
    for rank, shard in enumerate(shards):
        assert torch.equal(shard.train.images, whole.train.images[rank::3])
        assert torch.equal(shard.test.images, whole.test.images)


def corrupt(path, how):
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif how == "missing":
        path.unlink()
    else:
        with path.open("rb") as handle:
            batch = pickle.load(handle)
        if how == "wrong size":
            batch[b"data"] = batch[b"data"][:, :3000]
        elif how == "labels out of range":
            batch[b"labels"][0] = 10
        elif how == "wrong dtype":
            batch[b"data"] = batch[b"data"].astype(np.float32)
        elif how == "missing key":
            del batch[b"labels"]
        elif how == "label count":
            batch[b"labels"] = batch[b"labels"][:-1]
        with path.open("wb") as handle:
            pickle.dump(batch, handle)


@pytest.mark.parametrize("how,message", [
    ("missing", r"data_batch_3: file not found"),
    ("truncated", r"data_batch_3: not a readable pickle batch \(truncated or corrupt\?\)"),
    ("wrong size", r"data_batch_3: 'data' must have shape \[N, 3072\] \(3x32x32, CHW\), found \(6, 3000\)"),
    ("labels out of range", r"data_batch_3: labels out of range: found 0\.\.10, expected 0\.\.9|"
                            r"data_batch_3: labels out of range: found \d+\.\.10, expected 0\.\.9"),
    ("wrong dtype", r"data_batch_3: 'data' must be uint8, found float32"),
    ("missing key", r"data_batch_3: missing key 'labels'"),
    ("label count", r"data_batch_3: 'labels' must hold one label per image \(6\)"),
])
def test_corrupt_cifar_files_are_named_with_their_problem(tmp_path, how, message):
    folder = write_cifar(tmp_path)
    corrupt(folder / "data_batch_3", how)
    with pytest.raises(DatasetError, match=message) as caught:
        load_dataset("cifar10", tmp_path)
    assert caught.value.path.name == "data_batch_3"


def test_corrupt_imagenet32_npz(tmp_path):
    write_imagenet32(tmp_path)
    (tmp_path / "train_data_batch_4.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DatasetError, match=r"train_data_batch_4.npz: not a readable npz archive"):
        load_dataset("imagenet32", tmp_path)
    write_imagenet32(tmp_path)
    np.savez(tmp_path / "val_data.npz", data=np.zeros((2, 3072), np.uint8), labels=np.array([0, 5]))
    with pytest.raises(DatasetError, match=r"val_data.npz: labels out of range: found 0\.\.5, expected 1\.\.1000"):
        load_dataset("imagenet32", tmp_path)


def test_dataset_argument_errors(tmp_path):
    with pytest.raises(ValueError, match=r"give --data-dir"):
        load_dataset("cifar10")
    with pytest.raises(DatasetError, match=r"data directory not found"):
        load_dataset("cifar10", tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist'"):
        load_dataset("mnist")


def test_crop_flip_matches_a_per_image_reference():
    images = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    offsets = torch.randint(0, 9, (5, 2))
    flips = torch.tensor([True, False, True, False, False])
    got = crop_flip(images, offsets, flips, pad=4)
    padded = F.pad(images, (4, 4, 4, 4))
    for i in range(5):
        y, x = offsets[i].tolist()
        expected = padded[i, :, y:y + 8, x:x + 8]
        assert torch.equal(got[i], expected.flip(-1) if flips[i] else expected)


def small_split(n=64):
    images, labels = synthetic.generate(n, seed=0)
    return Split(images, labels)


def test_loader_normalizes_and_is_deterministic_per_epoch():
    split = small_split()
    loader = DeviceLoader(split, 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), train=False)
    images, labels = next(loader.epoch(0))
    torch.testing.assert_close(images, (split.images[:16].float() / 255 - 0.5) / 0.25)
    train = DeviceLoader(split, 16, (0.5,) * 3, (0.25,) * 3, train=True, seed=1)
    first = [b[0] for b in train.epoch(2)]
    again = [b[0] for b in train.epoch(2)]
    other = [b[0] for b in train.epoch(3)]
    assert len(first) == 4 and all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])


def test_resumed_epoch_sees_the_same_batches():
    loader = DeviceLoader(small_split(), 8, (0.5,) * 3, (0.25,) * 3, train=True, seed=5)
    full = list(loader.epoch(1))
    resumed = list(loader.epoch(1, start=3))
    assert len(resumed) == len(full) - 3
    for (a, la), (b, lb) in zip(full[3:], resumed):
        assert torch.equal(a, b) and torch.equal(la, lb)


def test_interleave_reproduces_the_union_of_rank_batches():
    split = small_split(64)
    mean, std = (0.5,) * 3, (0.25,) * 3
    ranks = [DeviceLoader(Split(split.images[r::2], split.labels[r::2]), 8, mean, std, train=True, seed=2, rank=r)
             for r in range(2)]
    single = DeviceLoader(split, 16, mean, std, train=True, seed=2, interleave=2)
    for (x0, y0), (x1, y1), (x, y) in zip(ranks[0].epoch(0), ranks[1].epoch(0), single.epoch(0)):
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)


@pytest.fixture
def file_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_verifies_the_checksum(file_server, tmp_path):
    served, url = file_server
    payload = b"cifar bytes" * 1000
    (served / "data.bin").write_bytes(payload)
    good = hashlib.sha256(payload).hexdigest()
    target = tmp_path / "out" / "data.bin"
    assert download(f"{url}/data.bin", target, good).read_bytes() == payload
    with pytest.raises(ChecksumError, match=r"does not match the expected 0000"):
        download(f"{url}/data.bin", tmp_path / "out" / "bad.bin", "0" * 64)
    assert not (tmp_path / "out" / "bad.bin").exists() and not (tmp_path / "out" / "bad.bin.part").exists()
    with pytest.raises(OSError, match=r"downloading .*/missing.bin failed"):
        download(f"{url}/missing.bin", tmp_path / "out" / "missing.bin", good)


def test_digits_are_the_real_sklearn_digits_upsampled_with_a_fixed_split():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    data = load_dataset("digits")
    assert (len(data.train), len(data.test), data.num_classes) == (1437, 360, 10)
    assert data.train.images.dtype == torch.uint8 and data.train.images.shape[1:] == (3, 32, 32)
    assert not data.flip  # a mirrored digit is not the same digit
    again = load_dataset("digits", seed=7)  # the split does not depend on the run's seed
    assert torch.equal(again.test.images, data.test.images) and torch.equal(again.test.labels, data.test.labels)
    # Every image is one of sklearn's, upsampled, with its label: averaging 4x4 blocks gives back (nearly) the 8x8
    # grid, whose nearest sklearn image carries the same label.
    pixels, labels = sklearn_datasets.load_digits(return_X_y=True)
    both = torch.cat([data.train.images, data.test.images])[:, 0].float()
    coarse = F.avg_pool2d(both[:, None], 4).flatten(1) * 16 / 255
    nearest = torch.cdist(coarse, torch.from_numpy(pixels).float()).argmin(1)
    ours = torch.cat([data.train.labels, data.test.labels])
    assert (torch.from_numpy(labels)[nearest] == ours).float().mean() > 0.99
    assert len(set(nearest.tolist())) > 0.97 * len(labels)  # nearly every sklearn image appears once
    assert torch.equal(ours.bincount(), torch.from_numpy(np.bincount(labels)))


def test_digits_without_scikit_learn_is_a_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError("No module named 'sklearn'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    with pytest.raises(DatasetError, match=r"digits: needs scikit-learn.*pip install scikit-learn"):
        load_dataset("digits")


def test_no_flip_keeps_images_unmirrored():
    images = torch.arange(4 * 3 * 8 * 8, dtype=torch.uint8).view(4, 3, 8, 8)
    split = Split(images, torch.arange(4))
    for flip in (False, True):
        loader = DeviceLoader(split, 4, (0, 0, 0), (1, 1, 1), train=True, pad=0, flip=flip)
        mirrored = 0
        for epoch in range(4):
            for batch, labels in loader.epoch(epoch):
                expected = loader.normalize(images[labels])
                mirrored += sum(not torch.equal(b, e) for b, e in zip(batch, expected))
                if not flip:
                    assert torch.equal(batch, expected)
        assert (mirrored > 0) == flip
