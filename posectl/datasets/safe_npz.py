"""Reading .npz files that hold pickled object arrays, without running code from the file.

`np.load(allow_pickle=True)` unpickles arbitrary objects: a file from the internet can run any
code. Here object arrays are unpickled by a restricted unpickler that only rebuilds numpy arrays,
dtypes and plain containers (dict, list, tuple, str, numbers); anything else is refused.
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


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise UnsafePickleError(f"refusing to unpickle {module}.{name}")
        if module.startswith("numpy.core") and _NUMPY_CORE == "numpy._core":
            module = module.replace("numpy.core", "numpy._core", 1)
        return super().find_class(module, name)


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
    except (ValueError, EOFError, pickle.UnpicklingError, AttributeError, TypeError) as e:
        raise DataError(f"{where}: corrupt array data ({type(e).__name__}: {str(e)[:80]})") from None


def load_npz(path: str | Path, keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Load the members of an .npz (optionally only `keys`) with the restricted unpickler.

    0-d object arrays (pickled dicts) are returned as the object they hold (`.item()`).
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"file not found: {p}")
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
        raise DataError(f"file not found: {p}")
    try:
        with open(p, "rb") as f:
            return _RestrictedUnpickler(f, encoding="latin1").load()
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{p}: {e} (only arrays and plain containers are allowed)") from None
    except (ValueError, EOFError, pickle.UnpicklingError, AttributeError, TypeError, ImportError) as e:
        raise DataError(f"{p}: corrupt pickle ({type(e).__name__}: {str(e)[:80]})") from None
