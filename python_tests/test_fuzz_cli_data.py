"""A hostile user's inputs to `python -m wtext.train` and to the data readers, each classified:

    clear    the run stops with a one-line error that names the problem (exit 2, or 3 for a diverged run)
    unclear  it stops, but the message does not name the problem, or a traceback is printed
    crash    an exception escapes the command instead of an error message
    wrong    it does not stop (trains, or reads the file) although the input is bad

Every case must be clear. On failure the test prints the table of the cases that were not.
"""

import os
import pickle
import shutil
import sys

import numpy as np
import pytest
import torch

from wtext.data import DatasetError, load_dataset
from wtext.train.__main__ import main

from cli_verdicts import classify_command
from test_data import write_cifar, write_imagenet32

# Appended to every command line: a bad option that is wrongly accepted trains for a second, not two minutes.
FAST = ["--epochs", "1", "--synthetic-train", "64", "--synthetic-test", "32", "--width", "8", "--depth", "1",
        "--batch-size", "32", "--no-progress", "--device", "cpu"]


class Exploit:
    """Unpickling this runs `touch MARKER`: what a crafted data file or checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def cli_cases(tmp):
    """(name, argv, words the error must contain)."""
    bad_toml = tmp / "bad.toml"
    bad_toml.write_text("epochs = [\n")
    bad_yaml = tmp / "bad.yaml"
    bad_yaml.write_text("epochs: [1, 2\n")
    a_file = tmp / "a_file"
    a_file.write_text("x")
    binary = tmp / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00epochs")
    garbage_checkpoint = tmp / "garbage.pt"
    garbage_checkpoint.write_bytes(b"not a checkpoint at all")
    evil_checkpoint = tmp / "evil.pt"
    torch.save({"model": Exploit(tmp / "ran"), "format": 2}, evil_checkpoint)
    foreign_checkpoint = tmp / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign_checkpoint)

    def config_file(name, text):
        path = tmp / name
        path.write_text(text)
        return ["--config", str(path)]

    options = [
        ("epochs", ["0", "-1", "1.5", "abc"]), ("batch-size", ["0", "-32", "x"]),
        ("lr", ["0", "-1", "inf", "nan", "fast"]), ("density", ["0", "1.5", "nan", "-0.1", "half"]),
        ("grad-clip", ["nan", "-1", "inf"]), ("weight-decay", ["-1", "nan"]), ("warmup-epochs", ["-1", "inf"]),
        ("label-smoothing", ["1", "-0.1", "nan"]), ("momentum", ["-1", "nan"]),
        ("device", ["banana", "cuda:x", "gpu", "cpu:0:1"]), ("mask-seed", ["-1", str(2**70), "abc"]),
        ("seed", ["-1", str(2**40), "1e3"]), ("nm", ["2-4", "5:4", "0:4", "a:b", "2:0", ""]),
        ("model", ["resnet-huge", ""]), ("mask-mode", ["random"]), ("pattern", ["2:4"]), ("dataset", ["mnist"]),
        ("optimizer", ["lamb"]), ("depth", ["0", "-2"]), ("width", ["0", "-8"]), ("interleave", ["0", "3"]),
        ("synthetic-train", ["0"]), ("synthetic-test", ["0", "-5"]), ("checkpoint-every-steps", ["-1"]),
        ("checkpoint-every-seconds", ["-1", "nan"]), ("stop-after-steps", ["-1"]),
    ]
    cases = [(f"--{flag} {value!r}", [f"--{flag}", value], [flag.replace("-", "_")]) for flag, values in options
             for value in values]
    cases = [(name, argv, words if not name.startswith(("--model", "--mask-mode", "--pattern", "--dataset",
                                                         "--optimizer", "--epochs 'abc'", "--batch-size 'x'",
                                                         "--lr 'fast'", "--density 'half'", "--mask-seed 'abc'",
                                                         "--seed '1e3'"))
              else ["invalid"]) for name, argv, words in cases]
    cases += [
        ("unknown flag", ["--epoch", "3"], ["unrecognized arguments"]),
        ("cifar10 without --data-dir", ["--dataset", "cifar10"], ["--data-dir"]),
        ("missing data dir", ["--dataset", "cifar10", "--data-dir", str(tmp / "none")], ["not found"]),
        ("data dir is a file", ["--dataset", "cifar10", "--data-dir", str(a_file)], ["a_file"]),
        ("empty data dir", ["--dataset", "imagenet32", "--data-dir", str(tmp)], ["train_data_batch_1"]),
        ("run dir is a file", ["--run-dir", str(a_file)], ["run_dir", "a_file"]),
        ("resume without checkpoint", ["--resume", "--run-dir", str(tmp / "fresh")], ["--resume", "no checkpoint"]),
        ("eval-only without checkpoint", ["--eval-only", "--run-dir", str(tmp / "fresh2")], ["checkpoint not found"]),
        ("eval-only checkpoint is a dir", ["--eval-only", "--checkpoint", str(tmp)], ["directory"]),
        ("garbage checkpoint", ["--eval-only", "--checkpoint", str(garbage_checkpoint)], ["garbage.pt", "not a"]),
        ("code-running checkpoint", ["--eval-only", "--checkpoint", str(evil_checkpoint)],
         ["evil.pt", "refused", "posix.system"]),
        ("foreign checkpoint", ["--eval-only", "--checkpoint", str(foreign_checkpoint)],
         ["foreign.pt", "not a wtext checkpoint"]),
        ("config missing", ["--config", str(tmp / "none.toml")], ["config file not found"]),
        ("config is a dir", ["--config", str(tmp)], ["directory"]),
        ("config bad TOML", ["--config", str(bad_toml)], ["not valid TOML"]),
        ("config bad YAML", ["--config", str(bad_yaml)], ["not valid YAML"]),
        ("config not UTF-8", ["--config", str(binary)], ["binary.toml"]),
        ("config .json", config_file("c.json", "{}"), ["must end in .toml"]),
        ("config unknown key", config_file("k.toml", "epoch = 3\n"), ["unknown option 'epoch'"]),
        ("config augment word", config_file("augment_word.toml", 'augment = "no"\n'),
         ["augment must be auto, none", "'no'"]),
        ("config augment number", config_file("augment_number.toml", 'augment = 1\n'), ["augment must be str"]),
        ("augment part", ["--augment", "crop,rotate"], ["augment must be", "crop,rotate"]),
        ("augment empty part", ["--augment", "crop,"], ["augment must be", "'crop,'"]),
        ("config int a float", config_file("e.toml", "interleave = 1.5\n"), ["interleave must be int"]),
        ("config lr string", config_file("l.toml", 'lr = "fast"\n'), ["lr must be float"]),
        ("config density list", config_file("d.toml", "density = [0.5]\n"), ["density must be"]),
        ("config model number", config_file("m.toml", "model = 3\n"), ["model must be str"]),
        ("config int a bool", config_file("b.toml", "interleave = true\n"), ["interleave must be int"]),
        ("config float a string", config_file("w.toml", 'warmup_epochs = "1"\n'), ["warmup_epochs must be float"]),
        ("config top-level list", config_file("t.yaml", "- 1\n- 2\n"), ["table of options"]),
        ("config non-string key", config_file("n.yaml", "1: 2\n"), ["option names must be strings"]),
        ("config nan", config_file("nan.toml", "lr = nan\n"), ["lr must be a finite number"]),
        ("config huge int for a float", config_file("big.yaml", "lr: " + "9" * 400 + "\n"),
         ["lr must be a finite number"]),
        ("batch larger than the set", ["--batch-size", "100000"], ["batch_size=100000"]),
    ]
    if not torch.cuda.is_available():
        cases.append(("cuda without GPU", ["--device", "cuda"], ["no CUDA device"]))
    return cases


def classify_cli(argv, words, capsys) -> tuple[str, str]:
    return classify_command(main, [*FAST, *argv], words, capsys)


def test_every_bad_command_line_is_a_clear_one_line_error(tmp_path, capsys):
    findings = []
    cases = cli_cases(tmp_path)
    for name, argv, words in cases:
        verdict, message = classify_cli(argv, words, capsys)
        if verdict != "clear":
            findings.append(f"{verdict:8} {name:34} {message}")
    assert not (tmp_path / "ran").exists(), "a crafted checkpoint ran code"
    assert not findings, f"{len(findings)} of {len(cases)} cases not clear:\n" + "\n".join(findings)
    assert len(cases) >= 90


def _pickled(obj, protocol=pickle.HIGHEST_PROTOCOL) -> bytes:
    return pickle.dumps(obj, protocol=protocol)


def data_file_cases(tmp):
    """(name, dataset, bytes for the damaged file or None to delete it, words the error must contain)."""
    rng = np.random.default_rng(0)
    good = rng.integers(0, 256, (6, 3072), dtype=np.uint8)

    def batch(**fields):
        return _pickled({"data": good, "labels": list(range(6)), **fields})

    marker = tmp / "ran"
    cases = [
        ("missing file", None, ["not found"]),
        ("empty file", b"", ["not a readable pickle"]),
        ("truncated", batch()[:100], ["not a readable pickle"]),
        ("random bytes", rng.integers(0, 256, 500, dtype=np.uint8).tobytes(), ["not a readable pickle"]),
        ("code-running pickle", _pickled({"data": Exploit(marker)}), ["refused", "posix.system"]),
        ("code-running via eval", _pickled({"data": Exploit(marker)}, protocol=0), ["refused"]),
        ("other class", _pickled({"data": good, "labels": list(range(6)), "x": shutil.copy}), ["refused"]),
        ("list, not dict", _pickled([good, list(range(6))]), ["expected a pickled dict"]),
        ("no data", _pickled({"labels": list(range(6))}), ["missing key 'data'"]),
        ("no labels", _pickled({"data": good}), ["missing key 'labels'"]),
        ("data float", batch(data=good.astype(np.float32)), ["'data' must be uint8"]),
        ("data wrong shape", batch(data=good.reshape(6, 3, 1024)), ["'data' must have shape"]),
        ("data short rows", batch(data=good[:, :100]), ["'data' must have shape"]),
        ("data a list", batch(data=good.tolist()), ["'data' must be a numpy array"]),
        ("data bytes", batch(data=good.tobytes()), ["'data' must be a numpy array"]),
        ("labels a dict", batch(labels={0: 1}), ["'labels' must be"]),
        ("labels a string", batch(labels="012345"), ["'labels' must be"]),
        ("labels an int", batch(labels=3), ["'labels' must be"]),
        ("labels floats", batch(labels=[0.5] * 6), ["'labels' must be integers"]),
        ("labels bools", batch(labels=[True] * 6), ["'labels' must be integers"]),
        ("labels float array", batch(labels=np.zeros(6)), ["'labels' must be integers"]),
        ("labels too high", batch(labels=[1001] * 6), ["labels out of range"]),
        ("labels negative", batch(labels=[-1] * 6), ["labels out of range"]),
        ("labels too few", batch(labels=[1, 2]), ["one label per image"]),
        ("labels 2-d", batch(labels=np.zeros((6, 1), dtype=np.int64)), ["one label per image"]),
        ("labels object array", batch(labels=np.array([1, "a"] * 3, dtype=object)), ["refused the dtype"]),
        ("non-text key", _pickled({b"\xff": 1, "data": good, "labels": [0] * 6}), ["not text"]),
        ("a None label", batch(labels=[0, 1, None, 3, 4, 5]), ["'labels' must be integers, found None"]),
        ("a label of 2**70", batch(labels=[0, 1, 2**70, 3, 4, 5]), ["labels out of range", str(2**70)]),
        ("labels a 0-d array", batch(labels=np.array(3)), ["'labels' must be a 1-d array", "shape ()"]),
        ("labels uint64 above 2**63", batch(labels=np.array([2**64 - 1] * 6, dtype=np.uint64)),
         ["labels out of range", str(2**64 - 1)]),
        ("a directory", "dir", ["is a directory"]),
        ("a symlink to /dev/zero", "/dev/zero", ["is not a regular file (a character device", "/dev/zero"]),
        ("a named pipe", "fifo", ["is not a regular file (a named pipe)"]),
    ]
    return cases


def write_case(path, content):
    """Puts `content` at `path`: bytes, None (nothing), "dir", "fifo", or "/dev/..." (a symlink to that device)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    if content == "dir":
        path.mkdir()
    elif content == "fifo":
        os.mkfifo(path)  # opening it would block forever: the reader must refuse it unopened
    elif isinstance(content, str) and content.startswith("/dev/"):
        path.symlink_to(content)
    elif content is not None:
        path.write_bytes(content)


