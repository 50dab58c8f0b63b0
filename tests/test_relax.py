"""The fused relaxation loop: dynamics, stopping, trajectories, dtypes, threads, no copies."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import eqcore
from conftest import INPUT_LAYOUTS, inputs_with_layout, random_net


def _euler_reference(net, x, state, steps, dt, clip, beta=0.0, y=None):
    """A plain numpy Euler loop built on the (finite-difference-checked) dE/ds."""
    s = [a.copy() for a in state]
    for _ in range(steps):
        g = net.energy_grad_state(x, s, target=y, beta=beta)
        s = [a - dt * d for a, d in zip(s, g)]
        if clip:
            s = [np.clip(a, 0, 1) for a in s]
    return s


def sparse_rows(rng, shape, density=0.2):
    """Inputs like images: mostly exact zeros (the kernel's sparse input path)."""
    return rng.random(shape) * (rng.random(shape) < density)


# The kernel picks its products by shape: layers of <= 16 units use packed thin products, wider
# ones GEMMs, and inputs with at most half non-zeros the sparse input drive and update.
SHAPES = {"thin layers": ([6, 5, 4, 3], False), "wide and thin layers": ([40, 30, 20, 12], False),
          "sparse input": ([40, 30, 20, 12], True)}


@pytest.mark.parametrize("activation,clip", [("hardsigmoid", True), ("hardsigmoid", False), ("sigmoid", False)])
@pytest.mark.parametrize("beta", [0.0, 0.5])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_relax_equals_synchronous_euler_steps(activation, clip, beta, shape, rng):
    sizes, sparse = SHAPES[shape]
    net = random_net(sizes, activation)
    x = sparse_rows(rng, (7, sizes[0])) if sparse else rng.random((7, sizes[0]))
    y = rng.random((7, sizes[-1]))
    s0 = [rng.random((7, n)) for n in net.sizes[1:]]
    out = net.relax(x, state=s0, target=y, beta=beta, steps=13, dt=0.3, clip=clip)
    expected = _euler_reference(net, x, s0, 13, 0.3, clip, beta, y)
    for a, b in zip(out, expected):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    sizes=st.lists(st.integers(1, 8), min_size=2, max_size=5),
    activation=st.sampled_from(["hardsigmoid", "sigmoid"]),
    batch=st.integers(1, 6),
)
def test_energy_never_increases_along_free_relaxation(seed, sizes, activation, batch):
    """Euler with a small step is a descent method on E (projected onto [0,1]^n for the hard
    sigmoid, where E is quadratic with |H| <= 1 + |W| < 1/dt for these Glorot weights)."""
    rng = np.random.default_rng(seed)
    net = random_net(sizes, activation, seed=seed % 1000)
    x = rng.random((batch, sizes[0]))
    relaxation = net.relax(x, state=[rng.random((batch, n)) for n in sizes[1:]], steps=60, dt=0.05, record=True)
    energies = np.array([net.energy(x, [t[i] for t in relaxation.trajectory]) for i in range(61)])
    increase = np.diff(energies, axis=0)
    assert np.all(increase <= 1e-12 * (1 + np.abs(energies[:-1]))), increase.max()


def test_float32_and_float64_agree(rng):
    net64 = random_net([784, 100, 10], "sigmoid", dtype="float64")
    net32 = eqcore.Network(net64.sizes, activation="sigmoid", dtype="float32")
    for dst, src in zip(net32.weights + net32.biases, net64.weights + net64.biases):
        dst[:] = src
    x = rng.random((32, 784))
    s64 = net64.relax(x, steps=60, dt=0.5)
    s32 = net32.relax(x, steps=60, dt=0.5)
    assert all(a.dtype == np.float32 for a in s32)
    # The dynamics contract (rate ~ 1/2 per step), so float32 rounding stays at a few ulps of O(1).
    for a, b in zip(s32, s64):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_tol_stops_early_and_reports_steps(rng):
    net = random_net([20, 15, 5], "sigmoid")
    x = rng.random((9, 20))
    tol = 1e-6
    out = net.relax(x, steps=5000, dt=0.5, tol=tol, record=True)
    assert 1 < out.steps < 5000
    last = max(np.abs(t[-1] - t[-2]).max() for t in out.trajectory)
    before = max(np.abs(t[-2] - t[-3]).max() for t in out.trajectory)
    assert last < tol <= before
    # Relaxing without tol for exactly that many steps gives the same state (up to the GEMM
    # blocking, which differs between the lockstep and the tiled paths: a few ulps).
    again = net.relax(x, steps=out.steps, dt=0.5)
    for a, b in zip(out, again):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)


def test_trajectory_shape_and_ends(rng):
    net = random_net([6, 5, 4, 3], "hardsigmoid")
    x = rng.random((4, 6))
    s0 = [rng.random((4, n)) for n in net.sizes[1:]]
    out = net.relax(x, state=s0, steps=11, dt=0.5, record=True)
    assert out.steps == 11
    assert [t.shape for t in out.trajectory] == [(12, 4, n) for n in net.sizes[1:]]
    for t, first, last in zip(out.trajectory, s0, out):
        np.testing.assert_array_equal(t[0], first)
        np.testing.assert_array_equal(t[-1], last)
    assert net.relax(x, steps=11).trajectory is None


