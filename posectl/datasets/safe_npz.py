"""Reading .npz files that hold pickled object arrays, without running code from the file.

`np.load(allow_pickle=True)` unpickles arbitrary objects: a file from the internet can run any
code. Here object arrays are unpickled by a restricted unpickler that only rebuilds numpy arrays,
dtypes and plain containers (dict, list, tuple, str, numbers); anything else is refused.

Allowed names are not enough on their own: a dtype's pickled state can add object fields or set its
flags so that numpy reads raw bytes from the file as object pointers (memory corruption, without any
forbidden name). So a dtype's state must be the one its constructor arguments give (byte order
aside): no fields, no sub-arrays, the same size, alignment and flags.
"""
from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from posectl.errors import DataError

_NUMPY_CORE = "numpy._core" if int(np.__version__.split(".")[0]) >= 2 else "numpy.core"
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),                       # bytes in protocol-2 pickles
    ("collections", "OrderedDict"),
    ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"), ("builtins", "set"),
    ("builtins", "frozenset"), ("builtins", "bytearray"), ("builtins", "complex"),
}


class UnsafePickleError(DataError):
    pass


class _RestrictedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler (its BUILD opcode can be checked), with an allow-list of names."""
    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise UnsafePickleError(f"refusing to unpickle {module}.{name}")
        if module.startswith("numpy.core") and _NUMPY_CORE == "numpy._core":
            module = module.replace("numpy.core", "numpy._core", 1)
        return super().find_class(module, name)

    def load_build(self):
        inst, state = self.stack[-2], self.stack[-1]
        if isinstance(inst, np.dtype):
            _check_dtype_state(inst, state)
        super().load_build()
    dispatch[pickle.BUILD[0]] = load_build


def _check_dtype_state(dt: np.dtype, state: Any) -> None:
    """Refuse a dtype state other than the plain one of its constructor (see the module docstring)."""
    plain = dt.__reduce__()[2]        # (3, byte order, subarray, names, fields, size, alignment, flags)
    ok = (isinstance(state, tuple) and len(state) == 8 and state[0] == 3 and state[1] in ("<", ">", "|", "=")
          and state[2] is None and state[3] is None and state[4] is None
          and all(type(state[i]) is int and state[i] == plain[i] for i in (5, 6, 7)))
    if not ok:
        raise UnsafePickleError(f"refusing a {dt.str} dtype with state other than its plain one "
                                "(fields, sub-arrays, flags or metadata)")


def _read_member(raw: bytes, where: str) -> np.ndarray:
    f = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(f)
        header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in header:
            raise DataError(f"{where}: unsupported .npy format version {version}")
        shape, fortran, dtype = header[version](f)
        if not dtype.hasobject:
            f.seek(0)
            return np.lib.format.read_array(f, allow_pickle=False)
        return _RestrictedUnpickler(f, encoding="latin1").load()
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{where}: {e} (only arrays and plain containers are allowed)") from None
    except DataError:
        raise
    except Exception as e:      # anything else the unpickler or numpy raise on these bytes: a corrupt file
        raise DataError(f"{where}: corrupt array data ({type(e).__name__}: {str(e)[:80]})") from None


def not_a_file(p: Path) -> DataError:
    """The error for an input file that is missing, or a directory where a file was expected."""
    return DataError(f"not a file (a directory): {p}" if p.is_dir() else f"file not found: {p}")


def load_npz(path: str | Path, keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Load the members of an .npz (optionally only `keys`) with the restricted unpickler.

    0-d object arrays (pickled dicts) are returned as the object they hold (`.item()`).
    """
    p = Path(path)
    if not p.is_file():
        raise not_a_file(p)
    try:
        with zipfile.ZipFile(p) as z:
            names = {n[:-4]: n for n in z.namelist() if n.endswith(".npy")}
            if keys is not None:
                missing = [k for k in keys if k not in names]
                if missing:
                    raise DataError(f"{p}: missing key(s) {', '.join(missing)} (has: {', '.join(sorted(names)) or 'none'})")
            out = {}
            for key, member in names.items():
                if keys is not None and key not in keys:
                    continue
                arr = _read_member(z.read(member), f"{p}:{key}")
                out[key] = arr.item() if isinstance(arr, np.ndarray) and arr.dtype == object and arr.ndim == 0 else arr
            return out
    except zipfile.BadZipFile:
        raise DataError(f"{p}: not a valid .npz file (truncated or corrupt zip)") from None
    except (EOFError, OSError, zipfile.LargeZipFile) as e:
        raise DataError(f"{p}: unreadable ({type(e).__name__})") from None


def load_pickle(path: str | Path) -> Any:
    """Unpickle a file with the restricted unpickler (arrays and plain containers only)."""
    p = Path(path)
    if not p.is_file():
        raise not_a_file(p)
    try:
        with open(p, "rb") as f:
            return _RestrictedUnpickler(f, encoding="latin1").load()
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{p}: {e} (only arrays and plain containers are allowed)") from None
    except OSError as e:
        raise DataError(f"{p}: unreadable ({type(e).__name__})") from None
    except Exception as e:      # see _read_member
        raise DataError(f"{p}: corrupt pickle ({type(e).__name__}: {str(e)[:80]})") from None