def classify_load(name, folder, words) -> tuple[str, str]:
    try:
        load_dataset(name, folder)
    except DatasetError as error:
        message = str(error)
        return ("clear" if all(word in message for word in words) else "unclear"), message[:160]
    except BaseException as error:  # noqa: BLE001
        return "crash", f"{type(error).__name__}: {error}"[:160]
    return "wrong", "read without error"


def test_every_damaged_data_file_is_a_clear_error_naming_the_file(tmp_path):
    findings, total = [], 0
    for case, content, words in data_file_cases(tmp_path):
        for which in ("data_batch_3", "test_batch"):
            folder = write_cifar(tmp_path / f"cifar-{total}")
            write_case(folder / which, content)
            verdict, message = classify_load("cifar10", folder, [which, *words])
            total += 1
            if verdict != "clear":
                findings.append(f"{verdict:8} cifar10 {which:13} {case:22} {message}")
        folder = write_imagenet32(tmp_path / f"imagenet-{total}", use_npz=False)
        write_case(folder / "val_data", content)
        verdict, message = classify_load("imagenet32", folder, ["val_data", *words])
        total += 1
        if verdict != "clear":
            findings.append(f"{verdict:8} imagenet32 val_data {case:22} {message}")
    assert not (tmp_path / "ran").exists(), "a crafted data file ran code"
    assert not findings, f"{len(findings)} of {total} cases not clear:\n" + "\n".join(findings)
    assert total >= 80


