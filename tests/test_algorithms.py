"""The paper's algorithms and Theorem 3, in float64.

Networks: sigmoid, and hard sigmoid with every unit strictly inside (0, 1) (small weights,
biases near 0.5), where the energy is smooth; 1 and 2 hidden layers; free phase converged
to max |dE/ds| < 1e-10 by Euler + Newton-CG.
"""

from __future__ import annotations

import numpy as np
import pytest

import eqcore
from eqcore import algorithms, checks
from conftest import INPUT_LAYOUTS, inputs_with_layout, random_net

ARCHS = [[8, 6, 3], [8, 7, 5, 3]]
cases = pytest.mark.parametrize(
    "activation,sizes",
    [(a, s) for a in ("sigmoid", "hardsigmoid") for s in ARCHS],
    ids=lambda v: v if isinstance(v, str) else "-".join(map(str, v)),
)


def smooth_problem(activation, sizes, batch=3, seed=0):
    rng = np.random.default_rng(seed)
    net = random_net(sizes, activation, seed=seed)
    if activation == "hardsigmoid":
        for w in net.weights:
            w *= 0.12
        for b in net.biases:
            b[:] = rng.uniform(0.4, 0.6, size=b.shape)
    x = rng.random((batch, sizes[0]))
    y = np.eye(sizes[-1])[rng.integers(0, sizes[-1], batch)]
    fp = algorithms.fixed_point(net, x, tol=1e-12)
    assert fp.gradient_norm < 1e-10
    if activation == "hardsigmoid":  # the premise: no unit at a kink
        assert all(((a > 0.02) & (a < 0.98)).all() for a in fp.state)
    return net, x, y, fp.state


def assert_matches_fd(net, J, gW, gb, h):
    """Every parameter's gradient against a central difference of the scalar J()."""
    for params, grads in ((net.weights, gW), (net.biases, gb)):
        for p, g in zip(params, grads):
            for idx in np.ndindex(p.shape):
                old = p[idx]
                p[idx] = old + h
                plus = J()
                p[idx] = old - h
                minus = J()
                p[idx] = old
                np.testing.assert_allclose(g[idx], (plus - minus) / (2 * h), rtol=1e-5, atol=1e-9)


def flat(params):
    return np.concatenate([a.ravel() for group in params for a in group])


def rel(a, b):
    return np.linalg.norm(flat(a) - flat(b)) / np.linalg.norm(flat(b))


@cases
def test_theorem3_gap_is_first_order_one_sided_second_order_symmetric(activation, sizes):
    net, x, y, s0 = smooth_problem(activation, sizes)
    T = 25
    gaps = {}
    for beta in (1e-3, 1e-4, 1e-2):
        eq = checks.equivalence(net, x, y, steps=T, dt=0.2, beta=beta, free_state=s0)
        gaps[beta] = (np.maximum(*eq.errors(False)), np.maximum(*eq.errors(True)))
    # Every step t: one-sided gap <= C beta, symmetric gap <= C beta^2 (C = 20 is several times
    # the constants seen on these nets; a missing term makes the gap O(1)).
    for beta, (one, sym) in gaps.items():
        assert one.max() <= 20 * beta, (beta, one.max())
        assert sym.max() <= 20 * beta**2, (beta, sym.max())
    # ... and the rates themselves: beta / 10 divides the gap by ~10 (one-sided), ~100 (symmetric).
    ratio_one = gaps[1e-3][0].max() / gaps[1e-4][0].max()
    ratio_sym = gaps[1e-2][1].max() / gaps[1e-3][1].max()
    assert 7 < ratio_one < 14, ratio_one
    assert 70 < ratio_sym < 140, ratio_sym


@cases
@pytest.mark.parametrize("T", [1, 3, 12])
def test_truncated_rbp_equals_ep_halted_after_T_steps(activation, sizes, T):
    net, x, y, s0 = smooth_problem(activation, sizes)
    beta = 1e-3
    ep = algorithms.ep_gradient(net, x, y, s0, beta=beta, steps=T, dt=0.3, clip=False, variant="symmetric")
    rbp = algorithms.rbp_gradient(net, x, y, s0, steps=T, dt=0.3)
    assert rel(ep, rbp) < 20 * beta**2


