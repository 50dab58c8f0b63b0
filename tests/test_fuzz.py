"""Property-based fuzzing of eqcore's public API (issue "Reliability and safety").

Every public entry point gets random shapes, dtypes (float16/32/64, ints, bool, complex, object,
str, bytes, datetime), memory layouts (Fortran order, strided slices, negative strides, unaligned,
broadcast), read-only flags and values (NaN, inf, 1e30, 1e-30, subnormals, exact kinks 0 and 1).
At most one argument of a call is bad. The property:

* a call with one bad argument raises ValueError or TypeError whose message names that argument
  (and changes nothing: parameters, states and inputs are left as they were);
* a valid call returns finite results of the right types, shapes and dtype, bit for bit equal to
  the result for the same values given as C-contiguous arrays of the network's dtype (so no layout
  or dtype garbage), and close to a numpy reference where one is cheap; or, when its numerics
  fail, raises an ArithmeticError (eqcore.DivergenceError, eqcore.NotPositiveDefiniteError);
* never a crash, a hang (a watchdog dumps the stacks and exits), a warning (the suite turns
  warnings into errors) or a non-finite result returned silently.

Profiles
--------
quick  every test, in the normal suite: derandomized (reproducible), database=None, 50-100
       examples per test (640 in all), about 6 s.
long   ``pytest -m slow tests/test_fuzz.py``: random seeds (a failure prints its reproduction
       blob), about 4,900 examples in all, about 45 s (``EQCORE_FUZZ_SCALE=2`` doubles it).
       Plain ``pytest`` selects every marker, so the long profile skips itself unless ``slow``
       appears in ``-m`` (or ``EQCORE_FUZZ=long`` is set).

The findings of earlier runs are kept as plain regression tests at the end of this file.
"""

from __future__ import annotations

import faulthandler
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

import eqcore
from eqcore import algorithms

# --------------------------------------------------------------------------- profiles

_SUPPRESS = [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large,
             HealthCheck.large_base_example]
QUICK = settings(derandomize=True, database=None, deadline=None, print_blob=False,
                 suppress_health_check=_SUPPRESS)
LONG = settings(derandomize=False, database=None, deadline=None, print_blob=True,
                suppress_health_check=_SUPPRESS)
LONG_SCALE = float(os.environ.get("EQCORE_FUZZ_SCALE", "1"))
UNDER_ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")

PROFILES = pytest.mark.parametrize("profile", ["quick", pytest.param("long", marks=pytest.mark.slow)])


def _long_selected(config: pytest.Config) -> bool:
    return "slow" in (config.getoption("markexpr") or "") or os.environ.get("EQCORE_FUZZ") == "long"


@pytest.fixture(autouse=True)
def _watchdog(request):
    """A hang (a kernel that never returns, with the GIL released) would stall CI silently: after
    a generous limit, print every thread's stack and exit."""
    limit = 1800 if "long" in request.node.name else 240
    faulthandler.dump_traceback_later(limit * (10 if UNDER_ASAN else 1), exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def fuzz(request: pytest.FixtureRequest, profile: str, check: Callable[[Any], None], quick: int, long: int) -> None:
    """Run ``check(data)`` as a hypothesis test in the given profile."""
    if profile == "long":
        if not _long_selected(request.config):
            pytest.skip("long fuzzing profile: select it with `pytest -m slow tests/test_fuzz.py`")
        chosen = settings(LONG, max_examples=max(1, int(long * LONG_SCALE)))
    else:
        chosen = settings(QUICK, max_examples=quick)
    chosen(given(data=st.data())(check))()


# --------------------------------------------------------------------------- outcomes

class Fault:
    """The one bad argument of a call: names its error message may use, and what was wrong."""

    def __init__(self, names: tuple[str, ...], what: str) -> None:
        self.names, self.what = names, what

    def __repr__(self) -> str:
        return f"bad {'/'.join(self.names)} ({self.what})"


RAISED = object()


def names_argument(message: str, names: tuple[str, ...]) -> bool:
    return any(re.search(rf"(?<![A-Za-z_]){re.escape(n)}(?![A-Za-z_])", message) for n in names)


def outcome(fault: Optional[Fault], call: Callable[[], Any]) -> Any:
    """``call()`` under the property: returns its result, or RAISED after a permitted exception."""
    try:
        result = call()
    except (ValueError, TypeError) as err:
        if fault is None:
            raise AssertionError(f"a valid call raised {type(err).__name__}: {err}") from err
        assert names_argument(str(err), fault.names), f"{fault}: the message does not name it: {err!r}"
        return RAISED
    except ArithmeticError as err:  # eqcore.DivergenceError, eqcore.NotPositiveDefiniteError
        if fault is not None:
            raise AssertionError(f"{fault}: expected ValueError/TypeError naming it, got {err!r}") from err
        assert str(err), "an ArithmeticError without a message"
        note(f"numerical failure (allowed): {err!r}")
        return RAISED
    if fault is not None:
        raise AssertionError(f"{fault} was accepted and returned {result!r:.300}")
    return result


def assert_finite_array(a: Any, shape: tuple, dtype: np.dtype, what: str) -> None:
    assert isinstance(a, np.ndarray), f"{what}: {type(a).__name__}, not an ndarray"
    assert a.shape == shape, f"{what}: shape {a.shape}, expected {shape}"
    assert a.dtype == dtype, f"{what}: dtype {a.dtype}, expected {dtype}"
    assert np.isfinite(a).all(), f"{what}: non-finite values returned: {a}"


def assert_layers(result: Any, net: eqcore.Network, B: int, what: str, leading: tuple = ()) -> None:
    assert isinstance(result, list), f"{what}: {type(result).__name__}, not a list"
    assert len(result) == net.layers, f"{what}: {len(result)} layers, expected {net.layers}"
    for k, a in enumerate(result, start=1):
        assert_finite_array(a, leading + (B, net.sizes[k]), net.dtype, f"{what}[{k - 1}]")


def assert_params(result: Any, net: eqcore.Network, what: str) -> None:
    assert isinstance(result, tuple) and len(result) == 2, f"{what}: expected (weights, biases)"
    gw, gb = result
    assert len(gw) == len(gb) == net.layers
    for k in range(net.layers):
        assert_finite_array(gw[k], (net.sizes[k], net.sizes[k + 1]), net.dtype, f"{what} weights[{k}]")
        assert_finite_array(gb[k], (net.sizes[k + 1],), net.dtype, f"{what} biases[{k}]")


def flat(result: Any) -> list[np.ndarray]:
    """Every array in a nested result, in order."""
    if isinstance(result, np.ndarray):
        return [result]
    if isinstance(result, (list, tuple)):
        return [a for item in result for a in flat(item)]
    return []


def assert_identical(a: Any, b: Any, what: str) -> None:
    fa, fb = flat(a), flat(b)
    assert len(fa) == len(fb)
    for i, (p, q) in enumerate(zip(fa, fb)):
        assert p.shape == q.shape and p.dtype == q.dtype and np.array_equal(p, q), (
            f"{what}: array {i} differs between the given layout/dtype and its canonical C-contiguous "
            f"copy:\n{p}\nvs\n{q}")


def snapshot(value: Any) -> Any:
    """A deep copy of an argument (to check that a call did not modify it)."""
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, (list, tuple)):
        return [snapshot(v) for v in value]
    return value


def assert_unchanged(before: Any, after: Any, what: str) -> None:
    if isinstance(before, np.ndarray):
        assert isinstance(after, np.ndarray) and after.shape == before.shape
        assert np.array_equal(before, after, equal_nan=before.dtype.kind in "fc"), f"{what} was modified"
    elif isinstance(before, list):
        for i, (b, a) in enumerate(zip(before, after)):
            assert_unchanged(b, a, f"{what}[{i}]")


def params_of(net: eqcore.Network) -> list[np.ndarray]:
    return [w.copy() for w in net.weights] + [b.copy() for b in net.biases]


def assert_params_unchanged(net: eqcore.Network, before: list[np.ndarray], what: str) -> None:
    for i, (b, a) in enumerate(zip(before, list(net.weights) + list(net.biases))):
        assert np.array_equal(b, a, equal_nan=b.dtype.kind in "fc"), f"{what}: parameter {i} was modified"


# --------------------------------------------------------------------------- inputs

ACTIVATIONS = ("hardsigmoid", "sigmoid")
NET_DTYPES = ("float32", "float64")
REAL_DTYPES = (np.float16, np.float32, np.float64, np.int8, np.int32, np.int64, np.uint8)  # bool is refused
LAYOUTS = ("C", "C", "F", "strided", "reversed", "unaligned", "broadcast", "list")
MAGNITUDE = {"unit": 1.0, "tiny": 1e-30, "large": 1e3, "huge": 1e30}
SPECIALS = np.array([0.0, -0.0, 1.0, 0.5, -1.0, 1e-300, 5e-324, -5e-324])
ARRAY_FAULTS = ("cols", "rows", "1d", "3d", "0d", "bool", "complex", "object", "str", "bytes", "datetime",
                "none", "nan", "inf", "-inf")
LIST_FAULTS = ("more", "fewer", "ndarray", "generator", "dict", "entry", "entry", "entry")
BATCHES = st.one_of(st.integers(1, 5), st.sampled_from([32, 33, 65]))


@st.composite
def networks(draw, dtypes=NET_DTYPES, max_layers: int = 3, max_size: int = 5) -> eqcore.Network:
    L = draw(st.integers(1, max_layers), label="free layers")
    sizes = draw(st.lists(st.integers(1, max_size), min_size=L + 1, max_size=L + 1), label="sizes")
    seed = draw(st.integers(0, 2**16), label="seed")
    net = eqcore.Network(sizes, activation=draw(st.sampled_from(ACTIVATIONS), label="activation"),
                         dtype=draw(st.sampled_from(dtypes), label="dtype"), seed=seed,
                         threads=draw(st.integers(1, 3), label="threads"))
    rng = np.random.default_rng(seed)
    for b in net.biases:
        b[...] = rng.uniform(-0.5, 1.0, b.shape)
    return net


def cast(values: np.ndarray, dtype: Any) -> np.ndarray:
    dtype = np.dtype(dtype)
    with np.errstate(all="ignore"):
        if dtype.kind == "b":
            return values > 0.5
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            return np.clip(np.round(values), info.min, info.max).astype(dtype)
        return values.astype(dtype)