@pytest.mark.parametrize("case, words", [
    ("truncated", ["not a readable npz"]), ("no labels", ["missing key 'labels' (found ['data'])"]),
    ("pickled objects", ["not a readable npz"]), ("labels out of range", ["labels out of range"]),
    ("empty", ["hold no images"]), ("labels a 0-d array", ["'labels' must be a 1-d array", "shape ()"]),
    ("an .npy file", ["is a single .npy array", "not an npz archive"]),
    ("a symlink to /dev/zero", ["is not a regular file (a character device", "/dev/zero"]),
])
def test_damaged_npz_batches(tmp_path, case, words):
    folder = write_imagenet32(tmp_path / "in32")
    path = folder / "val_data.npz"
    data = np.zeros((4, 3072), dtype=np.uint8)
    if case == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif case == "no labels":
        np.savez(path, data=data)
    elif case == "pickled objects":
        np.savez(path, data=data, labels=np.array([1, None, 2, 3], dtype=object))
    elif case == "labels out of range":
        np.savez(path, data=data, labels=np.array([0, 1, 2, 3]))
    elif case == "labels a 0-d array":
        np.savez(path, data=data[:1], labels=np.array(3))
    elif case == "an .npy file":  # np.save writes .npy whatever the name; np.load then gives an array, no archive
        with path.open("wb") as handle:
            np.save(handle, data)
    elif case == "a symlink to /dev/zero":
        write_case(path, "/dev/zero")
    else:
        np.savez(path, data=data[:0], labels=np.zeros(0, dtype=np.int64))
    verdict, message = classify_load("imagenet32", folder, ["val_data.npz", *words])
    assert verdict == "clear", message


