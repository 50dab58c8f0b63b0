"""The kernel releases the GIL: several Python threads may call it at once, on one network or
on several, and get exactly the numbers they get one at a time."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from eqcore import algorithms
from conftest import random_net


def _work(net, x, y, v):
    s = net.relax(x, steps=30, dt=0.5)
    return [*s, *net.hvp(x, s, v), *net.mixed_hvp(x, s, v)[0], *net.energy_grad_params(x, s)[0],
            *algorithms.rbp_gradient(net, x, y, s, steps=10)[0], net.energy(x, s)]


def test_many_python_threads_on_one_network_match_sequential(rng):
    net = random_net([40, 30, 20, 10], "sigmoid", threads=2)
    inputs = [(rng.random((16, 40)), rng.random((16, 10)), [rng.standard_normal((16, n)) for n in net.sizes[1:]])
              for _ in range(8)]
    sequential = [_work(net, *args) for args in inputs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(lambda args: _work(net, *args), inputs))
    for seq, con in zip(sequential, concurrent):
        for a, b in zip(seq, con):
            np.testing.assert_array_equal(a, b)


def test_concurrent_training_of_two_networks_matches_sequential(rng):
    x, y = rng.random((64, 30)), np.eye(5)[rng.integers(0, 5, 64)]

    def train(seed):
        net = random_net([30, 20, 5], "hardsigmoid", seed=seed, threads=2)
        state = net.zeros(64)
        for _ in range(5):
            algorithms.ep_train_step(net, x, y, state, free_steps=10, nudged_steps=3, beta=0.5,
                                     learning_rates=[0.1, 0.05])
        return net.weights + net.biases + state

    sequential = [train(1), train(2)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        concurrent = list(pool.map(train, [1, 2]))
    for seq, con in zip(sequential, concurrent):
        for a, b in zip(seq, con):
            np.testing.assert_array_equal(a, b)