def relayout(a: np.ndarray, kind: str) -> Any:
    if kind == "C":
        return np.ascontiguousarray(a)
    if kind == "F":
        return np.asfortranarray(a)
    if kind == "strided":
        return np.repeat(a, 2, axis=-1)[..., ::2] if a.ndim else a
    if kind == "reversed":
        return np.flip(np.flip(a).copy())
    if kind == "unaligned":
        out = np.ndarray(a.shape, a.dtype, buffer=bytearray(a.nbytes + 1), offset=1)
        out[...] = a
        return out
    if kind == "broadcast":
        return np.broadcast_to(a[:1], a.shape) if a.ndim and len(a) else a
    if kind == "list":
        return a.tolist()
    raise AssertionError(kind)


def canonical(value: Any, dtype: np.dtype) -> Any:
    """What eqcore documents an input is converted to: C-contiguous, of the network's dtype."""
    if value is None:
        return None
    return np.ascontiguousarray(np.asarray(value), dtype=dtype)


def canonical_layers(value: Any, dtype: np.dtype) -> Any:
    return None if value is None else [canonical(v, dtype) for v in value]


class Gen:
    """Draws the arguments of one call: good ones (any real dtype, layout, read-only flag) and,
    for the argument ``bad`` names, a bad one (recorded in ``fault``)."""

    def __init__(self, data, net: eqcore.Network, B: int, magnitudes: tuple[str, ...], bad: Optional[str]) -> None:
        self.data, self.net, self.B, self.bad = data, net, B, bad
        self.magnitude = data.draw(st.sampled_from(magnitudes), label="magnitude")
        self.fault: Optional[Fault] = None

    def draw(self, strategy, label: str):
        return self.data.draw(strategy, label=label)

    def values(self, shape: tuple, label: str) -> np.ndarray:
        rng = np.random.default_rng(self.draw(st.integers(0, 2**32 - 1), f"{label} values"))
        v = rng.uniform(-1.0, 2.0, size=shape) * MAGNITUDE[self.magnitude]
        if v.size and self.draw(st.booleans(), f"{label} specials"):
            mask = rng.random(shape) < 0.4
            v[mask] = rng.choice(SPECIALS, size=int(mask.sum()))
        return v

    def good_array(self, shape: tuple, label: str, exact: bool = False) -> Any:
        """Finite values of ``shape``; ``exact``: of the network's dtype, C-contiguous, writable."""
        v = self.values(shape, label)
        if exact:
            return cast(v, self.net.dtype)
        dtypes = REAL_DTYPES if self.magnitude != "huge" else tuple(d for d in REAL_DTYPES if d is not np.float16)
        a = cast(v, self.draw(st.sampled_from(dtypes), f"{label} dtype"))
        kind = self.draw(st.sampled_from(LAYOUTS), f"{label} layout")
        a = relayout(a, kind)
        if isinstance(a, np.ndarray) and a.flags.writeable and self.draw(st.booleans(), f"{label} read-only"):
            a.flags.writeable = False
        return a

    def bad_array(self, shape: tuple, label: str, names: tuple[str, ...], leading_rows: bool = True) -> Any:
        kinds = [k for k in ARRAY_FAULTS if leading_rows or k != "rows"]
        kind = self.draw(st.sampled_from(kinds), f"{label} fault")
        self.fault = Fault(names, f"{label}: {kind}")
        v = self.values(shape, label)
        if kind == "cols":
            n = shape[-1]
            cols = self.draw(st.sampled_from([n + 1, n - 1 if n > 1 else 0]), "cols")
            return self.values(shape[:-1] + (cols,), label)
        if kind == "rows":  # for x: an empty batch; otherwise a batch other than x's
            return self.values((0 if not leading_rows else shape[0] + 1,) + shape[1:], label)
        if kind == "1d":
            return v.reshape(-1) if v.shape[0] > 1 or len(shape) < 2 else v[0]
        if kind == "3d":
            return v[None]
        if kind == "0d":
            return np.float64(v.flat[0]) if v.size else np.float64(0.0)
        if kind == "bool":
            return v > 0.5
        if kind == "complex":
            return v + 1j * self.draw(st.sampled_from([0.0, 1.0]), "imag")
        if kind == "object":
            return v.astype(object)
        if kind == "str":
            return v.astype(str)
        if kind == "bytes":
            return v.astype("S12")
        if kind == "datetime":
            return np.zeros(shape, dtype="M8[s]")
        if kind == "none":
            return None
        # nan / inf / -inf somewhere, in a float dtype that can hold it
        a = cast(v, self.draw(st.sampled_from([np.float16, np.float32, np.float64]), f"{label} dtype"))
        a.flat[self.draw(st.integers(0, a.size - 1), f"{label} where")] = float(kind)
        layouts = [k for k in LAYOUTS if k != "broadcast"]  # (broadcasting row 0 could drop the bad value)
        return relayout(a, self.draw(st.sampled_from(layouts), f"{label} layout"))

    # -- arguments ---------------------------------------------------------------------

    def x(self) -> Any:
        shape = (self.B, self.net.sizes[0])
        if self.bad == "x":
            if self.draw(st.booleans(), "x empty batch"):
                self.fault = Fault(("x",), "x: empty batch")
                return np.zeros((0, self.net.sizes[0]))
            return self.bad_array(shape, "x", ("x",), leading_rows=False)
        return self.good_array(shape, "x")

    def array(self, name: str, n: int, names: Optional[tuple[str, ...]] = None, exact: bool = False) -> Any:
        if self.bad == name:
            return self.bad_array((self.B, n), name, names or (name,))
        return self.good_array((self.B, n), name, exact)

    def layers(self, name: str, names: Optional[tuple[str, ...]] = None, exact: bool = False,
               exact_faults: bool = False, bad_layers: Optional[list[int]] = None) -> Any:
        """A list of (B, n_k) arrays. ``exact``: of the network's dtype, C-contiguous and writable
        (and then ``exact_faults`` adds other dtypes, layouts and read-only arrays as faults)."""
        names = names or (name,)
        sizes = self.net.sizes[1:]
        if self.bad != name:
            return [self.good_array((self.B, n), f"{name}[{k}]", exact) for k, n in enumerate(sizes)]
        kind = self.draw(st.sampled_from(LIST_FAULTS + (("inexact",) * 3 if exact_faults else ())), f"{name} fault")
        good = [self.good_array((self.B, n), f"{name}[{k}]", True) for k, n in enumerate(sizes)]
        self.fault = Fault(names, f"{name}: {kind}")
        if kind == "more":
            return good + [good[-1].copy()]
        if kind == "fewer":
            return good[:-1]
        if kind == "ndarray":
            return np.zeros((self.B, sum(sizes)), self.net.dtype)
        if kind == "generator":
            return (a for a in good)
        if kind == "dict":
            return dict(enumerate(good))
        k = self.draw(st.sampled_from(bad_layers or list(range(len(sizes)))), f"{name} bad layer")
        if kind == "entry":
            good[k] = self.bad_array((self.B, sizes[k]), f"{name}[{k}]", names)
        else:  # inexact: a real array the in-place kernel must refuse rather than convert
            how = self.draw(st.sampled_from(["dtype", "F", "strided", "reversed", "read-only", "list"]), "inexact")
            self.fault = Fault(names, f"{name}[{k}]: {how}")
            a = good[k]
            if how == "dtype":
                other = np.float64 if a.dtype == np.float32 else np.float32
                good[k] = a.astype(self.draw(st.sampled_from([np.float16, np.int32, other]), "other dtype"))
            elif how == "read-only":
                a.flags.writeable = False
            elif how == "list":
                good[k] = a.tolist()
            else:
                b = np.zeros((a.shape[0] + 1, a.shape[1] + 1), a.dtype)[:-1, :-1] if how == "strided" else relayout(a, how)
                if how == "strided":
                    b[...] = a
                if b.flags.c_contiguous:  # (B, 1) or (1, n) arrays are both C and F contiguous
                    b = np.zeros((a.shape[0], 2 * a.shape[1]), a.dtype)[:, ::2]
                    self.fault = Fault(names, f"{name}[{k}]: strided")
                if b.flags.c_contiguous:  # (1, 1): contiguous whatever its strides
                    b = a.astype(np.float16)
                    self.fault = Fault(names, f"{name}[{k}]: float16")
                good[k] = b
        return good

    def scalar(self, name: str, good, bad, names: Optional[tuple[str, ...]] = None):
        if self.bad == name:
            value = self.draw(st.sampled_from(bad), f"{name} (bad)")
            self.fault = Fault(names or (name,), f"{name}={value!r}")
            return value
        value = self.draw(good, name)
        if name in NARROWED and not representable(value, self.net.dtype):
            # A finite double the network's dtype cannot hold (1e300) or rounds to 0 (1e-300) must be
            # refused by name; with another argument already bad, a plain value keeps one fault.
            if self.fault is not None or self.bad is not None:
                return 0.5
            self.fault = Fault((name,), f"{name}={value!r} in {self.net.dtype}")
        return value


NARROWED = ("dt", "beta")  # scalars the kernel holds in the network's dtype


def representable(value: Any, dtype: np.dtype) -> bool:
    v = float(value)
    with np.errstate(over="ignore", under="ignore"):
        t = float(np.dtype(dtype).type(v))
    return math.isfinite(t) and (t != 0 or v == 0)


def finite_floats(lo: float, hi: float):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


NOT_FINITE = [math.nan, math.inf, -math.inf]
BAD_COUNTS = [-1, -7, 1.5, True, False, "3", None, np.float64(2.0)]
GOOD_STEPS = st.one_of(st.integers(0, 30), st.sampled_from([np.int64(3), np.int32(1), 0]))
GOOD_DT = st.one_of(finite_floats(1e-3, 2.5), st.sampled_from([0.5, 1, np.float32(0.25), 1e-300, 1e300]))
BAD_DT = [0.0, -0.0, -0.5, -math.inf] + NOT_FINITE
GOOD_BETA = st.one_of(finite_floats(-10, 10), st.sampled_from([0.0, 0, 1, 0.5, -1.0, 1e-30, np.float32(0.7)]))
GOOD_TOL = st.one_of(st.none(), finite_floats(1e-8, 1.0), st.sampled_from([0.0, 1e-300]))
BAD_TOL = [-1e-3, -1.0] + NOT_FINITE
GOOD_CLIP = st.sampled_from([None, True, False, np.True_, np.False_])
BAD_FLAGS = ["no", "", 1, 0.0, [True], np.array([True, False])]