@pytest.mark.parametrize("case, content, words", [
    ("a None label", {"labels": [0, 1, None, 3, 4, 5]}, "'labels' must be integers, found None (NoneType)"),
    ("a label of 2**70", {"labels": [0, 1, 2**70, 3, 4, 5]},
     f"labels out of range: found 0..{2**70}, expected 0..9"),
    ("labels a 0-d array", {"labels": np.array(3)}, "'labels' must be a 1-d array, one label per image, "
                                                    "found shape ()"),
    ("a symlink to /dev/zero", "/dev/zero", "is not a regular file (a character device, via a symlink to "
                                            "/dev/zero); a batch file must be one"),
])
def test_damaged_cifar_batches_through_the_command_line(tmp_path, capsys, case, content, words):
    """The same damage seen by `python -m wtext.train`: exit 2 and one line naming the file, no traceback."""
    folder = write_cifar(tmp_path / "cifar")
    if isinstance(content, dict):
        content = _pickled({"data": np.zeros((6, 3072), dtype=np.uint8), **content})
    write_case(folder / "data_batch_2", content)
    code = main(["--dataset", "cifar10", "--data-dir", str(folder), *FAST])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert err.strip().splitlines() == [f"wtext.train: error: {folder / 'data_batch_2'}: {words}"]


