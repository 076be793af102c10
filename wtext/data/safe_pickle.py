"""Reading pickled data batches without running code from them.

pickle.load imports and calls whatever a file names, so a crafted "batch" can run any command. The batch formats
wtext reads (CIFAR-10's python batches, ImageNet32's pickle batches) hold only dicts, lists, strings, numbers and
numpy arrays of plain numbers. The unpickler here resolves the few names those files use (numpy's array, dtype
and scalar reconstruction, and Python 3's way of pickling bytes) to inert stand-ins of its own: the file's
arguments and state only ever reach these stand-ins, never a numpy object. Once the file is read, each stand-in
becomes a fresh array copied from its bytes, with a dtype rebuilt from a checked type string (booleans, integers,
floats). No object numpy would interpret from the file's state (flags, object pointers, fields) is ever made.
"""

import io
import pickle

import numpy as np

# Type characters of the dtypes a batch may hold: bool, signed and unsigned integers, floats.
PLAIN_KINDS = "biuf"


class RefusedPickle(pickle.UnpicklingError):
    """A pickle that names something other than the containers and numeric numpy arrays of a data batch."""


def _refuse(what: str):
    raise RefusedPickle(f"refused {what}: a data batch holds only dicts, lists, numbers, strings and numeric numpy "
                        f"arrays (the file may be crafted to run code)")


def _text(value):
    return value.decode("latin-1") if isinstance(value, bytes) else value


class _DtypeStandIn:
    """numpy.dtype(spec, align, copy) and its pickled state, kept as data."""

    def __init__(self, spec=None, align=False, copy=False):
        self.spec, self.state = spec, None

    def __setstate__(self, state):
        self.state = state

    def to_dtype(self) -> np.dtype:
        spec = _text(self.spec)  # Python 2 files, read with encoding="bytes", give b"u1"
        if not isinstance(spec, str) or len(spec) > 8:
            _refuse(f"the dtype {self.spec!r}")
        order = "|"
        if isinstance(self.state, tuple) and len(self.state) > 1 and _text(self.state[1]) in ("<", ">", "|", "="):
            order = _text(self.state[1])
        try:
            dtype = np.dtype(("" if order in "|=" else order) + spec)
        except TypeError:
            _refuse(f"the dtype {self.spec!r}")
        if dtype.kind not in PLAIN_KINDS or dtype.fields is not None or dtype.subdtype is not None:
            _refuse(f"the dtype {dtype!r}")
        return dtype


class _ArrayStandIn:
    """An ndarray to be: from _reconstruct(...) then its state, or from _frombuffer(data, dtype, shape, order)."""

    def __init__(self, shape=None, dtype=None, fortran=False, data=None):
        self.shape, self.dtype, self.fortran, self.data = shape, dtype, fortran, data

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) != 5:
            _refuse("an array state of an unknown layout")
        _, self.shape, self.dtype, self.fortran, self.data = state

    def to_array(self) -> np.ndarray:
        if not isinstance(self.dtype, _DtypeStandIn):
            _refuse("an array without a plain dtype")
        dtype = self.dtype.to_dtype()
        shape = tuple(self.shape) if isinstance(self.shape, (tuple, list)) else None
        if shape is None or not all(isinstance(n, int) and n >= 0 for n in shape):
            _refuse(f"an array of shape {self.shape!r}")
        if not isinstance(self.data, (bytes, bytearray)):
            _refuse("an array whose data is not bytes")
        count = int(np.prod(shape, dtype=np.int64))
        if len(self.data) != count * dtype.itemsize:
            raise pickle.UnpicklingError(f"array data of {len(self.data)} bytes for shape {shape} of {dtype}")
        flat = np.frombuffer(bytes(self.data), dtype=dtype, count=count)
        return flat.reshape(shape, order="F" if self.fortran else "C").copy()


class _ScalarStandIn:
    def __init__(self, dtype=None, data=None):
        self.dtype, self.data = dtype, data

    def to_scalar(self):
        if not isinstance(self.dtype, _DtypeStandIn) or not isinstance(self.data, bytes):
            _refuse("a numpy scalar that is not a plain number")
        dtype = self.dtype.to_dtype()
        if len(self.data) != dtype.itemsize:
            raise pickle.UnpicklingError(f"a numpy scalar of {len(self.data)} bytes for {dtype}")
        return np.frombuffer(self.data, dtype=dtype)[0]


def _reconstruct(subtype=None, shape=None, typecode=None):
    return _ArrayStandIn()


def _frombuffer(data=None, dtype=None, shape=None, order="C"):
    return _ArrayStandIn(shape, dtype, order == "F", data)


def _latin1_bytes(text=None, encoding="latin1"):
    """_codecs.encode as protocols 0-2 use it for bytes: text in latin-1, nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        _refuse("an encoding other than latin-1 text to bytes")
    return text.encode("latin-1")


_ALLOWED = {
    ("numpy", "ndarray"): _ArrayStandIn,
    ("numpy", "dtype"): _DtypeStandIn,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): _ScalarStandIn,
    ("numpy._core.multiarray", "scalar"): _ScalarStandIn,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): _latin1_bytes,
}


class BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        found = _ALLOWED.get((module, name))
        if found is None:
            _refuse(f"to load {module}.{name}")
        return found

    def persistent_load(self, pid):
        _refuse("a persistent reference")


def _materialize(value, depth: int = 0):
    """The unpickled tree with every stand-in turned into a fresh numpy array or scalar."""
    if depth > 32:
        _refuse("containers nested more than 32 deep")
    if isinstance(value, _ArrayStandIn):
        return value.to_array()
    if isinstance(value, _ScalarStandIn):
        return value.to_scalar()
    if isinstance(value, _DtypeStandIn):
        return value.to_dtype()
    if isinstance(value, dict):
        return {_materialize(k, depth + 1): _materialize(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_materialize(v, depth + 1) for v in value]
    if isinstance(value, tuple):
        return tuple(_materialize(v, depth + 1) for v in value)
    return value


def load_batch_pickle(handle: io.BufferedIOBase):
    """Unpickles a data batch from an open binary file. Python 2 strings come back as bytes (encoding="bytes"),
    as CIFAR-10's batches need."""
    return _materialize(BatchUnpickler(handle, encoding="bytes").load())
