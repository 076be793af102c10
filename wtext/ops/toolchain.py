"""Detects an extension build that carries its own copy of the C++ standard library.

Some toolchains (seen: a custom GCC under /opt/gcc on a lent GPU machine, set as CC/CXX there) link libstdc++
statically into every shared library they build. wtext._C built that way loads and computes correctly, but its
copy of the stream library was never initialized, so formatting an error message (TORCH_CHECK with a number)
crashed the interpreter with SIGSEGV instead of raising RuntimeError. The same torch extension built with the
system g++ raised cleanly (benchmarks/probe_exceptions.py). This check lets wtext say so at import time.
"""

import ctypes
import os

# std::basic_ostream<char>::_M_insert<double>: defined by libstdc++, so by any library that bundles it.
_PROBE_SYMBOL = "_ZNSo9_M_insertIdEERSoT_"


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


def defines_libstdcxx(library_path: str) -> bool:
    """Whether the shared library at library_path itself defines libstdc++'s stream code (Linux; False where
    that cannot be told)."""
    try:
        library = ctypes.CDLL(library_path)
        address = ctypes.cast(getattr(library, _PROBE_SYMBOL), ctypes.c_void_p).value
        libc = ctypes.CDLL(None)
        info = _DlInfo()
        if not libc.dladdr(ctypes.c_void_p(address), ctypes.byref(info)) or not info.dli_fname:
            return False
        return os.path.realpath(info.dli_fname.decode()) == os.path.realpath(library_path)
    except (OSError, AttributeError, TypeError, ValueError):
        return False


def bundled_libstdcxx_warning(library_path: str) -> str | None:
    """The warning to give when library_path bundles libstdc++, else None."""
    if not defines_libstdcxx(library_path):
        return None
    return (f"{os.path.basename(library_path)} was linked with its own copy of libstdc++ (a compiler that links it "
            "statically, e.g. CXX=/opt/gcc/bin/g++). Errors raised by wtext's ops may then crash Python instead of "
            "raising RuntimeError. Rebuild with the system compiler, e.g.\n"
            "    CC=/usr/bin/gcc CXX=/usr/bin/g++ python setup.py build_ext --inplace")