# Value scales to draw from. 'huge' inputs overflow float32 results (their squares or products pass
# 3.4e38): the property then asks for an ArithmeticError (OverflowError), not inf.
MAGNITUDES = ("unit", "unit", "tiny", "large", "huge")


def bad_choice(data, names: list[str], valid_weight: int = 4) -> Optional[str]:
    return data.draw(st.sampled_from([None] * valid_weight + names), label="bad argument")


# --------------------------------------------------------------------------- numpy references

def _rho(net: eqcore.Network, s: np.ndarray) -> np.ndarray:
    if net.activation == "hardsigmoid":
        return np.clip(s, 0.0, 1.0)
    with np.errstate(over="ignore"):  # exp(-s) = inf for s < -710: rho = 0, as it should be
        return 1.0 / (1.0 + np.exp(-s))


def _drho(net: eqcore.Network, s: np.ndarray) -> np.ndarray:
    if net.activation == "hardsigmoid":
        return ((s >= 0) & (s <= 1)).astype(np.float64)
    r = _rho(net, s)
    return r * (1 - r)


def _params64(net):
    return [w.astype(np.float64) for w in net.weights], [b.astype(np.float64) for b in net.biases]


def _mag(net, a):
    """|a| for error bounds, plus what rho may lose to underflow in the network's dtype (a sigmoid
    of -100 is 3.7e-44 in float64 and 0 in float32: times an input of 1e30 that is an absolute,
    not a relative, difference)."""
    return np.abs(a) + 4 * float(np.finfo(net.dtype).tiny)


def reference_energy(net, x, s):
    """E per example and a scale for its rounding error (the same sum of absolute terms)."""
    W, b = _params64(net)
    with np.errstate(all="ignore"):
        s = [a.astype(np.float64) for a in s]
        R = [x.astype(np.float64)] + [_rho(net, a) for a in s]
        e = sum(0.5 * (a * a).sum(1) for a in s)
        scale = e.copy()
        for k in range(net.layers):
            e = e - ((R[k] @ W[k]) * R[k + 1]).sum(1) - R[k + 1] @ b[k]
            scale = scale + ((_mag(net, R[k]) @ np.abs(W[k])) * _mag(net, R[k + 1])).sum(1) \
                + _mag(net, R[k + 1]) @ np.abs(b[k])
    return e, scale


def reference_grad_state(net, x, s, y, beta):
    W, b = _params64(net)
    s = [a.astype(np.float64) for a in s]
    R = [x.astype(np.float64)] + [_rho(net, a) for a in s]
    out, scale = [], []
    L = net.layers
    for k in range(1, L + 1):
        u = R[k - 1] @ W[k - 1] + b[k - 1]
        au = np.abs(R[k - 1]) @ np.abs(W[k - 1]) + np.abs(b[k - 1])
        if k < L:
            u = u + R[k + 1] @ W[k].T
            au = au + np.abs(R[k + 1]) @ np.abs(W[k]).T
        g = s[k - 1] - _drho(net, s[k - 1]) * u
        a = np.abs(s[k - 1]) + au
        if k == L and beta != 0:
            y64 = y.astype(np.float64)
            g = g + beta * (s[k - 1] - y64)
            a = a + abs(beta) * (np.abs(s[k - 1]) + np.abs(y64))
        out.append(g)
        scale.append(a)
    return out, scale


def reference_grad_params(net, x, s):
    B = x.shape[0]
    R = [x.astype(np.float64)] + [_rho(net, a.astype(np.float64)) for a in s]
    gw = [-(R[k].T @ R[k + 1]) / B for k in range(net.layers)]
    sw = [(_mag(net, R[k]).T @ _mag(net, R[k + 1])) / B for k in range(net.layers)]
    gb = [-R[k].mean(0) for k in range(1, net.layers + 1)]
    sb = [_mag(net, R[k]).mean(0) for k in range(1, net.layers + 1)]
    return (gw, gb), (sw, sb)


def reference_relax(net, x, s0, y, beta, steps, dt, clip):
    W, b = _params64(net)
    x = x.astype(np.float64)
    s = [a.astype(np.float64) for a in s0]
    L = net.layers
    for _ in range(steps):
        R = [x] + [_rho(net, a) for a in s]
        new = []
        for k in range(1, L + 1):
            u = R[k - 1] @ W[k - 1] + b[k - 1]
            if k < L:
                u = u + R[k + 1] @ W[k].T
            g = s[k - 1] - _drho(net, s[k - 1]) * u
            if k == L and beta != 0:
                g = g + beta * (s[k - 1] - y)
            a = s[k - 1] - dt * g
            new.append(np.clip(a, 0, 1) if clip else a)
        s = new
    return s


def rel_tol(net) -> float:
    return 2e-5 if net.dtype == np.float32 else 1e-12


def assert_close(got, ref, scale, net, what):
    got = np.asarray(got, np.float64)
    bound = rel_tol(net) * (np.asarray(scale) + 1e-30) + (1e-30 if net.dtype == np.float64 else 1e-30)
    bad = np.abs(got - ref) > bound
    assert not bad.any(), f"{what}: differs from the numpy reference:\n{got}\nvs\n{ref}\n(bound {bound})"


# --------------------------------------------------------------------------- Network methods

def check_relax(data) -> None:
    net = data.draw(networks(), label="net")
    B = data.draw(BATCHES, label="B")
    bad = bad_choice(data, ["x", "state", "target", "beta", "steps", "dt", "tol", "clip", "record"])
    g = Gen(data, net, B, MAGNITUDES, bad)
    x = g.x()
    state = None if (bad != "state" and g.draw(st.booleans(), "zero start")) else g.layers("state")
    beta = g.scalar("beta", GOOD_BETA, NOT_FINITE)
    if bad == "target":
        if g.draw(st.booleans(), "target missing"):
            target, beta = None, (beta or 1.0)
            g.fault = Fault(("target", "beta"), "target: missing while beta != 0")
        else:
            target = g.array("target", net.sizes[-1])
            if target is None:  # the "none" fault: a fault only where beta needs a target
                beta = beta or 1.0
    else:
        needs = bad != "beta" and beta != 0
        target = g.array("target", net.sizes[-1]) if needs or g.draw(st.booleans(), "target given") else None
    steps = g.scalar("steps", GOOD_STEPS, BAD_COUNTS)
    dt = g.scalar("dt", GOOD_DT, BAD_DT)
    tol = g.scalar("tol", GOOD_TOL, BAD_TOL)
    clip = g.scalar("clip", GOOD_CLIP, BAD_FLAGS)
    record = g.scalar("record", st.booleans(), BAD_FLAGS)
    kwargs = dict(state=state, target=target, beta=beta, steps=steps, dt=dt, clip=clip, tol=tol, record=record)
    before = snapshot([x, state, target])
    res = outcome(g.fault, lambda: net.relax(x, **kwargs))
    if not isinstance(state, (list, type(None))):
        return
    assert_unchanged(before, [x, state, target], "an input")
    if res is RAISED:
        return
    assert isinstance(res, eqcore.Relaxation)
    assert_layers(list(res), net, B, "relax")
    assert isinstance(res.steps, int) and 0 <= res.steps <= steps
    if not tol:
        assert res.steps == steps
    elif steps:
        assert res.steps >= 1
    clipped = clip if clip is not None else net.activation == "hardsigmoid"
    if clipped and res.steps:
        assert all(((a >= 0) & (a <= 1)).all() for a in res), "clip=True left values outside [0, 1]"
    start = net.zeros(B) if state is None else canonical_layers(state, net.dtype)
    if record:
        assert isinstance(res.trajectory, list)
        assert_layers(res.trajectory, net, B, "trajectory", leading=(res.steps + 1,))
        for t, r, s0 in zip(res.trajectory, res, start):
            assert np.array_equal(t[-1], r) and np.array_equal(t[0], s0)
    else:
        assert res.trajectory is None
    again = net.relax(canonical(x, net.dtype), **dict(kwargs, state=canonical_layers(state, net.dtype),
                                                         target=canonical(target, net.dtype)))
    assert_identical(list(res), list(again), "relax")
    assert again.steps == res.steps
    if net.dtype == np.float64 and not tol and (clipped or net.activation == "sigmoid") and float(dt) <= 1.0:
        xc, yc = canonical(x, net.dtype), canonical(target, net.dtype)
        ref = reference_relax(net, xc, start, yc, float(beta), steps, float(dt), clipped)
        given = [xc] + start + ([abs(float(beta)) * yc] if yc is not None else [])
        scale = max([1.0] + [float(np.abs(a).max()) for a in given])
        for k, (r, e) in enumerate(zip(res, ref)):
            assert np.allclose(r, e, rtol=1e-9, atol=1e-9 * scale), f"relax layer {k}: kernel vs numpy Euler:\n{r}\n{e}"


