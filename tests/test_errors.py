"""Bad input gets a Python exception naming the argument, what was expected and what came."""

from __future__ import annotations

import numpy as np
import pytest

import eqcore
from conftest import random_net


@pytest.fixture
def setup(rng):
    net = random_net([6, 5, 4], "sigmoid", dtype="float32")
    return net, rng.random((3, 6)).astype(np.float32), rng.random((3, 4)).astype(np.float32)


def test_wrong_input_shape(setup):
    net, x, _ = setup
    with pytest.raises(ValueError, match=r"x: expected shape \(B, 6\), got \(3, 5\)"):
        net.relax(x[:, :5])
    with pytest.raises(ValueError, match=r"x: expected shape \(B, 6\), got \(6,\)"):
        net.energy(x[0], net.zeros(1))


def test_wrong_layer_count_and_shapes(setup):
    net, x, _ = setup
    with pytest.raises(ValueError, match=r"state: expected 2 arrays \(one per layer 1..L\), got 1"):
        net.relax(x, state=net.zeros(3)[:1])
    with pytest.raises(ValueError, match=r"state\[1\]: expected shape \(3, 4\), got \(3, 5\)"):
        net.energy(x, [np.zeros((3, 5)), np.zeros((3, 5))])
    with pytest.raises(TypeError, match=r"state: expected a list of 2 arrays"):
        net.energy(x, np.zeros((3, 9)))
    with pytest.raises(ValueError, match=r"target: expected shape \(3, 4\), got \(3, 3\)"):
        net.relax(x, target=np.zeros((3, 3)), beta=0.5)
    with pytest.raises(ValueError, match=r"v\[0\]: expected shape \(3, 5\), got \(2, 5\)"):
        net.hvp(x, net.zeros(3), net.zeros(2))


@pytest.mark.parametrize("bad", [np.array([["a"] * 6] * 3), np.zeros((3, 6), dtype=object), np.zeros((3, 6), dtype=complex)])
def test_non_numeric_dtypes_are_refused(setup, bad):
    net, _, _ = setup
    with pytest.raises(TypeError, match=rf"x: expected real numbers, got an array of dtype {bad.dtype}"):
        net.relax(bad)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs_are_refused(setup, value):
    net, x, y = setup
    x_bad = x.copy()
    x_bad[1, 2] = value
    with pytest.raises(ValueError, match="x: contains NaN or inf"):
        net.relax(x_bad)
    s = net.zeros(3)
    s[1][0, 0] = value
    with pytest.raises(ValueError, match=r"state\[1\]: contains NaN or inf"):
        net.relax(x, state=s)
    y_bad = y.copy()
    y_bad[0, 0] = value
    with pytest.raises(ValueError, match="target: contains NaN or inf"):
        net.relax(x, target=y_bad, beta=1.0)


def test_weights_replaced_by_wrong_arrays(setup):
    net, x, _ = setup
    good = net.weights[1]
    net.weights[1] = np.zeros((5, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=r"weights\[1\]: expected shape \(5, 4\), got \(5, 3\)"):
        net.relax(x)
    net.weights[1] = good.astype(np.float64)
    with pytest.raises(TypeError, match=r"weights\[1\]: expected dtype float32, got float64"):
        net.relax(x)
    net.weights[1] = np.asfortranarray(good)
    with pytest.raises(ValueError, match=r"weights\[1\]: expected a C-contiguous"):
        net.relax(x)
    ro = good.copy()
    ro.flags.writeable = False
    net.weights[1] = ro
    with pytest.raises(ValueError, match=r"weights\[1\]: expected a writable array, got a read-only one"):
        net.relax(x)
    net.weights[1] = good.tolist()
    with pytest.raises(TypeError, match=r"weights\[1\]: expected a numpy array, got list"):
        net.relax(x)
    net.weights[1] = good
    net.biases.pop()
    with pytest.raises(ValueError, match=r"biases: expected 2 arrays, got 1"):
        net.relax(x)


def test_bad_scalars(setup):
    net, x, y = setup
    with pytest.raises(ValueError, match=r"dt: expected a finite number > 0, got -0.1"):
        net.relax(x, dt=-0.1)
    with pytest.raises(ValueError, match="dt: expected a finite number > 0"):
        net.relax(x, dt=float("nan"))
    with pytest.raises(ValueError, match=r"steps: expected an integer in \[0, 2\*\*62\], got -1"):
        net.relax(x, steps=-1)
    with pytest.raises(ValueError, match="beta: expected a finite number"):
        net.relax(x, target=y, beta=float("inf"))
    with pytest.raises(ValueError, match="target: required when beta != 0"):
        net.relax(x, beta=0.5)
    with pytest.raises(ValueError, match="tol: expected a finite number >= 0"):
        net.relax(x, tol=-1.0)
    with pytest.raises(ValueError, match=r"threads: expected an integer in \[1, 65536\], got 0"):
        net.threads = 0
    with pytest.raises(ValueError, match="x: expected at least one example"):
        net.relax(x[:0])


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="sizes: expected at least 2"):
        eqcore.Network([5])
    with pytest.raises(ValueError, match="sizes: every layer size must be >= 1"):
        eqcore.Network([5, 0, 3])
    with pytest.raises(ValueError, match="activation: expected one of"):
        eqcore.Network([5, 3], activation="relu")
    with pytest.raises(TypeError, match="dtype: expected 'float32' or 'float64'"):
        eqcore.Network([5, 3], dtype="int32")


def test_every_bad_input_in_the_documented_table_raises(tmp_path):
    """tools/bad_inputs.py writes docs/bad-inputs.md; each of its calls must raise a clean error."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / "bad_inputs.py"
    spec = importlib.util.spec_from_file_location("bad_inputs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    count = 0
    for function, what, call in module.cases(tmp_path):
        with pytest.raises((ValueError, TypeError, ArithmeticError)) as info:
            call()
        assert str(info.value), f"{function} / {what}: an error without a message"
        count += 1
    assert count >= 70