def test_the_restricted_unpickler_reads_every_protocol_and_numpy_naming(tmp_path):
    """Genuine batches: every pickle protocol, and numpy 1's module name (numpy.core) as CIFAR-10's files have."""
    folder = write_cifar(tmp_path / "c")
    reference = load_dataset("cifar10", folder)
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            with (folder / name).open("rb") as handle:
                batch = pickle.load(handle)
            raw = pickle.dumps(batch, protocol=protocol)
            if protocol <= 3:  # names are newline-terminated text there (GLOBAL), so they can be rewritten
                raw = raw.replace(b"numpy._core", b"numpy.core")
            (folder / name).write_bytes(raw)
        again = load_dataset("cifar10", folder)
        assert torch.equal(again.train.images, reference.train.images), protocol
        assert torch.equal(again.test.labels, reference.test.labels), protocol


def test_a_crafted_batch_run_through_the_command_line_runs_nothing(tmp_path, capsys):
    folder = write_cifar(tmp_path / "cifar")
    (folder / "data_batch_1").write_bytes(_pickled({"data": Exploit(tmp_path / "ran")}))
    code = main(["--dataset", "cifar10", "--data-dir", str(folder), *FAST])
    assert code == 2 and not (tmp_path / "ran").exists()
    assert "data_batch_1: refused to load posix.system" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform != "linux", reason="os.system pickles as posix.system on Linux")
def test_exploit_helper_really_runs_code_when_unpickled_plainly(tmp_path):
    """The exploit used above is real: plain pickle.loads runs it (so the tests above can fail)."""
    pickle.loads(_pickled(Exploit(tmp_path / "ran")))
    assert (tmp_path / "ran").exists()


# A CIFAR-10 batch as Python 2's cPickle wrote it (protocol 2, str as SHORT_BINSTRING, numpy.core names): a 2x3
# uint8 array and a list of labels, written opcode by opcode.
PYTHON2_BATCH = (b"\x80\x02}q\x00(U\x04data"
                 b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
                 b"(K\x01K\x02K\x03\x86cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R"
                 b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
                 b"\x89U\x06\x01\x02\x03\x04\x05\x06tb"
                 b"U\x06labels](K\x01K\x02eu.")


def test_a_python2_batch_reads_as_plain_pickle_reads_it():
    import io

    from wtext.data.safe_pickle import load_batch_pickle

    plain = pickle.loads(PYTHON2_BATCH, encoding="bytes")
    ours = load_batch_pickle(io.BytesIO(PYTHON2_BATCH))
    assert ours.keys() == plain.keys() and ours[b"labels"] == plain[b"labels"] == [1, 2]
    assert ours[b"data"].dtype == np.uint8 and np.array_equal(ours[b"data"], plain[b"data"])


@pytest.mark.parametrize("gadget", ["object dtype", "object scalar", "dtype flags"])
def test_numpy_state_gadgets_are_refused_and_change_nothing(gadget):
    """numpy's own reconstruction trusts a dtype's pickled state (flags, object pointers); the unpickler never
    hands that state to numpy."""
    import io

    from wtext.data.safe_pickle import RefusedPickle, load_batch_pickle

    uint8_flags = np.dtype("u1").flags
    if gadget == "object dtype":  # an object array whose "pointers" are the file's bytes
        raw = PYTHON2_BATCH.replace(b"U\x02u1", b"U\x02O8").replace(b"U\x06\x01\x02\x03\x04\x05\x06",
                                                                    b"U\x30" + b"\x00" * 48)
    elif gadget == "object scalar":
        raw = (b"\x80\x02cnumpy.core.multiarray\nscalar\ncnumpy\ndtype\nU\x02O8K\x00K\x01\x87R"
               b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tbU\x08" + b"\x41" * 8 + b"\x86R.")
    else:  # new flags for the shared uint8 dtype
        raw = PYTHON2_BATCH.replace(b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb",
                                    b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x3ftb")
    if gadget == "dtype flags":
        load_batch_pickle(io.BytesIO(raw))  # a harmless uint8 array; the flags in the file are ignored
    else:
        with pytest.raises(RefusedPickle, match=r"refused the dtype dtype\('O'\)"):
            load_batch_pickle(io.BytesIO(raw))
    assert np.dtype("u1").flags == uint8_flags