def check_energy_family(data) -> None:
    """energy, cost, energy_grad_state, energy_grad_params, hvp, mixed_hvp, predict."""
    net = data.draw(networks(), label="net")
    B = data.draw(BATCHES, label="B")
    method = data.draw(st.sampled_from(["energy", "cost", "energy_grad_state", "energy_grad_params", "hvp",
                                        "mixed_hvp", "predict"]), label="method")
    args = {"energy": ["x", "state"], "cost": ["state", "target"], "energy_grad_state": ["x", "state", "target", "beta"],
            "energy_grad_params": ["x", "state"], "hvp": ["x", "state", "v", "beta"], "mixed_hvp": ["x", "state", "v"],
            "predict": ["x", "steps", "dt", "tol"]}[method]
    bad = bad_choice(data, args, valid_weight=3)
    g = Gen(data, net, B, MAGNITUDES, bad)
    x = g.x() if "x" in args else None
    # cost takes its batch size from the state: a state and a target with different batch sizes
    # may blame either.
    state = None
    if "state" in args:
        state = g.layers("state", names=("state", "target") if method == "cost" else None)
    v = g.layers("v") if "v" in args else None
    beta = g.scalar("beta", GOOD_BETA, NOT_FINITE) if "beta" in args else 0.0
    target = None
    if "target" in args:
        if method == "energy_grad_state" and bad == "target" and g.draw(st.booleans(), "target missing"):
            target, beta = None, (beta or 1.0)
            g.fault = Fault(("target", "beta"), "target: missing while beta != 0")
        elif method == "energy_grad_state" and bad != "target" and beta == 0 and g.draw(st.booleans(), "no target"):
            target = None
        else:
            target = g.array("target", net.sizes[-1])
            if method == "energy_grad_state" and target is None:  # "none": a fault only where beta needs it
                beta = beta or 1.0
    dtc = lambda a: canonical(a, net.dtype)  # noqa: E731
    if method == "energy":
        call = lambda x, state, target, v: net.energy(x, state)  # noqa: E731
    elif method == "cost":
        call = lambda x, state, target, v: net.cost(state, target)  # noqa: E731
    elif method == "energy_grad_state":
        call = lambda x, state, target, v: net.energy_grad_state(x, state, target, beta=beta)  # noqa: E731
    elif method == "energy_grad_params":
        call = lambda x, state, target, v: net.energy_grad_params(x, state)  # noqa: E731
    elif method == "hvp":
        call = lambda x, state, target, v: net.hvp(x, state, v, beta=beta)  # noqa: E731
    elif method == "mixed_hvp":
        call = lambda x, state, target, v: net.mixed_hvp(x, state, v)  # noqa: E731
    else:
        steps = g.scalar("steps", GOOD_STEPS, BAD_COUNTS)
        dt = g.scalar("dt", GOOD_DT, BAD_DT)
        tol = g.scalar("tol", GOOD_TOL, BAD_TOL)
        clip = g.draw(GOOD_CLIP, "clip")
        call = lambda x, state, target, v: net.predict(x, steps=steps, dt=dt, tol=tol, clip=clip)  # noqa: E731
    before = snapshot([x, state, target, v])
    res = outcome(g.fault, lambda: call(x, state, target, v))
    if any(isinstance(a, type(a for a in [])) for a in (state, v)):
        return  # a generator was consumed; nothing to compare
    assert_unchanged(before, [x, state, target, v], "an input")
    if res is RAISED:
        return
    if method in ("energy", "cost"):
        assert_finite_array(res, (B,), net.dtype, method)
    elif method in ("energy_grad_state", "hvp"):
        assert_layers(res, net, B, method)
    elif method == "predict":
        assert isinstance(res, np.ndarray) and res.shape == (B,) and res.dtype.kind == "i"
        assert ((res >= 0) & (res < net.sizes[-1])).all()
    else:
        assert_params(res, net, method)
    dtl = lambda a: canonical_layers(a, net.dtype)  # noqa: E731
    again = call(dtc(x), dtl(state), dtc(target), dtl(v))
    assert_identical(res, again, method)
    # numpy references (cheap ones), on the values the kernel saw
    xc, sc, yc = dtc(x), dtl(state), dtc(target)
    if method == "energy":
        e, scale = reference_energy(net, xc, sc)
        assert_close(res, e, scale, net, "energy")
    elif method == "cost":
        d = sc[-1].astype(np.float64) - yc.astype(np.float64)
        bound = 0.5 * ((np.abs(sc[-1]) + np.abs(yc)).astype(np.float64) ** 2).sum(1)
        assert_close(res, 0.5 * (d * d).sum(1), bound, net, "cost")
    elif method == "energy_grad_state":
        ref, scale = reference_grad_state(net, xc, sc, yc, float(beta))
        for k in range(net.layers):
            assert_close(res[k], ref[k], scale[k], net, f"energy_grad_state[{k}]")
    elif method == "energy_grad_params":
        (gw, gb), (sw, sb) = reference_grad_params(net, xc, sc)
        for k in range(net.layers):
            assert_close(res[0][k], gw[k], sw[k], net, f"dE/dW_{k}")
            assert_close(res[1][k], gb[k], sb[k], net, f"dE/db_{k + 1}")


@PROFILES
def test_fuzz_relax(request, profile):
    fuzz(request, profile, check_relax, quick=80, long=800)


@PROFILES
def test_fuzz_energy_gradients_hvp_predict(request, profile):
    fuzz(request, profile, check_energy_family, quick=100, long=1000)


# --------------------------------------------------------------------------- algorithms

GOOD_EP_BETA = st.one_of(finite_floats(1e-4, 5.0), finite_floats(-5.0, -1e-4), st.sampled_from([1, 0.5, np.float32(0.25)]))
BAD_EP_BETA = [0.0, 0, -0.0] + NOT_FINITE
TINY_BETA = [1e-320, -1e-320]  # 1/beta overflows float32 and float64
SMALL_DT = st.one_of(finite_floats(1e-3, 1.0), st.sampled_from([0.5, 1, np.float32(0.25)]))
VARIANTS = st.sampled_from(algorithms.EP_VARIANTS)
BAD_VARIANTS = ["two-sided", "", "Symmetric", None, 3]


def _rng_for(variant: str, g: Gen, bad: Optional[str]):
    if variant != "random-sign":
        return g.draw(st.sampled_from([None, np.random.default_rng(1)]), "rng")
    if bad == "rng":
        g.fault = Fault(("rng",), "rng: missing for random-sign")
        return None
    return np.random.default_rng(g.draw(st.integers(0, 99), "rng seed"))


def check_ep_gradient(data) -> None:
    net = data.draw(networks(), label="net")
    B = data.draw(BATCHES, label="B")
    bad = bad_choice(data, ["x", "target", "free_state", "beta", "steps", "dt", "variant", "rng"])
    g = Gen(data, net, B, ("unit", "unit", "tiny", "large"), bad)
    x = g.x()
    target = None if bad == "target" and g.draw(st.booleans(), "target None") else g.array("target", net.sizes[-1])
    if target is None:
        g.fault = Fault(("target",), "target: None")
    free = g.layers("free_state", names=("free_state", "state"))
    beta = g.scalar("beta", GOOD_EP_BETA, BAD_EP_BETA + TINY_BETA)
    steps = g.scalar("steps", GOOD_STEPS, BAD_COUNTS)
    dt = g.scalar("dt", SMALL_DT, BAD_DT)
    variant = g.scalar("variant", VARIANTS, BAD_VARIANTS)
    rng = _rng_for(variant, g, bad) if variant in algorithms.EP_VARIANTS else None
    clip = g.draw(GOOD_CLIP, "clip")  # (bad == "rng" with a deterministic variant: a valid call)

    def call(x, target, free, rng):
        return algorithms.ep_gradient(net, x, target, free, beta=beta, steps=steps, dt=dt, clip=clip,
                                      variant=variant, rng=rng)

    seed_state = None if rng is None else rng.bit_generator.state
    before = snapshot([x, target, free])
    res = outcome(g.fault, lambda: call(x, target, free, rng))
    if isinstance(free, (list, type(None))):
        assert_unchanged(before, [x, target, free], "an input")
    if res is RAISED:
        return
    assert_params(res, net, "ep_gradient")
    rng2 = None
    if seed_state is not None:
        rng2 = np.random.default_rng()
        rng2.bit_generator.state = seed_state
    again = call(canonical(x, net.dtype), canonical(target, net.dtype), canonical_layers(free, net.dtype), rng2)
    assert_identical(res, again, "ep_gradient")


def check_ep_train_step(data) -> None:
    net = data.draw(networks(), label="net")
    B = data.draw(BATCHES, label="B")
    bad = bad_choice(data, ["x", "target", "state", "free_steps", "nudged_steps", "beta", "learning_rates", "dt",
                            "variant", "rng"])
    g = Gen(data, net, B, ("unit", "unit", "tiny", "large"), bad)
    x = g.x()
    target = g.array("target", net.sizes[-1])
    # the state is updated in place: it must be of the network's dtype, C-contiguous and writable
    state = g.layers("state", exact=True, exact_faults=True)
    free_steps = g.scalar("free_steps", GOOD_STEPS, BAD_COUNTS)
    nudged_steps = g.scalar("nudged_steps", GOOD_STEPS, BAD_COUNTS)
    beta = g.scalar("beta", GOOD_EP_BETA, BAD_EP_BETA + TINY_BETA)
    if bad == "learning_rates":
        kinds = ["fewer", "more", "nan", "inf"] + (["beyond float32"] if net.dtype == np.float32 else [])
        kind = g.draw(st.sampled_from(kinds), "learning_rates fault")
        g.fault = Fault(("learning_rates",), f"learning_rates: {kind}")
        lrs = {"fewer": [0.1] * (net.layers - 1), "more": [0.1] * (net.layers + 1),
               "nan": [math.nan] * net.layers, "inf": [0.1] * (net.layers - 1) + [math.inf],
               "beyond float32": [1e39] * net.layers}[kind]
    else:
        lrs = g.draw(st.lists(finite_floats(0, 2), min_size=net.layers, max_size=net.layers), "learning_rates")
        lrs = g.draw(st.sampled_from([list, tuple, np.array]), "learning_rates type")(lrs)
    dt = g.scalar("dt", SMALL_DT, BAD_DT)
    variant = g.scalar("variant", VARIANTS, BAD_VARIANTS)
    rng = _rng_for(variant, g, bad) if variant in algorithms.EP_VARIANTS else None
    clip = g.draw(GOOD_CLIP, "clip")
    params = params_of(net)
    inputs = snapshot([x, target])
    start = snapshot(state) if isinstance(state, list) else None
    res = outcome(g.fault, lambda: algorithms.ep_train_step(
        net, x, target, state, free_steps=free_steps, nudged_steps=nudged_steps, beta=beta, learning_rates=lrs,
        dt=dt, clip=clip, variant=variant, rng=rng))
    assert_unchanged(inputs, [x, target], "an input")
    if res is RAISED:
        # refused, or diverged: the parameters are left as they were (documented); a refused state too
        assert_params_unchanged(net, params, "ep_train_step that raised")
        if g.fault is not None and start is not None:
            assert_unchanged(start, state, "the state of a refused ep_train_step")
        return
    assert isinstance(res, float) and abs(res) == abs(float(beta))
    for i, p in enumerate(list(net.weights) + list(net.biases)):
        assert np.isfinite(p).all(), f"ep_train_step left a non-finite parameter {i}"
    assert_layers(state, net, B, "state after ep_train_step")
    clipped = clip if clip is not None else net.activation == "hardsigmoid"
    if clipped and free_steps:
        assert all(((a >= 0) & (a <= 1)).all() for a in state)