def test_kernel_reads_weights_in_place(rng):
    net = random_net([6, 5, 4], "sigmoid")
    x = rng.random((3, 6))
    s = net.relax(x, steps=5)
    e_before = net.energy(x, s)
    net.weights[1][2, 1] += 0.5  # in place: the kernel must see it on the next call
    assert not np.allclose(net.energy(x, s), e_before)
    net.biases[0][0] -= 0.5
    moved = net.relax(x, steps=5)
    assert not np.allclose(moved[0], s[0])


def test_returned_state_shares_no_memory_with_inputs(rng):
    net = random_net([6, 5, 4], "sigmoid")
    x = rng.random((3, 6))
    s0 = [rng.random((3, n)) for n in net.sizes[1:]]
    copies = [a.copy() for a in s0]
    out = net.relax(x, state=s0, steps=3)
    for a in out:
        assert not any(np.shares_memory(a, b) for b in s0 + [x] + net.weights + net.biases)
    for a, b in zip(s0, copies):
        np.testing.assert_array_equal(a, b)  # the input state is untouched


def test_inputs_of_other_dtype_and_layout_are_converted(rng):
    net = random_net([6, 5, 4], "sigmoid", dtype="float32")
    x = rng.random((3, 6))
    ref = net.relax(x.astype(np.float32), steps=7)
    for variant in (x, np.asfortranarray(x), x.astype(np.float16)):
        out = net.relax(variant, steps=7)
        np.testing.assert_allclose(out[-1], ref[-1], rtol=1e-3 if variant.dtype == np.float16 else 0)
    ints = net.relax((x > 0.5).astype(np.int64), steps=7)
    assert ints[0].dtype == np.float32


@pytest.mark.parametrize("activation", ["hardsigmoid", "sigmoid"])
def test_threads_give_the_same_numbers(activation, rng):
    net = random_net([50, 40, 30, 10], activation)
    x, y = rng.random((37, 50)), rng.random((37, 10))
    v = [rng.standard_normal((37, n)) for n in net.sizes[1:]]
    results = {}
    for threads in (1, 2, 3):
        net.threads = threads
        s = net.relax(x, steps=40, dt=0.5, tol=1e-9)
        results[threads] = (s, s.steps, net.energy(x, s), net.energy_grad_params(x, s), net.hvp(x, s, v),
                            net.mixed_hvp(x, s, v), net.relax(x, state=s, target=y, beta=0.5, steps=5))
    for threads in (2, 3):
        assert results[threads][1] == results[1][1]
        flat_a = _flatten(results[1]); flat_b = _flatten(results[threads])
        for a, b in zip(flat_a, flat_b):
            # Same arithmetic per example; only GEMM blocking may differ with the row count.
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("layout", INPUT_LAYOUTS)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("hidden", [30, 5])  # 5: fewer units than a packet, so a thread gets no columns
def test_input_drive_is_right_on_both_sides_of_the_sparse_threshold(dtype, layout, threads, hidden, rng):
    """At most half non-zeros take the sparse input path, whose lists are sized for that half plus
    one row; a batch that goes over part-way falls back to the GEMM. Both paths, split over
    threads by columns of W_0 (a partial packet at the end), equal numpy's Euler steps."""
    net = random_net([37, hidden, 20, 7], "hardsigmoid", dtype=dtype, threads=threads)
    x = inputs_with_layout(layout, rng)
    s0 = [rng.random((9, n)) for n in net.sizes[1:]]
    out = net.relax(x, state=[a.astype(dtype) for a in s0], steps=6, dt=0.3, clip=True)
    ref = random_net([37, hidden, 20, 7], "hardsigmoid")
    for p, q in zip(ref.weights + ref.biases, net.weights + net.biases):
        p[:] = q
    through = [a.astype(dtype).astype(np.float64) for a in s0]  # the start the kernel saw
    expected = _euler_reference(ref, x.astype(dtype).astype(np.float64), through, 6, 0.3, True)
    tol = 1e-12 if dtype == "float64" else 2e-6
    for a, b in zip(out, expected):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def _flatten(obj):
    if isinstance(obj, np.ndarray):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [a for item in obj for a in _flatten(item)]
    return []


def test_divergence_raises_named_error(rng):
    net = random_net([6, 5, 4], "sigmoid")
    x = rng.random((3, 6))
    with pytest.raises(eqcore.DivergenceError, match=r"diverged.*step \d+.*smaller dt"):
        net.relax(x, steps=5000, dt=3.0)


def test_predict_is_argmax_of_free_fixed_point(rng):
    net = random_net([6, 5, 4], "sigmoid")
    x = rng.random((10, 6))
    s = net.relax(x, steps=1000, tol=1e-8)
    np.testing.assert_array_equal(net.predict(x, tol=1e-8), np.argmax(s[-1], axis=1))


# --------------------------------------------------------------------------- even/odd sweeps

