"""Reading the pickles that feature files carry without running anything they name.

Three of the layouts users hold carry a pickle: the HDF5 caches' id maps (``{image id: row}``),
the ``info`` member of bottom-up-attention.pytorch's ``.npz`` files and MMF's ``<image>_info.npy``
(``np.save`` of a dict: a 0-d object array). A pickle names functions that ``pickle.load`` calls:
one that names ``os.system`` runs a command. ``load``/``loads`` admit only the plain types a
pickle builds without naming anything (dicts, lists, tuples, strings, bytes, numbers, booleans,
None) and the few numpy names an array or scalar is rebuilt from (``ALLOWED``); a pickle that names
anything else raises ``UnsafePickleError`` before anything it names is looked up, let alone called.

    id_map = load("trainval36_img2idx.pkl", "id map")
    info = read_npy_object(zip_member, "x.npz (info)", "info")      # the dict np.save pickled
"""
from __future__ import annotations

import io
import pickle

import numpy as np

try:                     # numpy >= 2 (files written by numpy 1.x name numpy.core, mapped here too)
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:      # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric

# Every global these files name: how numpy rebuilds arrays (``_reconstruct`` up to pickle protocol
# 4, ``_frombuffer`` with protocol 5), dtypes and scalars (``np.int64(3)``), and how protocols 0-2
# store bytes (``_codecs.encode``). Nothing here runs code given to it.
ALLOWED = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): __import__("_codecs").encode,
}
for _module in ("numpy.core", "numpy._core"):
    ALLOWED[(f"{_module}.multiarray", "_reconstruct")] = _multiarray._reconstruct
    ALLOWED[(f"{_module}.multiarray", "scalar")] = _multiarray.scalar
    ALLOWED[(f"{_module}.numeric", "_frombuffer")] = _numeric._frombuffer


class UnsafePickleError(ValueError):
    """A pickle that names something other than plain data; nothing it names was run."""


class _Restricted(pickle.Unpickler):
    def __init__(self, file, where: str, what: str):
        # latin1: Python 2 pickles (hengyuan-hu's id maps) hold numpy data as 8-bit strings
        super().__init__(file, encoding="latin1")
        self.where, self.what = where, what

    def find_class(self, module: str, name: str):
        found = ALLOWED.get((module, name))
        if found is None:
            raise UnsafePickleError(
                f"{self.where}: refused: its pickle names {module}.{name}, which a {self.what} never holds "
                "(only plain types and numpy arrays are read); nothing in it was run")
        return found

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self.where}: refused: its pickle refers to a persistent object, which a "
                                f"{self.what} never holds; nothing in it was run")


def load_from(file, where: str, what: str):
    """The object pickled in the open binary ``file``, admitting only plain data (see the module
    docstring). Raises UnsafePickleError for anything else, ValueError naming ``where`` for a
    pickle that is cut short or not a pickle."""
    try:
        return _Restricted(file, where, what).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            UnicodeDecodeError, MemoryError) as e:
        raise ValueError(f"{where}: not a readable {what} ({type(e).__name__}: {e}; cut short?)") from None


def load(path: str, what: str):
    """``load_from`` the file ``path``."""
    with open(path, "rb") as f:
        return load_from(f, path, what)


def loads(data: bytes, where: str, what: str):
    return load_from(io.BytesIO(data), where, what)


def read_npy_object(file, where: str, what: str):
    """The object ``np.save`` wrote into the ``.npy`` stream ``file`` (a dict, for MMF's info files
    and the npz ``info``): the restricted unpickling of its payload, unwrapped from the 0-d object
    array. An ``.npy`` of plain numbers is returned as its array. Raises as ``load_from``."""
    from numpy.lib import format as npy
    try:
        version = npy.read_magic(file)
        shape, fortran, dtype = (npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0)(file)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{where}: not a readable .npy {what} ({e})") from None
    if not dtype.hasobject:
        count = int(np.prod(shape))
        data = file.read(count * dtype.itemsize)
        if len(data) != count * dtype.itemsize:
            raise ValueError(f"{where}: .npy {what} cut short ({len(data)} of {count * dtype.itemsize} bytes)")
        return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")
    array = load_from(file, where, what)
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{where}: .npy {what} holds a {type(array).__name__}, expected an array")
    return array.item() if array.shape == () else array