def check_rbp(data) -> None:
    net = data.draw(networks(), label="net")
    B = data.draw(BATCHES, label="B")
    bad = bad_choice(data, ["x", "target", "free_state", "steps", "dt", "tol"])
    g = Gen(data, net, B, ("unit", "unit", "tiny", "large"), bad)
    x = g.x()
    target = g.array("target", net.sizes[-1])
    free = g.layers("free_state", names=("free_state", "state"))
    steps = g.scalar("steps", GOOD_STEPS, BAD_COUNTS)
    dt = g.scalar("dt", SMALL_DT, BAD_DT)
    tol = g.scalar("tol", GOOD_TOL, BAD_TOL)
    record = g.draw(st.booleans(), "record")
    via = g.draw(st.sampled_from(["rbp", "rbp_gradient"]), "function")
    before = snapshot([x, target, free])
    if via == "rbp":
        def call(x, target, free):
            return algorithms.rbp(net, x, target, free, steps=steps, dt=dt, tol=tol, record=record)
    else:
        if bad == "tol":
            g.fault = None  # rbp_gradient has no tol
        def call(x, target, free):
            return algorithms.rbp_gradient(net, x, target, free, steps=steps, dt=dt)
    res = outcome(g.fault, lambda: call(x, target, free))
    if isinstance(free, (list, type(None))):
        assert_unchanged(before, [x, target, free], "an input")
    if res is RAISED:
        return
    again = call(canonical(x, net.dtype), canonical(target, net.dtype), canonical_layers(free, net.dtype))
    if via == "rbp_gradient":
        assert_params(res, net, "rbp_gradient")
        assert_identical(res, again, "rbp_gradient")
        return
    assert_layers(res.sbar, net, B, "rbp sbar")
    assert_params(res.gradient, net, "rbp gradient")
    assert isinstance(res.steps, int) and 0 <= res.steps <= steps and (tol or res.steps == steps)
    if record:
        assert_layers(res.trajectory, net, B, "rbp trajectory", leading=(res.steps + 1,))
        for t, s in zip(res.trajectory, res.sbar):
            assert np.array_equal(t[-1], s)
        y, s_out = canonical(target, net.dtype), canonical(free[-1], net.dtype)
        assert np.array_equal(res.trajectory[-1][0], s_out - y), "Sbar_0 is not dC/ds = s_L - y"
    else:
        assert res.trajectory is None
    assert_identical([res.sbar, res.gradient], [again.sbar, again.gradient], "rbp")


def check_solvers(data) -> None:
    """solve_hessian, implicit_gradient, bptt_gradient, fixed_point."""
    net = data.draw(networks(), label="net")
    B = data.draw(BATCHES, label="B")
    fn = data.draw(st.sampled_from(["solve_hessian", "implicit_gradient", "bptt_gradient", "fixed_point"]), label="function")
    args = {"solve_hessian": ["x", "state", "rhs", "beta", "tol", "max_iter"],
            "implicit_gradient": ["x", "target", "free_state", "tol", "max_iter"],
            "bptt_gradient": ["x", "target", "state", "steps", "dt"],
            "fixed_point": ["x", "state", "tol", "dt", "max_euler_steps", "max_newton_steps"]}[fn]
    bad = bad_choice(data, args)
    g = Gen(data, net, B, ("unit", "unit", "tiny", "large"), bad)
    x = g.x()
    if fn == "solve_hessian":
        state = g.layers("state")
        rhs = g.layers("rhs")
        beta = g.scalar("beta", finite_floats(0, 10), NOT_FINITE)
        tol = g.scalar("tol", st.sampled_from([1e-10, 1e-6, 1e-3, 0.5]), [0.0, -1e-3] + NOT_FINITE)
        max_iter = g.scalar("max_iter", st.integers(1, 50), [0, -1, 1.5, None, "9"])
        inputs = [x, state, rhs]

        def call(x, state, rhs):
            return algorithms.solve_hessian(net, x, state, rhs, beta=beta, tol=tol, max_iter=max_iter)
    elif fn == "implicit_gradient":
        target = g.array("target", net.sizes[-1])
        state = g.layers("free_state", names=("free_state", "state"))
        tol = g.scalar("tol", st.sampled_from([1e-10, 1e-6, 1e-3]), [0.0, -1e-3] + NOT_FINITE)
        max_iter = g.scalar("max_iter", st.integers(1, 50), [0, -1, 1.5, None, "9"])
        rhs = target
        inputs = [x, state, target]

        def call(x, state, rhs):
            return algorithms.implicit_gradient(net, x, rhs, state, tol=tol, max_iter=max_iter)
    elif fn == "bptt_gradient":
        rhs = g.array("target", net.sizes[-1])
        state = None if bad != "state" and g.draw(st.booleans(), "zero start") else g.layers("state")
        steps = g.scalar("steps", GOOD_STEPS, BAD_COUNTS)
        dt = g.scalar("dt", SMALL_DT, BAD_DT)
        clip = g.draw(GOOD_CLIP, "clip")
        inputs = [x, state, rhs]

        def call(x, state, rhs):
            return algorithms.bptt_gradient(net, x, rhs, steps=steps, dt=dt, clip=clip, state=state)
    else:
        state = None if bad != "state" and g.draw(st.booleans(), "zero start") else g.layers("state")
        tol = g.scalar("tol", st.sampled_from([1e-12, 1e-8, 1e-4]), [-1e-3, 0.0] + NOT_FINITE)
        dt = g.scalar("dt", SMALL_DT, BAD_DT)
        euler = g.scalar("max_euler_steps", st.integers(0, 300), BAD_COUNTS)
        newton = g.scalar("max_newton_steps", st.integers(0, 3), BAD_COUNTS)
        rhs = None
        inputs = [x, state]

        def call(x, state, rhs):
            return algorithms.fixed_point(net, x, state=state, tol=tol, dt=dt, max_euler_steps=euler,
                                          max_newton_steps=newton)
    before = snapshot(inputs)
    res = outcome(g.fault, lambda: call(x, state, rhs))
    if isinstance(state, (list, type(None))) and isinstance(rhs, (list, np.ndarray, type(None))):
        assert_unchanged(before, inputs, "an input")
    if res is RAISED:
        return
    layers_of = canonical_layers
    if fn == "solve_hessian":
        z, info = res
        assert_layers(z, net, B, "solve_hessian")
        assert isinstance(info, algorithms.SolveInfo) and 0 <= info.iterations <= max_iter
        assert math.isfinite(info.residual) and info.residual >= 0
        again = call(canonical(x, net.dtype), layers_of(state, net.dtype), layers_of(rhs, net.dtype))
        assert_identical(z, again[0], "solve_hessian")
        if net.dtype == np.float64 and info.residual <= tol:
            # the reported residual is CG's recursive one; the true one must agree
            hz = net.hvp(x, state, z, beta=beta)
            for a, b in zip(hz, layers_of(rhs, net.dtype)):
                scale = max(1.0, float(np.abs(b).max()))
                assert np.allclose(a, b, rtol=0, atol=1e-6 * scale + 10 * tol * scale), "H z != rhs"
        return
    if fn == "fixed_point":
        assert isinstance(res, algorithms.FixedPoint)
        assert_layers(res.state, net, B, "fixed_point")
        assert math.isfinite(res.gradient_norm) and res.gradient_norm >= 0
        assert 0 <= res.euler_steps <= euler and 0 <= res.newton_steps <= max(newton, 0)
        grad = net.energy_grad_state(x, res.state)
        assert res.gradient_norm == max(float(np.abs(a).max()) for a in grad)
        return
    assert_params(res, net, fn)
    again = call(canonical(x, net.dtype), layers_of(state, net.dtype),
                 canonical(rhs, net.dtype) if fn != "solve_hessian" else None)
    assert_identical(res, again, fn)


@PROFILES
def test_fuzz_ep_gradient(request, profile):
    fuzz(request, profile, check_ep_gradient, quick=60, long=500)


@PROFILES
def test_fuzz_ep_train_step(request, profile):
    fuzz(request, profile, check_ep_train_step, quick=60, long=500)


@PROFILES
def test_fuzz_rbp(request, profile):
    fuzz(request, profile, check_rbp, quick=50, long=400)


@PROFILES
def test_fuzz_solvers(request, profile):
    fuzz(request, profile, check_solvers, quick=60, long=500)


# --------------------------------------------------------------------------- constructor, parameters, files

