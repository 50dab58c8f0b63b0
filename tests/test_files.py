"""Parameter files: .npz without pickle, atomic writes, clear errors on bad files."""

from __future__ import annotations

import numpy as np
import pytest

import eqcore
from conftest import random_net


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_save_load_round_trip(tmp_path, dtype):
    net = random_net([7, 5, 3, 2], "sigmoid", dtype=dtype, seed=3)
    path = tmp_path / "net.npz"
    net.save(path)
    back = eqcore.Network.load(path)
    assert back.sizes == net.sizes and back.activation == net.activation and back.dtype == net.dtype
    for a, b in zip(back.weights + back.biases, net.weights + net.biases):
        np.testing.assert_array_equal(a, b)
        assert a.flags.writeable and a.flags.c_contiguous
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file was renamed away


def test_glorot_initialisation_is_seeded_and_bounded():
    a, b = eqcore.Network([784, 500, 10], seed=7), eqcore.Network([784, 500, 10], seed=7)
    np.testing.assert_array_equal(a.weights[0], b.weights[0])
    assert not np.array_equal(a.weights[0], eqcore.Network([784, 500, 10], seed=8).weights[0])
    bound = np.sqrt(6 / (784 + 500))
    assert np.abs(a.weights[0]).max() <= bound and np.abs(a.weights[0]).max() > 0.99 * bound
    assert all(np.all(bias == 0) for bias in a.biases)


def test_truncated_file_is_refused(tmp_path):
    path = tmp_path / "net.npz"
    random_net([4, 3, 2]).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable .npz file"):
        eqcore.Network.load(path)


def test_object_arrays_are_refused_without_unpickling(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, format_version=np.array(1), sizes=np.array([4, 3]), activation=np.array("sigmoid"),
             W0=np.array([object()] * 12, dtype=object).reshape(4, 3), b1=np.zeros(3))
    with pytest.raises(ValueError, match="refused"):
        eqcore.Network.load(path)


def test_wrong_architecture_in_file(tmp_path):
    path = tmp_path / "net.npz"
    net = random_net([4, 3, 2])
    net.save(path)
    with np.load(path) as data:
        arrays = dict(data)
    arrays["W1"] = np.zeros((3, 5))
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=r"'W1' has shape \(3, 5\).*expected \(3, 2\)"):
        eqcore.Network.load(path)
    with pytest.raises(ValueError, match="not an eqcore network file"):
        np.savez(path, W0=np.zeros((4, 3)))
        eqcore.Network.load(path)