@cases
def test_rbp_converges_to_implicit_gradient(activation, sizes):
    net, x, y, s0 = smooth_problem(activation, sizes)
    exact = algorithms.implicit_gradient(net, x, y, s0, tol=1e-13)
    errors = [rel(algorithms.rbp_gradient(net, x, y, s0, steps=n, dt=0.5), exact) for n in (2, 5, 10, 20, 400)]
    assert all(b < a for a, b in zip(errors, errors[1:]) if a > 1e-12), errors  # monotone, to rounding
    assert errors[-1] < 1e-9, errors
    run = algorithms.rbp(net, x, y, s0, steps=100_000, dt=0.5, tol=1e-13)
    assert run.steps < 100_000 and rel(run.gradient, exact) < 1e-11


@pytest.mark.parametrize("activation", ["sigmoid", "hardsigmoid"])
def test_implicit_gradient_matches_finite_differences_of_J(activation):
    net, x, y, s0 = smooth_problem(activation, [3, 4, 2], batch=2)
    gW, gb = algorithms.implicit_gradient(net, x, y, s0, tol=1e-14)

    def J():
        state = algorithms.fixed_point(net, x, state=s0, tol=1e-14).state
        return net.cost(state, y).mean()

    # fixed points to 1e-14: the FD error is ~1e-9 absolute, far below these gradients' 1e-3
    assert_matches_fd(net, J, gW, gb, h=1e-5)


@pytest.mark.parametrize("activation,clip", [("sigmoid", False), ("hardsigmoid", True), ("hardsigmoid", False)])
def test_bptt_matches_finite_differences_of_T_step_cost(activation, clip, rng):
    net = random_net([5, 6, 4, 3], activation, seed=4)
    x, y = rng.random((4, 5)), rng.random((4, 3))
    T, dt = 15, 0.3
    gW, gb = algorithms.bptt_gradient(net, x, y, steps=T, dt=dt, clip=clip)

    def J():
        return net.cost(net.relax(x, steps=T, dt=dt, clip=clip), y).mean()

    assert_matches_fd(net, J, gW, gb, h=1e-6)


@cases
def test_ep_with_small_beta_and_long_phases_matches_implicit_gradient(activation, sizes):
    net, x, y, s0 = smooth_problem(activation, sizes)
    exact = flat(algorithms.implicit_gradient(net, x, y, s0))
    for variant in ("one-sided", "symmetric"):
        ep = flat(algorithms.ep_gradient(net, x, y, s0, beta=1e-3, steps=500, dt=0.5, clip=False, variant=variant))
        cosine = ep @ exact / (np.linalg.norm(ep) * np.linalg.norm(exact))
        assert cosine > 0.9999, (variant, cosine)


def test_random_sign_ep_uses_the_generator():
    net, x, y, s0 = smooth_problem("sigmoid", [8, 6, 3])
    a = algorithms.ep_gradient(net, x, y, s0, beta=0.5, steps=10, variant="random-sign", rng=np.random.default_rng(1))
    b = algorithms.ep_gradient(net, x, y, s0, beta=0.5, steps=10, variant="random-sign", rng=np.random.default_rng(1))
    np.testing.assert_array_equal(flat(a), flat(b))
    plus = algorithms.ep_gradient(net, x, y, s0, beta=0.5, steps=10)
    minus = algorithms.ep_gradient(net, x, y, s0, beta=-0.5, steps=10)
    signs = [algorithms.ep_gradient(net, x, y, s0, beta=0.5, steps=10, variant="random-sign",
                                    rng=np.random.default_rng(s)) for s in range(8)]
    seen = {("+" if np.array_equal(flat(g), flat(plus)) else "-" if np.array_equal(flat(g), flat(minus)) else "?")
            for g in signs}
    assert seen == {"+", "-"}
    with pytest.raises(ValueError, match="rng"):
        algorithms.ep_gradient(net, x, y, s0, beta=0.5, steps=3, variant="random-sign")
    with pytest.raises(ValueError, match="variant"):
        algorithms.ep_gradient(net, x, y, s0, beta=0.5, steps=3, variant="two-sided")


def test_solver_refuses_a_hessian_that_is_not_positive_definite():
    net, x, y, s0 = smooth_problem("sigmoid", [8, 6, 3])
    rhs = [np.ones_like(a) for a in s0]
    z, info = algorithms.solve_hessian(net, x, s0, rhs, tol=1e-12)
    hz = net.hvp(x, s0, z)
    assert all(np.allclose(a, 1.0, atol=1e-10) for a in hz) and info.residual <= 1e-12
    with pytest.raises(eqcore.NotPositiveDefiniteError, match="not positive definite"):
        algorithms.solve_hessian(net, x, s0, rhs, beta=-5.0)