def check_constructor(data) -> None:
    bad = bad_choice(data, ["sizes", "activation", "dtype", "threads", "seed"], valid_weight=3)
    fault = None
    # numpy integers for the ints only: np.int64(2.5) would turn a bad float size into a good one
    container = data.draw(st.sampled_from([list, tuple, np.array,
                                           lambda s: [np.int64(n) if isinstance(n, int) else n for n in s]]),
                          label="sizes type")
    if bad == "sizes":
        sizes = data.draw(st.one_of(st.lists(st.integers(1, 6), max_size=1),
                                    st.lists(st.integers(-3, 6), min_size=2, max_size=4).filter(lambda s: min(s) < 1),
                                    st.lists(st.floats(1.0, 6.0), min_size=2, max_size=4)),
                          label="sizes (bad)")
        container = data.draw(st.sampled_from([container, lambda s: "-".join(map(str, s)), lambda s: None,
                                               lambda s: np.array([s])]), label="sizes type (bad)")
        fault = Fault(("sizes",), f"sizes={sizes}")
    else:
        sizes = data.draw(st.lists(st.integers(1, 6), min_size=2, max_size=4), label="sizes")
    activation = data.draw(st.sampled_from(ACTIVATIONS), label="activation")
    if bad == "activation":
        activation = data.draw(st.sampled_from(["relu", "", "Sigmoid", None, 1, b"sigmoid"]), label="activation (bad)")
        fault = Fault(("activation",), f"activation={activation!r}")
    dtype = data.draw(st.sampled_from(["float32", "float64", np.float32, np.float64, np.dtype("float32"), "f8", "<f4"]),
                      label="dtype")
    if bad == "dtype":
        dtype = data.draw(st.sampled_from(["float16", "int32", np.int64, "complex64", bool, "bool", np.float16, "U3",
                                           object, None, "floot32"]), label="dtype (bad)")
        fault = Fault(("dtype",), f"dtype={dtype!r}")
    threads = data.draw(st.sampled_from([None, 1, 2, 7, np.int32(3)]), label="threads")
    if bad == "threads":
        threads = data.draw(st.sampled_from([0, -1, True, False, 1.5, "2", np.float64(2.0)]), label="threads (bad)")
        fault = Fault(("threads",), f"threads={threads!r}")
    seed = data.draw(st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([np.int64(5), np.uint32(7)])), label="seed")
    if bad == "seed":
        seed = data.draw(st.sampled_from([-1, "a", 1.5, None, True]), label="seed (bad)")
        fault = Fault(("seed",), f"seed={seed!r}")
    net = outcome(fault, lambda: eqcore.Network(container(sizes), activation=activation, dtype=dtype, seed=seed,
                                                threads=threads))
    if net is RAISED:
        return
    assert net.sizes == [int(n) for n in sizes] and all(type(n) is int for n in net.sizes)
    assert net.layers == len(sizes) - 1 and net.activation == activation and net.dtype == np.dtype(dtype)
    assert isinstance(net.threads, int) and net.threads >= 1
    for k in range(net.layers):
        w, b = net.weights[k], net.biases[k]
        assert_finite_array(w, (sizes[k], sizes[k + 1]), net.dtype, f"weights[{k}]")
        assert_finite_array(b, (sizes[k + 1],), net.dtype, f"biases[{k}]")
        assert w.flags.c_contiguous and w.flags.writeable and b.flags.c_contiguous and b.flags.writeable
        assert np.abs(w).max() <= np.float32(np.sqrt(6.0 / (sizes[k] + sizes[k + 1]))) * (1 + 1e-6)
        assert not b.any()
    assert repr(net).startswith("Network(")


PARAM_FAULTS = ("other float", "float16", "int", "bool", "complex", "object", "transpose", "extra row", "1d", "3d",
                "0d", "F", "strided", "reversed", "read-only", "list", "none", "fewer", "more", "good", "good")
METHODS = ("relax", "energy", "cost", "energy_grad_state", "energy_grad_params", "hvp", "mixed_hvp", "predict",
           "ep_gradient", "ep_train_step", "rbp", "solve_hessian", "implicit_gradient", "bptt_gradient", "fixed_point")


def call_method(net: eqcore.Network, method: str, x, y, s) -> Any:
    if method == "relax":
        return net.relax(x, state=s, target=y, beta=0.5, steps=3)
    if method == "energy":
        return net.energy(x, s)
    if method == "cost":
        return net.cost(s, y)
    if method == "energy_grad_state":
        return net.energy_grad_state(x, s, y, beta=0.5)
    if method == "energy_grad_params":
        return net.energy_grad_params(x, s)
    if method == "hvp":
        return net.hvp(x, s, s, beta=0.5)
    if method == "mixed_hvp":
        return net.mixed_hvp(x, s, s)
    if method == "predict":
        return net.predict(x, steps=5)
    if method == "ep_gradient":
        return algorithms.ep_gradient(net, x, y, s, beta=0.5, steps=2)
    if method == "ep_train_step":
        return algorithms.ep_train_step(net, x, y, [a.copy() for a in s], free_steps=2, nudged_steps=2, beta=0.5,
                                        learning_rates=[0.1] * net.layers)
    if method == "rbp":
        return algorithms.rbp(net, x, y, s, steps=3)
    if method == "solve_hessian":
        return algorithms.solve_hessian(net, x, s, s, max_iter=5)
    if method == "implicit_gradient":
        return algorithms.implicit_gradient(net, x, y, s, max_iter=5)
    if method == "bptt_gradient":
        return algorithms.bptt_gradient(net, x, y, steps=3)
    return algorithms.fixed_point(net, x, max_euler_steps=20, max_newton_steps=1)


def check_parameters(data) -> None:
    """Weights and biases replaced by bad arrays (they are read in place, never converted)."""
    net = data.draw(networks(), label="net")
    B = data.draw(st.integers(1, 4), label="B")
    which = data.draw(st.sampled_from(["weights", "biases"]), label="which")
    params = net.weights if which == "weights" else net.biases
    k = data.draw(st.integers(0, net.layers - 1), label="k")
    kind = data.draw(st.sampled_from(PARAM_FAULTS), label="replacement")
    method = data.draw(st.sampled_from(METHODS), label="method")
    rng = np.random.default_rng(data.draw(st.integers(0, 99), label="values"))
    x = rng.random((B, net.sizes[0]))
    y = np.eye(net.sizes[-1])[rng.integers(0, net.sizes[-1], B)]
    s = [rng.uniform(0.1, 0.9, (B, n)).astype(net.dtype) for n in net.sizes[1:]]
    old = params[k]
    other = np.float64 if net.dtype == np.float32 else np.float32
    new: Any
    if kind == "good":
        new = rng.uniform(-1, 1, old.shape).astype(net.dtype)
    elif kind in ("other float", "float16", "int", "bool", "complex", "object"):
        new = old.astype({"other float": other, "float16": np.float16, "int": np.int64, "bool": bool,
                          "complex": np.complex128, "object": object}[kind])
    elif kind == "transpose":
        new = np.ascontiguousarray(old.T) if old.ndim == 2 else old[None]
    elif kind == "extra row":
        new = np.zeros((old.shape[0] + 1,) + old.shape[1:], net.dtype)
    elif kind == "1d":
        new = old.reshape(-1) if old.ndim == 2 else old[:-1]
    elif kind == "3d":
        new = old[None]
    elif kind == "0d":
        new = old.reshape(-1)[0].copy()
    elif kind == "read-only":
        new = old.copy()
        new.flags.writeable = False
    elif kind == "list":
        new = old.tolist()
    elif kind == "none":
        new = None
    elif kind in ("fewer", "more"):
        new = None
    else:
        new = relayout(old, kind)
    if kind == "fewer":
        del params[-1]
        fault = Fault((which,), f"{which}: one array fewer")
    elif kind == "more":
        params.append(params[-1].copy())
        fault = Fault((which,), f"{which}: one array more")
    else:
        params[k] = new
        acceptable = (isinstance(new, np.ndarray) and new.dtype == net.dtype and new.shape == old.shape
                      and new.flags.c_contiguous and new.flags.writeable)
        fault = None if acceptable else Fault((f"{which}[{k}]",), f"{which}[{k}] replaced: {kind}")
    before = params_of(net) if kind not in ("0d", "none", "list") else None
    res = outcome(fault, lambda: call_method(net, method, x, y, s))
    if res is RAISED and fault is not None and before is not None:
        assert_params_unchanged(net, before, f"{method} with a bad parameter")
    if res is not RAISED and method == "energy":
        e, scale = reference_energy(net, canonical(x, net.dtype), s)
        assert_close(res, e, scale, net, "energy with a replaced parameter (read in place)")


def check_save_load(data, tmp: Path) -> None:
    net = data.draw(networks(), label="net")
    rng = np.random.default_rng(data.draw(st.integers(0, 99), label="values"))
    scale = data.draw(st.sampled_from([1.0, 1e-30, 1e30, 1e-310 if net.dtype == np.float64 else 1e-40]), label="scale")
    for p in net.weights + net.biases:
        p[...] = rng.uniform(-1, 1, p.shape) * scale
    path = tmp / data.draw(st.sampled_from(["net.npz", "a b.npz", "net", ".hidden.npz", "ünï.npz"]), label="name")
    as_str = data.draw(st.booleans(), label="path as str")
    net.save(str(path) if as_str else path)
    assert not [q for q in tmp.iterdir() if q.name.endswith(".tmp")], "a temporary file was left behind"
    back = eqcore.Network.load(path, threads=data.draw(st.sampled_from([None, 1, 3]), label="threads"))
    assert back.sizes == net.sizes and back.activation == net.activation and back.dtype == net.dtype
    for a, b in zip(back.weights + back.biases, net.weights + net.biases):
        assert a.dtype == b.dtype and np.array_equal(a, b) and a.flags.c_contiguous and a.flags.writeable
    good = path.read_bytes()

    how = data.draw(st.sampled_from(["truncate", "flip", "garbage", "rewrite", "rewrite", "save to a folder",
                                     "save into a missing folder"]), label="damage")
    if how.startswith("save"):
        target = tmp / "folder" if how == "save to a folder" else tmp / "missing" / "net.npz"
        if how == "save to a folder":
            target.mkdir(exist_ok=True)
        try:
            net.save(target)
        except OSError:
            pass
        else:
            raise AssertionError(f"save to {target} did not fail")
        assert path.read_bytes() == good
        assert not [q for q in tmp.rglob("*.tmp")], "a failed save left its temporary file behind"
        return
    valid_after = False
    if how == "truncate":
        blob = good[:data.draw(st.integers(0, len(good) - 1), label="cut")]
    elif how == "flip":
        i = data.draw(st.integers(0, len(good) - 1), label="byte")
        blob = good[:i] + bytes([good[i] ^ data.draw(st.integers(1, 255), label="xor")]) + good[i + 1:]
    elif how == "garbage":
        blob = data.draw(st.binary(max_size=300), label="garbage")
    else:
        with np.load(path) as f:
            arrays = {key: f[key] for key in f.files}
        change = data.draw(st.sampled_from(["drop", "dtype", "shape", "nan", "activation", "sizes", "object",
                                            "extra", "compressed"]), label="change")
        keys = sorted(arrays)
        if change == "drop":
            del arrays[data.draw(st.sampled_from(keys), label="key")]
        elif change in ("dtype", "shape", "nan"):
            key = data.draw(st.sampled_from([k for k in keys if k[0] in "Wb"]), label="key")
            a = arrays[key]
            if change == "dtype":
                other = np.float64 if a.dtype == np.float32 else np.float32
                to = data.draw(st.sampled_from([np.float16, np.int32, bool, np.complex64, other]), label="to")
                with np.errstate(all="ignore"):  # 1e30 does not fit in float16: inf (refused below anyway)
                    arrays[key] = a.astype(to)
            elif change == "shape":
                arrays[key] = np.zeros((a.shape[0] + 1,) + a.shape[1:], a.dtype)
            else:
                a = a.copy()
                a.flat[0] = data.draw(st.sampled_from(NOT_FINITE), label="value")
                arrays[key] = a
        elif change == "activation":
            arrays["activation"] = data.draw(st.sampled_from([np.array("relu"), np.array(5), np.array(["sigmoid"]),
                                                              np.array(b"sigmoid")]), label="activation")
        elif change == "sizes":
            sizes = list(arrays["sizes"])
            variant = data.draw(st.sampled_from(["+1", "append", "zero", "float", "0-d", "2-d", "huge", "drop"]),
                                label="sizes change")
            if variant == "+1":
                sizes[data.draw(st.integers(0, len(sizes) - 1), label="which")] += 1
            elif variant == "drop":  # the last layer's W and b stay in the file
                sizes = sizes[:-1]
            elif variant == "append":
                sizes.append(3)
            elif variant == "zero":
                sizes[0] = 0
            elif variant == "huge":
                sizes[0] = 10**9
            sizes = np.array(sizes, np.int64)
            arrays["sizes"] = {"float": sizes + 0.5, "0-d": sizes[0], "2-d": sizes[None]}.get(variant, sizes)
        elif change == "object":
            arrays[data.draw(st.sampled_from(keys + ["extra"]), label="key")] = np.array([{"evil": 1}], dtype=object)
        elif change == "extra":
            arrays["notes"] = np.arange(3)
            valid_after = True
        else:
            valid_after = True
        out = tmp / "rewritten.npz"
        (np.savez_compressed if change == "compressed" else np.savez)(out, **arrays)
        blob = out.read_bytes()
    bad_path = tmp / "damaged.npz"
    bad_path.write_bytes(blob)
    note(f"damage: {how} {locals().get('change', '')} {locals().get('variant', '')}")
    fault = None if valid_after else Fault((str(bad_path),), how)
    res = outcome(fault if how != "flip" else None, lambda: eqcore.Network.load(bad_path)) if how != "flip" else None
    if how == "flip":
        # a flipped byte may hit a field nothing reads (a timestamp): then the same network loads
        try:
            res = eqcore.Network.load(bad_path)
        except ValueError as err:
            assert names_argument(str(err), (str(bad_path),)), err
            return
        for a, b in zip(res.weights + res.biases, net.weights + net.biases):
            assert np.array_equal(a, b), "a damaged file loaded as a different network"
        return
    if res is not RAISED:
        assert res.sizes == net.sizes and all(np.array_equal(a, b) for a, b in zip(res.weights, net.weights))