def _sweep_reference(net, x, state, sweeps, beta=0.0, y=None):
    """Each layer's minimiser from dE/ds: on [0, 1] (rho' = 1) u_k = s_k - dE/ds_k, and at the
    output (u + beta y) / (1 + beta) = s_L - dE^beta/ds_L / (1 + beta)."""
    s = [a.copy() for a in state]
    L = len(s)
    for _ in range(sweeps):
        for parity in (1, 0):
            g = net.energy_grad_state(x, s, target=y, beta=beta)
            for k in range(1, L + 1):
                if k % 2 == parity:
                    scale = 1.0 / (1.0 + beta) if k == L else 1.0
                    s[k - 1] = np.clip(s[k - 1] - scale * g[k - 1], 0, 1)
    return s


@pytest.mark.parametrize("beta", [0.0, 0.7])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_sweeps_jump_each_layer_to_its_minimiser(beta, shape, rng):
    sizes, sparse = SHAPES[shape]
    net = random_net(sizes, "hardsigmoid")
    x = sparse_rows(rng, (9, sizes[0])) if sparse else rng.random((9, sizes[0]))
    y = rng.random((9, sizes[-1]))
    s0 = [rng.random((9, n)) for n in sizes[1:]]
    out = net.relax(x, state=s0, target=y, beta=beta, steps=7, dynamics="sweep")
    for a, b in zip(out, _sweep_reference(net, x, s0, 7, beta, y)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), sizes=st.lists(st.integers(1, 8), min_size=2, max_size=5),
       batch=st.integers(1, 5), beta=st.sampled_from([0.0, 0.5]))
def test_energy_never_increases_along_sweeps(seed, sizes, batch, beta):
    """Exact block-coordinate descent on E^beta: whatever the weights, no sweep raises it."""
    rng = np.random.default_rng(seed)
    net = random_net(sizes, "hardsigmoid", seed=seed % 1000)
    for w in net.weights:
        w *= 3.0  # strong couplings: Euler with dt 0.5 would oscillate, sweeps still descend
    x, y = rng.random((batch, sizes[0])), rng.random((batch, sizes[-1]))
    r = net.relax(x, state=[rng.random((batch, n)) for n in sizes[1:]], target=y, beta=beta, steps=15,
                  dynamics="sweep", record=True)
    total = [net.energy(x, [t[i] for t in r.trajectory]) + beta * net.cost([t[i] for t in r.trajectory], y)
             for i in range(16)]
    increase = np.diff(np.array(total), axis=0)
    assert np.all(increase <= 1e-12 * (1 + np.abs(np.array(total[:-1])))), increase.max()


def test_sweeps_reach_a_fixed_point_of_the_euler_dynamics(rng):
    net = random_net([30, 20, 12, 5], "hardsigmoid", seed=3)
    x = rng.random((16, 30))
    s = net.relax(x, steps=500, tol=1e-12, dynamics="sweep")
    assert s.steps < 500
    after = net.relax(x, state=s, steps=1, dt=0.5)  # one clipped Euler step does not move it
    for a, b in zip(after, s):
        np.testing.assert_allclose(a, b, atol=1e-11)
    euler = net.relax(x, steps=5000, tol=1e-13, dt=0.5)
    assert s.steps < euler.steps  # and in fewer steps than Euler to a tighter tolerance


@pytest.mark.parametrize("activation,clip", [("sigmoid", False), ("hardsigmoid", False)])
def test_sweeps_need_the_clipped_hard_sigmoid(activation, clip, rng):
    net = random_net([6, 5, 3], activation)
    with pytest.raises(ValueError, match="dynamics='sweep'"):
        net.relax(rng.random((2, 6)), clip=clip, dynamics="sweep")
    with pytest.raises(ValueError, match="dynamics"):
        net.relax(rng.random((2, 6)), dynamics="newton")


@pytest.mark.parametrize("dynamics", ["euler", "sweep"])
def test_an_example_relaxes_the_same_alone_or_in_any_sparse_batch(dynamics, rng):
    """With sparse inputs and thin layers every product is row by row (no GEMM blocking), so an
    example's result does not depend, to the bit, on the batch around it or its position there
    (as long as the batch, like the example, takes the sparse path: <= 50 % non-zeros)."""
    net = random_net([40, 12, 10], "hardsigmoid", dtype="float32")
    x = sparse_rows(rng, (13, 40)).astype(np.float32)
    together = net.relax(x, steps=15, dynamics=dynamics)
    for i in (0, 5, 12):
        alone = net.relax(x[i:i + 1], steps=15, dynamics=dynamics)
        for a, b in zip(alone, together):
            assert np.array_equal(a[0], b[i])


def test_a_nan_weight_still_shows_where_the_hard_sigmoid_is_flat():
    """rho' = 0 outside [0, 1] multiplies the drive (0 * NaN = NaN), it does not mask it: a NaN
    parameter is reported even when the state never enters [0, 1] (found in review)."""
    net = eqcore.Network([1, 1], activation="hardsigmoid", dtype="float32", threads=1)
    net.weights[0][...] = np.nan
    with pytest.raises(ValueError, match=r"weights\[0\]"):
        net.relax(np.ones((1, 1)), state=[np.full((1, 1), -1.0)], clip=False, steps=20)
