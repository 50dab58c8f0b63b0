"""Every derivative of the kernel against central finite differences (float64).

Step h = 1e-5: truncation error O(h^2 |f'''|) ~ 1e-10 and rounding O(eps |f| / h) ~ 1e-10 for
the O(1) energies of these small nets, so rtol 1e-6 (with atol 1e-8 for entries that vanish)
leaves four orders of margin and still catches any wrong term (those are O(0.01) or larger).
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import ACTIVATIONS, ARCHITECTURES, random_net, random_state

H = 1e-5
RTOL, ATOL = 1e-6, 1e-8
BATCH = 3

cases = pytest.mark.parametrize("sizes", ARCHITECTURES, ids=lambda s: "-".join(map(str, s)))
activations = pytest.mark.parametrize("activation", ACTIVATIONS)


def _setup(sizes, activation, rng):
    net = random_net(sizes, activation, seed=len(sizes))
    x = rng.random((BATCH, sizes[0]))
    s = random_state(net, BATCH, rng)
    y = rng.random((BATCH, sizes[-1]))
    return net, x, s, y


def _perturbed(layers, k, j, h):
    out = [a.copy() for a in layers]
    out[k][:, j] += h
    return out


@cases
@activations
@pytest.mark.parametrize("beta", [0.0, 0.7])
def test_energy_grad_state_matches_fd(sizes, activation, beta, rng):
    net, x, s, y = _setup(sizes, activation, rng)

    def energy_beta(state):
        return net.energy(x, state) + beta * net.cost(state, y)

    grad = net.energy_grad_state(x, s, target=y, beta=beta)
    for k, n in enumerate(net.sizes[1:]):
        for j in range(n):  # examples are independent: one column for the whole batch at once
            fd = (energy_beta(_perturbed(s, k, j, H)) - energy_beta(_perturbed(s, k, j, -H))) / (2 * H)
            np.testing.assert_allclose(grad[k][:, j], fd, rtol=RTOL, atol=ATOL, err_msg=f"layer {k + 1}, unit {j}")


@cases
@activations
def test_energy_grad_params_matches_fd(sizes, activation, rng):
    net, x, s, _ = _setup(sizes, activation, rng)
    gW, gb = net.energy_grad_params(x, s)
    for params, grads in ((net.weights, gW), (net.biases, gb)):
        for p, g in zip(params, grads):
            assert g.shape == p.shape and g.dtype == p.dtype
            fd = np.empty_like(p)
            for idx in np.ndindex(p.shape):
                old = p[idx]
                p[idx] = old + H
                e_plus = net.energy(x, s).mean()
                p[idx] = old - H
                e_minus = net.energy(x, s).mean()
                p[idx] = old
                fd[idx] = (e_plus - e_minus) / (2 * H)
            np.testing.assert_allclose(g, fd, rtol=RTOL, atol=ATOL)


@cases
@activations
@pytest.mark.parametrize("beta", [0.0, 0.7])
def test_hvp_matches_fd_of_gradient(sizes, activation, beta, rng):
    net, x, s, y = _setup(sizes, activation, rng)
    v = [rng.standard_normal(a.shape) for a in s]
    hv = net.hvp(x, s, v, beta=beta)
    plus = net.energy_grad_state(x, [a + H * d for a, d in zip(s, v)], target=y, beta=beta)
    minus = net.energy_grad_state(x, [a - H * d for a, d in zip(s, v)], target=y, beta=beta)
    for k in range(net.layers):
        np.testing.assert_allclose(hv[k], (plus[k] - minus[k]) / (2 * H), rtol=RTOL, atol=ATOL)


@cases
@activations
def test_mixed_hvp_matches_fd_of_param_gradient(sizes, activation, rng):
    net, x, s, _ = _setup(sizes, activation, rng)
    v = [rng.standard_normal(a.shape) for a in s]
    mW, mb = net.mixed_hvp(x, s, v)
    pW, pb = net.energy_grad_params(x, [a + H * d for a, d in zip(s, v)])
    nW, nb = net.energy_grad_params(x, [a - H * d for a, d in zip(s, v)])
    for m, p, n in zip(mW + mb, pW + pb, nW + nb):
        np.testing.assert_allclose(m, (p - n) / (2 * H), rtol=RTOL, atol=ATOL)


@cases
@activations
def test_hessian_is_symmetric(sizes, activation, rng):
    net, x, s, _ = _setup(sizes, activation, rng)
    u = [rng.standard_normal(a.shape) for a in s]
    v = [rng.standard_normal(a.shape) for a in s]
    hu, hv = net.hvp(x, s, u, beta=0.3), net.hvp(x, s, v, beta=0.3)
    u_hv = sum((a * b).sum(axis=1) for a, b in zip(u, hv))
    v_hu = sum((a * b).sum(axis=1) for a, b in zip(v, hu))
    np.testing.assert_allclose(u_hv, v_hu, rtol=1e-12, atol=1e-12)


@activations
def test_energy_matches_numpy_formula(activation, rng):
    """An independent dense evaluation of E and C, written from DESIGN.md §1."""
    net, x, s, y = _setup([4, 5, 3, 2], activation, rng)
    rho = (lambda a: np.clip(a, 0, 1)) if activation == "hardsigmoid" else (lambda a: 1 / (1 + np.exp(-a)))
    r = [x] + [rho(a) for a in s]
    expected = sum(0.5 * (a * a).sum(1) for a in s)
    expected -= sum(((r[k] @ w) * r[k + 1]).sum(1) for k, w in enumerate(net.weights))
    expected -= sum(r[k] @ b for k, b in enumerate(net.biases, start=1))
    np.testing.assert_allclose(net.energy(x, s), expected, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(net.cost(s, y), 0.5 * ((s[-1] - y) ** 2).sum(1), rtol=1e-14)


def test_hard_sigmoid_derivative_on_closed_interval():
    """rho' = 1 on [0, 1] inclusive and 0 outside, as autograd of a clamp gives."""
    net = random_net([2, 3], "hardsigmoid")
    x = np.zeros((1, 2))
    state = [np.array([[0.0, 1.0, 1.0 + 1e-9]])]
    g = net.energy_grad_state(x, state)[0]
    b = net.biases[0]
    np.testing.assert_allclose(g[0], [0.0 - b[0], 1.0 - b[1], 1.0 + 1e-9], rtol=1e-15)