@PROFILES
def test_fuzz_constructor(request, profile):
    fuzz(request, profile, check_constructor, quick=60, long=300)


@PROFILES
def test_fuzz_replaced_parameters(request, profile):
    fuzz(request, profile, check_parameters, quick=80, long=500)


@PROFILES
def test_fuzz_save_load(request, profile, tmp_path_factory):
    def check(data):
        check_save_load(data, tmp_path_factory.mktemp("files"))
    fuzz(request, profile, check, quick=50, long=400)


# --------------------------------------------------------------------------- regressions
#
# Findings of earlier fuzzing runs, each pinned by the smallest call that showed it.

def _net(activation="sigmoid", dtype="float32", sizes=(3, 2, 2)) -> eqcore.Network:
    return eqcore.Network(list(sizes), activation=activation, dtype=dtype, seed=0, threads=1)


def _inputs(net, B=2):
    rng = np.random.default_rng(0)
    x = rng.random((B, net.sizes[0]))
    y = np.eye(net.sizes[-1])[np.arange(B) % net.sizes[-1]]
    s = [np.full((B, n), 0.3, net.dtype) for n in net.sizes[1:]]
    return x, y, s


def _refused_or_finite(call: Callable[[], Any], names: tuple[str, ...] = ()) -> None:
    """The property for one call: a clean error (naming one of ``names`` when given) or finite results."""
    try:
        result = call()
    except (ValueError, TypeError, ArithmeticError) as err:
        assert not names or names_argument(str(err), names), f"the message does not name {names}: {err!r}"
        return
    arrays = flat(result) if not isinstance(result, eqcore.Network) else result.weights + result.biases
    assert all(np.isfinite(a).all() for a in arrays), f"non-finite result returned without an error: {result}"


