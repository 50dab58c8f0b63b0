"""Shared helpers: small random networks and states in float64, seeded."""

from __future__ import annotations

import numpy as np
import pytest

import eqcore

# Hidden-layer shapes the derivative tests cover: 1, 2 and 3 hidden layers.
ARCHITECTURES = [[5, 4, 3], [6, 5, 4, 3], [4, 5, 3, 4, 2]]
ACTIVATIONS = ["hardsigmoid", "sigmoid"]


def random_net(sizes, activation="sigmoid", dtype="float64", seed=0, threads=1) -> eqcore.Network:
    """A network with Glorot weights and non-zero biases (so every term of E is exercised)."""
    net = eqcore.Network(sizes, activation=activation, dtype=dtype, seed=seed, threads=threads)
    rng = np.random.default_rng(seed + 1000)
    for b in net.biases:
        b[:] = rng.uniform(-0.5, 0.5, size=b.shape)
    return net


def random_state(net: eqcore.Network, batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    """States away from the hard sigmoid's kinks at 0 and 1 (by > 0.05), inside and outside [0, 1],
    so that central differences with a small step never straddle a kink."""
    layers = []
    for n in net.sizes[1:]:
        inside = rng.uniform(0.05, 0.95, size=(batch, n))
        outside = np.where(rng.random((batch, n)) < 0.5, rng.uniform(-0.6, -0.05, (batch, n)),
                           rng.uniform(1.05, 1.6, (batch, n)))
        layers.append(np.where(rng.random((batch, n)) < 0.7, inside, outside).astype(net.dtype))
    return layers


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


# Input layouts around the kernel's sparse-input threshold (at most half non-zeros).
INPUT_LAYOUTS = ["half", "just over half", "dense last rows", "one non-zero", "all zeros"]


def inputs_with_layout(layout, rng, B=9, n0=37):
    x = np.zeros((B, n0))
    total = B * n0
    if layout in ("half", "just over half"):
        count = total // 2 + (layout == "just over half")
        x.flat[rng.choice(total, count, replace=False)] = rng.uniform(0.1, 1.0, count)
    elif layout == "dense last rows":  # 4 of 9 rows full: 44 % non-zero, all at the end
        x[-4:] = rng.uniform(0.1, 1.0, (4, n0))
    elif layout == "one non-zero":
        x[3, 20] = 0.7
    return x