def test_float32_algorithms_agree_with_float64():
    net64, x, y, s0 = smooth_problem("sigmoid", [8, 7, 5, 3])
    net32 = eqcore.Network(net64.sizes, activation="sigmoid", dtype="float32")
    for dst, src in zip(net32.weights + net32.biases, net64.weights + net64.biases):
        dst[:] = src
    s32 = [a.astype(np.float32) for a in s0]
    for fn in (lambda n, s: algorithms.rbp_gradient(n, x, y, s, steps=30),
               lambda n, s: algorithms.implicit_gradient(n, x, y, s, tol=1e-5),
               lambda n, s: algorithms.ep_gradient(n, x, y, s, beta=0.05, steps=30, variant="symmetric"),
               lambda n, s: algorithms.bptt_gradient(n, x, y, steps=30)):
        g32, g64 = fn(net32, s32), fn(net64, s0)
        assert flat(g32).dtype == np.float32
        assert rel(g32, g64) < 1e-4


def test_check_command_prints_table_and_writes_figure(tmp_path, capsys):
    figure = tmp_path / "eq.png"
    assert eqcore.cli.main(["check", "--steps", "10", "--figure", str(figure)]) == 0
    out = capsys.readouterr().out
    assert "|Sbar-Stilde|/|Sbar|" in out and "figure written" in out
    assert figure.stat().st_size > 10_000 and figure.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("activation", ["hardsigmoid", "sigmoid"])