def test_atomic_savez_is_atomic_between_threads_of_one_process(tmp_path, monkeypatch):
    from eqcore import network

    path = tmp_path / "net.npz"
    first, second = {"v": np.zeros(50_000)}, {"v": np.ones(80_000)}
    real_savez = np.savez
    switched = []

    def savez_with_a_thread_switch(f, **arrays):
        # Writer A has written half of its file when writer B (another thread) saves the same path.
        import io

        buf = io.BytesIO()
        real_savez(buf, **arrays)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        if not switched:
            switched.append(True)
            network.atomic_savez(path, second)  # writer B, start to end
        f.write(data[len(data) // 2:])

    monkeypatch.setattr(np, "savez", savez_with_a_thread_switch)
    try:
        network.atomic_savez(path, first)  # writer A
    except OSError:
        pass  # A may fail; what matters is what is left on disk
    monkeypatch.setattr(np, "savez", real_savez)
    v = network.read_npz(path)["v"]  # today: "not a readable .npz file" (a mix of A and B)
    assert np.array_equal(v, first["v"]) or np.array_equal(v, second["v"])


@pytest.mark.parametrize("method", ["energy", "energy_grad_state", "hvp", "relax"])
@pytest.mark.parametrize("where", ["weights", "biases"])
def test_non_finite_parameters_are_refused(method, where):
    net = _net()
    getattr(net, where)[0].flat[0] = np.nan
    x, y, s = _inputs(net)
    calls = {"energy": lambda: net.energy(x, s), "energy_grad_state": lambda: net.energy_grad_state(x, s),
             "hvp": lambda: net.hvp(x, s, s), "relax": lambda: net.relax(x)}
    with pytest.raises(ValueError, match=rf"{where}\[0\]"):
        calls[method]()


@pytest.mark.parametrize("replace", ["weights[0]", "all parameters"])
def test_parameter_dtype_error_names_the_wrong_array(replace):
    net = _net(dtype="float32")
    x, _, _ = _inputs(net)
    if replace == "weights[0]":
        net.weights[0] = net.weights[0].astype(np.float64)
    else:
        net.weights = [w.astype(np.float64) for w in net.weights]
        net.biases = [b.astype(np.float64) for b in net.biases]
    with pytest.raises(TypeError, match=r"^(weights|biases)\[\d\]: expected dtype float32"):
        net.relax(x)


@pytest.mark.parametrize("method", ["energy", "cost", "hvp", "mixed_hvp"])
def test_float32_result_overflow_is_an_error(method):
    net = _net(dtype="float32")
    x = np.full((2, 3), 1e30)
    s = [np.full((2, 2), 0.3), np.full((2, 2), 1e30)]
    v = [np.full((2, 2), 1e30)] * 2
    calls = {"energy": lambda: net.energy(x, s), "cost": lambda: net.cost(s, np.zeros((2, 2))),
             "hvp": lambda: net.hvp(x, [np.full((2, 2), 0.3)] * 2, v),
             "mixed_hvp": lambda: net.mixed_hvp(x, [np.full((2, 2), 0.3)] * 2, v)}
    with pytest.raises(OverflowError, match=f"{method}: the result overflowed float32"):
        calls[method]()


@pytest.mark.parametrize("case", ["energy_grad_state beta=1e300", "hvp beta=1e300", "ep_train_step beta=1e-300",
                                  "ep_train_step learning_rates=1e300"])
def test_scalars_float32_cannot_hold_are_refused(case):
    # validated as doubles, then cast to float32 for the kernel: inf or 0 there would corrupt results
    net = _net(dtype="float32")
    x, y, s = _inputs(net)
    if case.startswith("energy_grad_state"):
        _refused_or_finite(lambda: net.energy_grad_state(x, s, y, beta=1e300), ("beta",))
    elif case.startswith("hvp"):
        _refused_or_finite(lambda: net.hvp(x, s, s, beta=1e300), ("beta",))
    else:
        beta, lr = (1e-300, 0.1) if "beta" in case else (0.5, 1e300)
        name = "beta" if "beta" in case else "learning_rates"
        _refused_or_finite(lambda: algorithms.ep_train_step(
            net, x, y, net.zeros(2), free_steps=3, nudged_steps=2, beta=beta, learning_rates=[lr] * net.layers), (name,))
        for p in net.weights + net.biases:
            assert np.isfinite(p).all(), f"ep_train_step({case}) left non-finite parameters"


@pytest.mark.parametrize("variant", ["one-sided", "symmetric"])
def test_ep_train_step_refuses_a_beta_that_overflows_with_the_batch_size(variant):
    # The update scales by lr / (beta' B): with beta' B = inf in float32 it would silently be 0
    # (the clipped states stay finite, so nothing else would tell). Found in review.
    net = _net(activation="hardsigmoid", dtype="float32")
    x, y, _ = _inputs(net, B=4)
    before = [p.copy() for p in net.weights + net.biases]
    beta = 1e38 if variant == "one-sided" else 6e37  # x 4 (x 2 symmetric) passes float32's 3.4e38
    with pytest.raises(ValueError, match="beta"):
        algorithms.ep_train_step(net, x, y, net.zeros(4), free_steps=3, nudged_steps=2, beta=beta,
                                 learning_rates=[0.1] * net.layers, variant=variant)
    assert all(np.array_equal(a, b) for a, b in zip(before, net.weights + net.biases))


def test_ep_gradient_refuses_a_beta_whose_reciprocal_overflows():
    net = _net(dtype="float32")
    x, y, s = _inputs(net)
    _refused_or_finite(lambda: algorithms.ep_gradient(net, x, y, s, beta=1e-40, steps=3), ("beta",))


@pytest.mark.parametrize("case", ["target (n_L,)", "target (1, n_L)", "target NaN", "target complex", "target str",
                                  "free_state dict", "free_state empty", "free_state generator"])
def test_implicit_gradient_validates_target_and_free_state_first(case):
    # it computes s_L - target with numpy: unchecked, a wrong shape would broadcast silently
    net = _net(activation="sigmoid", dtype="float64")
    x, y, _ = _inputs(net)
    s = algorithms.fixed_point(net, x).state
    target, free, names = y, s, ("target",)
    if case == "target (n_L,)":
        target = y[0]
    elif case == "target (1, n_L)":
        target = y[:1]
    elif case == "target NaN":
        target = y * np.nan
    elif case == "target complex":
        target = y + 1j
    elif case == "target str":
        target = y.astype(str)
    else:
        names = ("free_state", "state")
        free = {"free_state dict": dict(enumerate(s)), "free_state empty": [],
                "free_state generator": (a for a in s)}[case]
    with pytest.raises((ValueError, TypeError)) as info:
        algorithms.implicit_gradient(net, x, target, free)
    assert names_argument(str(info.value), names), info.value


@pytest.mark.parametrize("hidden", ["wrong shape", "NaN"])
def test_cost_checks_the_hidden_layers_too(hidden):
    net = _net()
    _, y, s = _inputs(net)
    s[0] = {"wrong shape": np.zeros((5, 7)), "NaN": np.full((2, 2), np.nan)}[hidden]
    with pytest.raises((ValueError, TypeError), match=r"state\[0\]"):
        net.cost(s, y)


def test_fixed_point_tol_nan_is_accepted():
    net = _net()
    x, _, _ = _inputs(net)
    with pytest.raises(ValueError, match="tol"):
        algorithms.fixed_point(net, x, tol=math.nan, max_newton_steps=0)


def _message_cases():
    net = _net()
    x, y, s = _inputs(net)
    A = algorithms
    return {
        "relax-beta str": (lambda: net.relax(x, target=y, beta="0.5x"), "beta"),
        "relax-dt None": (lambda: net.relax(x, dt=None), "dt"),
        "relax-tol str": (lambda: net.relax(x, tol="small"), "tol"),
        "relax-steps 2**64": (lambda: net.relax(x, steps=2**64), "steps"),
        "threads 2**40": (lambda: (setattr(net, "threads", 2**40), net.relax(x))[1], "threads"),
        "ep_gradient-beta None": (lambda: A.ep_gradient(net, x, y, s, beta=None, steps=2), "beta"),
        "ep_gradient-rng int": (
            lambda: A.ep_gradient(net, x, y, s, beta=0.5, steps=2, variant="random-sign", rng=42), "rng"),
        "ep_train_step-learning_rates scalar": (lambda: A.ep_train_step(
            net, x, y, net.zeros(2), free_steps=2, nudged_steps=2, beta=0.5, learning_rates=0.1), "learning_rates"),
        "ep_train_step-beta str": (lambda: A.ep_train_step(
            net, x, y, net.zeros(2), free_steps=2, nudged_steps=2, beta="big", learning_rates=[0.1, 0.1]), "beta"),
        "solve_hessian-tol str": (lambda: A.solve_hessian(net, x, s, s, tol="tiny"), "tol"),
        "fixed_point-max_euler_steps": (lambda: A.fixed_point(net, x, max_euler_steps=-1), "max_euler_steps"),
        "Network-sizes None": (lambda: eqcore.Network(None), "sizes"),
        "Network-sizes str": (lambda: eqcore.Network("784-10"), "sizes"),
        "Network-sizes 2-d": (lambda: eqcore.Network(np.array([[3, 2]])), "sizes"),
        "Network-dtype unknown": (lambda: eqcore.Network([3, 2], dtype="floot32"), "dtype"),
        "Network-seed -1": (lambda: eqcore.Network([3, 2], seed=-1), "seed"),
        "Network-seed str": (lambda: eqcore.Network([3, 2], seed="a"), "seed"),
    }


@pytest.mark.parametrize("case", sorted(_message_cases()))
def test_argument_named_in_message(case):
    call, name = _message_cases()[case]
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    message = str(info.value)
    assert names_argument(message, (name,)) and "incompatible function arguments" not in message, message


def _file(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "net.npz"
    _net(sizes=(3, 2, 2)).save(path)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del arrays[key]
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("reader", ["Network.load", "read_checkpoint"])
@pytest.mark.parametrize("field", ["compression method 99", "encrypted flag"])
def test_damaged_zip_headers_are_unclean_errors(tmp_path, reader, field):
    import struct

    from eqcore import train

    path = tmp_path / "net.npz"
    _net().save(path)
    blob = bytearray(path.read_bytes())
    entry = blob.find(b"PK\x01\x02")  # the first central-directory entry
    offset, value = (10, 99) if field.startswith("compression") else (8, 1)
    struct.pack_into("<H", blob, entry + offset, value)
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match=re.escape(str(path))):
        (eqcore.Network.load if reader == "Network.load" else train.read_checkpoint)(path)


@pytest.mark.parametrize("change", ["activation relu", "sizes one entry", "sizes 0-d", "sizes 2-d"])
def test_load_errors_name_the_file(tmp_path, change):
    values = {"activation relu": {"activation": np.array("relu")}, "sizes one entry": {"sizes": np.array([3])},
              "sizes 0-d": {"sizes": np.array(3)}, "sizes 2-d": {"sizes": np.array([[3, 2, 2]])}}[change]
    path = _file(tmp_path, **values)
    with pytest.raises(ValueError) as info:
        eqcore.Network.load(path)
    assert str(path) in str(info.value), info.value


@pytest.mark.parametrize("case", ["Network sizes=[3.7, 2.2]", "Network dtype=None", "load sizes float",
                                  "load format_version 999", "load sizes without the last layer"])
def test_values_once_accepted_silently_are_refused(tmp_path, case):
    with pytest.raises((ValueError, TypeError)):
        if case == "Network sizes=[3.7, 2.2]":
            eqcore.Network([3.7, 2.2])  # not truncated to 3-2
        elif case == "Network dtype=None":
            eqcore.Network([3, 2], dtype=None)  # np.dtype(None) is float64
        elif case == "load sizes float":
            eqcore.Network.load(_file(tmp_path, sizes=np.array([3.9, 2.5, 2.0])))
        elif case == "load format_version 999":
            eqcore.Network.load(_file(tmp_path, format_version=np.array(999)))
        else:  # W1 and b2 are still in the file: not a 3-2 network
            eqcore.Network.load(_file(tmp_path, sizes=np.array([3, 2])))


def test_load_does_not_take_file_descriptors(tmp_path):
    path = tmp_path / "net.npz"
    _net().save(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(TypeError, match="path"):
            eqcore.Network.load(fd)
    finally:
        try:
            os.close(fd)
        except OSError:
            pass


@pytest.mark.parametrize("reader", ["Network.load", "read_checkpoint"])
def test_load_of_an_npy_file_is_a_type_error(tmp_path, reader):
    from eqcore import train

    path = tmp_path / "net.npz"
    with open(path, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(ValueError, match=re.escape(str(path))):
        (eqcore.Network.load if reader == "Network.load" else train.read_checkpoint)(path)


def test_load_allocates_the_claimed_sizes_first(tmp_path):
    path = _file(tmp_path, sizes=np.array([10**6, 10**6]), W1=None, b2=None)
    with pytest.raises(ValueError, match="W0"):
        eqcore.Network.load(path)


@pytest.mark.parametrize("array", ["x (converted)", "weights[1] (read in place)", "ep_train_step state (written in place)"])
def test_unaligned_arrays_reach_the_kernel(array):
    # In a child process: under tools/sanitize.sh the misaligned access aborts the interpreter.
    child = _run_child(f"""
        import numpy as np, eqcore
        from eqcore import algorithms

        def unaligned(a):
            out = np.ndarray(a.shape, a.dtype, buffer=bytearray(a.nbytes + 1), offset=1)
            out[...] = a
            assert not out.flags.aligned and out.flags.c_contiguous and out.flags.writeable
            return out

        net = eqcore.Network([3, 2, 2], dtype="float32", threads=1)
        x, y = np.full((2, 3), 0.5, np.float32), np.eye(2, dtype=np.float32)
        case = {array!r}
        try:
            if case.startswith("x"):
                print("aligned copy" if net._x(unaligned(x)).flags.aligned else "passed on unaligned")
            elif case.startswith("weights"):
                net.weights[1] = unaligned(net.weights[1])
                net.relax(x)
                print("accepted")
            else:
                state = [unaligned(a) for a in net.zeros(2)]
                algorithms.ep_train_step(net, x, y, state, free_steps=2, nudged_steps=2, beta=0.5,
                                         learning_rates=[0.1, 0.1])
                print("accepted")
        except ValueError as err:
            print("refused", err)
    """)
    assert child.returncode == 0, f"the child died: {child.stderr[-1500:]}"
    assert child.stdout.startswith(("aligned copy", "refused")), child.stdout


def _run_child(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, cwd=Path(__file__).parent)


@pytest.mark.parametrize("function", ["relax", "rbp"])
def test_huge_steps_with_record(function):
    # In a child process: under tools/sanitize.sh the overflow aborts the interpreter.
    child = _run_child(f"""
        import numpy as np, eqcore
        from eqcore import algorithms
        net = eqcore.Network([3, 2], activation="sigmoid", threads=1)
        x, s = np.zeros((1, 3)), [np.zeros((1, 2))]
        try:
            if "{function}" == "relax":
                net.relax(x, steps=2**63 - 1, record=True)
            else:
                algorithms.rbp(net, x, np.zeros((1, 2)), s, steps=2**63 - 1, tol=1.0, record=True)
        except (ValueError, MemoryError) as err:
            print(type(err).__name__, err)
    """)
    assert child.returncode == 0, child.stderr[-2000:]
    assert "steps" in child.stdout or "record" in child.stdout, child.stdout


@pytest.mark.skipif(UNDER_ASAN, reason="an address-space limit and ASan's shadow memory do not mix")
def test_more_threads_than_the_system_allows_does_not_kill_the_process():
    child = _run_child("""
        import resource, numpy as np, eqcore
        net = eqcore.Network([4, 3, 2], threads=1000)
        x = np.random.default_rng(0).random((1000, 4))
        resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, resource.RLIM_INFINITY))  # 1000 stacks do not fit
        try:
            net.relax(x, steps=5)
        except Exception as err:
            print("raised", type(err).__name__)
        print("survived")
    """)
    assert child.returncode == 0 and "survived" in child.stdout, (child.returncode, child.stderr[-500:])
