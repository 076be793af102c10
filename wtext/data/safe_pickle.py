"""Reading pickled data batches without running code from them.

pickle.load imports and calls whatever a file names, so a crafted "batch" can run any command. The batch formats
wtext reads (CIFAR-10's python batches, ImageNet32's pickle batches) hold only dicts, lists, strings, numbers and
numpy arrays; an unpickler that resolves nothing but the few numpy functions that rebuild an array (and
Python 3's way of pickling bytes at protocol 2) reads every genuine file and refuses everything else before it
can run.
"""

import _codecs
import io
import pickle

import numpy as np


def _numpy_core(module: str):
    """numpy 2 renamed numpy.core to numpy._core; files written by either name the function they used."""
    import importlib

    try:
        return importlib.import_module(module.replace("numpy.core", "numpy._core", 1))
    except ImportError:
        return importlib.import_module(module)


def _allowed(module: str, name: str):
    if (module, name) in (("numpy", "ndarray"), ("numpy", "dtype")):
        return getattr(np, name)
    if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("_reconstruct", "scalar"):
        return getattr(_numpy_core(module), name)
    if module in ("numpy.core.numeric", "numpy._core.numeric") and name == "_frombuffer":
        return getattr(_numpy_core(module), name)
    if module == "numpy.dtypes" and name.endswith("DType"):  # numpy 2 pickles dtype classes by name
        import numpy.dtypes

        kind = getattr(numpy.dtypes, name, None)
        return kind if isinstance(kind, type) else None
    if (module, name) == ("_codecs", "encode"):  # how Python 3 pickles bytes at protocols 0-2
        return _codecs.encode
    return None


class RefusedPickle(pickle.UnpicklingError):
    """A pickle that names something other than the containers and numpy arrays of a data batch."""


class BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        found = _allowed(module, name)
        if found is None:
            raise RefusedPickle(f"refused to load {module}.{name}: a data batch holds only dicts, lists, numbers, "
                                f"strings and numpy arrays (the file may be crafted to run code)")
        return found

    def persistent_load(self, pid):
        raise RefusedPickle("refused a persistent reference: a data batch never holds one")


def load_batch_pickle(handle: io.BufferedIOBase):
    """Unpickles a data batch from an open binary file. Python 2 strings come back as bytes (encoding="bytes"),
    as CIFAR-10's batches need."""
    return BatchUnpickler(handle, encoding="bytes").load()