@pytest.mark.parametrize("variant", ["one-sided", "symmetric"])
@pytest.mark.parametrize("inputs", ["dense", "sparse"])
def test_fused_ep_train_step_equals_relax_gradient_update(activation, variant, inputs, rng):
    """The single-call training step = free relax + ep_gradient + SGD update, to rounding (sparse
    inputs: the fused step's W_0 update walks the non-zeros, ep_gradient's is a dense GEMM)."""
    fused = random_net([30, 20, 15, 10], activation, seed=2)
    fused.threads = 2
    ref = random_net([30, 20, 15, 10], activation, seed=2)
    x = rng.random((37, 30)) * (rng.random((37, 30)) < (0.2 if inputs == "sparse" else 2))
    y = np.eye(10)[rng.integers(0, 10, 37)]
    state = [rng.random((37, n)) for n in fused.sizes[1:]]
    start = [a.copy() for a in state]
    lrs = [0.1, 0.05, 0.02]
    algorithms.ep_train_step(fused, x, y, state, free_steps=20, nudged_steps=4, beta=0.5, learning_rates=lrs,
                             variant=variant)
    s0 = ref.relax(x, state=start, steps=20)
    gW, gb = algorithms.ep_gradient(ref, x, y, s0, beta=0.5, steps=4, variant=variant)
    for p, g, lr in zip(ref.weights + ref.biases, gW + gb, lrs + lrs):
        p -= lr * g
    for a, b in zip(fused.weights + fused.biases + state, ref.weights + ref.biases + list(s0)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("layout", INPUT_LAYOUTS)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("hidden", [30, 5])  # 5: fewer units than a packet, so a thread gets no columns
def test_fused_ep_step_updates_w0_right_on_both_sides_of_the_sparse_threshold(dtype, layout, threads, hidden, rng):
    """The fused step's W_0 update walks a sparse x by its columns (each thread its columns of
    W_0, ending in a partial packet); a denser x takes the GEMM. Both equal the float64
    relax + ep_gradient + update path."""
    sizes = [37, hidden, 20, 7]
    fused = random_net(sizes, "hardsigmoid", dtype=dtype, seed=4, threads=threads)
    ref = random_net(sizes, "hardsigmoid", seed=4)
    for p, q in zip(ref.weights + ref.biases, fused.weights + fused.biases):
        p[:] = q
    x = inputs_with_layout(layout, rng)
    y = np.eye(7)[rng.integers(0, 7, 9)]
    state = [rng.random((9, n)).astype(dtype) for n in sizes[1:]]
    start = [a.astype(np.float64) for a in state]
    lrs = [0.1, 0.05, 0.02]
    algorithms.ep_train_step(fused, x, y, state, free_steps=8, nudged_steps=3, beta=0.5, learning_rates=lrs)
    s0 = ref.relax(x.astype(dtype).astype(np.float64), state=start, steps=8)
    gW, gb = algorithms.ep_gradient(ref, x.astype(dtype).astype(np.float64), y, s0, beta=0.5, steps=3)
    for p, g, lr in zip(ref.weights + ref.biases, gW + gb, lrs + lrs):
        p -= lr * g
    tol = 1e-12 if dtype == "float64" else 2e-5
    for a, b in zip(fused.weights + fused.biases + state, ref.weights + ref.biases + list(s0)):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("sizes,batch", [([40, 30, 10], 13), ([50, 33, 7], 101), ([37, 20, 16], 9)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_ep_step_bits_do_not_depend_on_the_thread_count_with_sparse_inputs_and_a_thin_output(sizes, batch, dtype,
                                                                                                   rng):
    """Sparse input drive and W_0 update, thin products and the thin layer's weight update are
    sums in a fixed order whatever the split: 1 and 2 threads give the same bits (a GEMM, here
    only where layer k and k + 1 are both wide, would not)."""
    x = rng.random((batch, sizes[0])) * (rng.random((batch, sizes[0])) < 0.2)
    y = np.eye(sizes[-1])[rng.integers(0, sizes[-1], batch)]
    results = []
    for threads in (1, 2):
        net = random_net(sizes, "hardsigmoid", dtype=dtype, seed=3, threads=threads)
        state = net.zeros(batch)
        for _ in range(3):
            algorithms.ep_train_step(net, x, y, state, free_steps=6, nudged_steps=2, beta=0.5,
                                     learning_rates=[0.1] * net.layers, variant="symmetric")
        results.append(net.weights + net.biases + state)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_fused_ep_train_step_refuses_bad_state_and_keeps_parameters_on_divergence(rng):
    net = random_net([6, 5, 4], "sigmoid")
    x, y = rng.random((3, 6)), rng.random((3, 4))
    frozen = net.zeros(3)
    frozen[0].flags.writeable = False
    with pytest.raises(ValueError, match=r"state\[0\]: expected a writable array"):
        algorithms.ep_train_step(net, x, y, frozen, free_steps=2, nudged_steps=2, beta=0.5, learning_rates=[0.1, 0.1])
    with pytest.raises(ValueError, match="learning_rates: expected 2 values"):
        algorithms.ep_train_step(net, x, y, net.zeros(3), free_steps=2, nudged_steps=2, beta=0.5, learning_rates=[0.1])
    before = [p.copy() for p in net.weights + net.biases]
    with pytest.raises(eqcore.DivergenceError):
        algorithms.ep_train_step(net, x, y, net.zeros(3), free_steps=3000, nudged_steps=2, beta=0.5, dt=3.0,
                                 learning_rates=[0.1, 0.1])
    for a, b in zip(net.weights + net.biases, before):
        np.testing.assert_array_equal(a, b)


def test_rbp_that_cannot_converge_raises_divergence_error():
    """(I - dt H)^t blows up when dt * lambda_max(H) > 2: a named error, not inf or NaN."""
    net, x, y, s0 = smooth_problem("sigmoid", [8, 6, 3])
    with pytest.raises(eqcore.DivergenceError, match=r"RBP diverged.*step \d+.*dt=5"):
        algorithms.rbp(net, x, y, s0, steps=5000, dt=5.0)
    with pytest.raises(eqcore.DivergenceError, match="RBP diverged"):
        algorithms.rbp(net, x, y, s0, steps=100_000, dt=5.0, tol=1e-8)


def test_fused_ep_train_step_with_a_sweep_free_phase(rng):
    """free_dynamics='sweep' = relax(dynamics='sweep') + ep_gradient + SGD update."""
    fused = random_net([30, 20, 15, 10], "hardsigmoid", seed=2)
    ref = random_net([30, 20, 15, 10], "hardsigmoid", seed=2)
    x, y = rng.random((19, 30)), np.eye(10)[rng.integers(0, 10, 19)]
    state = [rng.random((19, n)) for n in fused.sizes[1:]]
    start = [a.copy() for a in state]
    lrs = [0.1, 0.05, 0.02]
    algorithms.ep_train_step(fused, x, y, state, free_steps=6, nudged_steps=4, beta=0.5, learning_rates=lrs,
                             free_dynamics="sweep")
    s0 = ref.relax(x, state=start, steps=6, dynamics="sweep")
    gW, gb = algorithms.ep_gradient(ref, x, y, s0, beta=0.5, steps=4)
    for p, g, lr in zip(ref.weights + ref.biases, gW + gb, lrs + lrs):
        p -= lr * g
    for a, b in zip(fused.weights + fused.biases + state, ref.weights + ref.biases + list(s0)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="free_dynamics"):
        algorithms.ep_train_step(random_net([6, 5, 3], "sigmoid"), x[:, :6], y[:, :3], [np.zeros((19, 5)),
                                 np.zeros((19, 3))], free_steps=2, nudged_steps=2, beta=0.5, learning_rates=[0.1, 0.1],
                                 free_dynamics="sweep")
