"""Calls every public function with bad inputs and prints, as a markdown table, the error each gets.

    python tools/bad_inputs.py > docs/bad-inputs.md

Each row is one call: the function, the bad input, the exception type and its message (the
first 150 characters). A row whose call returns instead of raising is marked ACCEPTED: none
should be (the test suite's fuzzing asserts the same property on random inputs). Inputs of
another real dtype or memory layout are converted by design, so they are not listed.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np

import eqcore
from eqcore import algorithms, train

rng = np.random.default_rng(0)
NET = eqcore.Network([6, 5, 3], activation="hardsigmoid", dtype="float32", seed=0, threads=1)
SIG = eqcore.Network([6, 5, 3], activation="sigmoid", dtype="float64", seed=0, threads=1)
B = 4
X = rng.random((B, 6)).astype(np.float32)
Y = np.eye(3, dtype=np.float32)[np.arange(B) % 3]
S = [np.full((B, 5), 0.3, np.float32), np.full((B, 3), 0.3, np.float32)]


def state(**changes):
    s = [a.copy() for a in S]
    for k, v in changes.items():
        s[int(k[1:])] = v
    return s


def readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def unaligned(a):
    out = np.ndarray(a.shape, a.dtype, buffer=bytearray(a.nbytes + 1), offset=1)
    out[...] = a
    return out


def nan_weights():
    net = eqcore.Network([6, 5, 3], seed=0, threads=1)
    net.weights[1][0, 0] = np.nan
    return net


def file_with(tmp: Path, **arrays) -> Path:
    path = tmp / "net.npz"
    NET.save(path)
    with np.load(path) as f:
        stored = {k: f[k] for k in f.files}
    stored.update(arrays)
    np.savez(path, **stored)
    return path


def cases(tmp: Path):
    ep = dict(free_steps=3, nudged_steps=2, beta=0.5, learning_rates=[0.1, 0.1])
    yield "Network", "sizes [784]", lambda: eqcore.Network([784])
    yield "Network", "sizes [3, 0]", lambda: eqcore.Network([3, 0])
    yield "Network", "sizes [3.7, 2.2]", lambda: eqcore.Network([3.7, 2.2])
    yield "Network", "sizes '784-10'", lambda: eqcore.Network("784-10")
    yield "Network", "activation 'relu'", lambda: eqcore.Network([3, 2], activation="relu")
    yield "Network", "dtype float16", lambda: eqcore.Network([3, 2], dtype="float16")
    yield "Network", "dtype None", lambda: eqcore.Network([3, 2], dtype=None)
    yield "Network", "seed -1", lambda: eqcore.Network([3, 2], seed=-1)
    yield "Network", "threads 0", lambda: eqcore.Network([3, 2], threads=0)
    yield "relax", "x wrong shape (4, 7)", lambda: NET.relax(rng.random((4, 7)))
    yield "relax", "x empty batch", lambda: NET.relax(np.zeros((0, 6)))
    yield "relax", "x complex", lambda: NET.relax(X + 1j)
    yield "relax", "x with NaN", lambda: NET.relax(np.where(X > 0.5, np.nan, X))
    yield "relax", "state missing a layer", lambda: NET.relax(X, state=S[:1])
    yield "relax", "state[1] wrong shape", lambda: NET.relax(X, state=state(s1=np.zeros((B, 4))))
    yield "relax", "state[0] with inf", lambda: NET.relax(X, state=state(s0=np.full((B, 5), np.inf)))
    yield "relax", "beta != 0 without target", lambda: NET.relax(X, beta=0.5)
    yield "relax", "target wrong shape", lambda: NET.relax(X, target=np.zeros((B, 4)), beta=0.5)
    yield "relax", "dt 0", lambda: NET.relax(X, dt=0.0)
    yield "relax", "dt 1e-300 (0 in float32)", lambda: NET.relax(X, dt=1e-300)
    yield "relax", "dt 1e300 (inf in float32)", lambda: NET.relax(X, dt=1e300)
    yield "relax", "beta nan", lambda: NET.relax(X, target=Y, beta=math.nan)
    yield "relax", "steps -1", lambda: NET.relax(X, steps=-1)
    yield "relax", "steps 2.5", lambda: NET.relax(X, steps=2.5)
    yield "relax", "tol -1", lambda: NET.relax(X, tol=-1.0)
    yield "relax", "clip 'no'", lambda: NET.relax(X, clip="no")
    yield "relax", "dynamics 'newton'", lambda: NET.relax(X, dynamics="newton")
    yield "relax", "dynamics 'sweep' with the sigmoid", lambda: SIG.relax(X, dynamics="sweep")
    yield "relax", "dt 50 (diverges)", lambda: SIG.relax(X, dt=50.0, steps=200)
    yield "relax", "a NaN weight", lambda: nan_weights().relax(X)
    yield "relax", "weights[0] replaced by float64", lambda: (
        setattr(n := eqcore.Network([6, 5, 3]), "weights", [n.weights[0].astype(np.float64), n.weights[1]]),
        n.relax(X))[1]
    yield "relax", "a read-only weight", lambda: (
        n := eqcore.Network([6, 5, 3]), n.weights.__setitem__(0, readonly(n.weights[0])), n.relax(X))[2]
    yield "relax", "a non-contiguous weight", lambda: (
        n := eqcore.Network([6, 5, 3]), n.weights.__setitem__(1, np.asfortranarray(n.weights[1])), n.relax(X))[2]
    yield "relax", "an unaligned weight", lambda: (
        n := eqcore.Network([6, 5, 3]), n.weights.__setitem__(1, unaligned(n.weights[1])), n.relax(X))[2]
    yield "relax", "record with 2**62 steps", lambda: NET.relax(X, steps=2**62, record=True)
    yield "relax", "threads 2**40", lambda: (setattr(n := eqcore.Network([6, 5, 3]), "threads", 2**40), n.relax(X))
    yield "energy", "state 1e20 in float32 (|s|^2 overflows)", lambda: NET.energy(X, state(s1=np.full((B, 3), 1e20)))
    yield "energy", "state not a list", lambda: NET.energy(X, S[0])
    yield "cost", "state[0] wrong shape", lambda: NET.cost(state(s0=np.zeros((7, 7))), Y)
    yield "cost", "target str", lambda: NET.cost(S, Y.astype(str))
    yield "energy_grad_state", "beta 1e300 in float32", lambda: NET.energy_grad_state(X, S, Y, beta=1e300)
    yield "energy_grad_params", "state[1] of another batch size", lambda: NET.energy_grad_params(X, state(s1=S[1][:2]))
    yield "hvp", "v wrong batch", lambda: NET.hvp(X, S, [np.zeros((3, 5)), np.zeros((3, 3))])
    yield "mixed_hvp", "v with NaN", lambda: NET.mixed_hvp(X, S, state(s0=np.full((B, 5), np.nan)))
    yield "ep_gradient", "beta 0", lambda: algorithms.ep_gradient(NET, X, Y, S, beta=0.0, steps=2)
    yield "ep_gradient", "beta 1e-40 (1/beta overflows float32)", lambda: algorithms.ep_gradient(
        NET, X, Y, S, beta=1e-40, steps=2)
    yield "ep_gradient", "variant 'two-sided'", lambda: algorithms.ep_gradient(NET, X, Y, S, beta=0.5, steps=2,
                                                                              variant="two-sided")
    yield "ep_gradient", "random-sign without rng", lambda: algorithms.ep_gradient(
        NET, X, Y, S, beta=0.5, steps=2, variant="random-sign")
    yield "ep_train_step", "state read-only", lambda: algorithms.ep_train_step(NET, X, Y, [readonly(a) for a in S], **ep)
    yield "ep_train_step", "state float64 (written in place)", lambda: algorithms.ep_train_step(
        NET, X, Y, [a.astype(np.float64) for a in S], **ep)
    yield "ep_train_step", "learning_rates of the wrong length", lambda: algorithms.ep_train_step(
        NET, X, Y, state(), **{**ep, "learning_rates": [0.1]})
    yield "ep_train_step", "learning_rates 1e39 (inf in float32)", lambda: algorithms.ep_train_step(
        NET, X, Y, state(), **{**ep, "learning_rates": [1e39, 0.1]})
    yield "ep_train_step", "beta 1e38 (beta x batch overflows float32)", lambda: algorithms.ep_train_step(
        NET, X, Y, state(), **{**ep, "beta": 1e38})
    yield "ep_train_step", "free_dynamics 'sweep' with the sigmoid", lambda: algorithms.ep_train_step(
        SIG, X, Y, [a.astype(np.float64) for a in S], **ep, free_dynamics="sweep")
    yield "rbp", "steps None", lambda: algorithms.rbp(NET, X, Y, S, steps=None)
    yield "rbp", "dt 100 (I - dt H not a contraction)", lambda: algorithms.rbp(SIG, X, Y, S, steps=500, dt=100.0)
    yield "solve_hessian", "max_iter 0", lambda: algorithms.solve_hessian(SIG, X, S, S, max_iter=0)
    yield "solve_hessian", "H not positive definite", lambda: algorithms.solve_hessian(
        (n := eqcore.Network([6, 5, 3], activation="sigmoid", dtype="float64", seed=0),
         [w.__imul__(40) for w in n.weights], n)[2], X, S, S)
    yield "implicit_gradient", "target (n_L,)", lambda: algorithms.implicit_gradient(SIG, X, Y[0], S)
    yield "implicit_gradient", "free_state a dict", lambda: algorithms.implicit_gradient(SIG, X, Y, dict(enumerate(S)))
    yield "bptt_gradient", "dt -0.5", lambda: algorithms.bptt_gradient(NET, X, Y, steps=3, dt=-0.5)
    yield "fixed_point", "tol nan", lambda: algorithms.fixed_point(SIG, X, tol=math.nan)
    yield "fixed_point", "max_euler_steps -1", lambda: algorithms.fixed_point(SIG, X, max_euler_steps=-1)
    yield "Network.load", "a truncated file", lambda: (
        p := file_with(tmp), p.write_bytes(p.read_bytes()[:100]), eqcore.Network.load(p))[2]
    yield "Network.load", "a pickle", lambda: (
        p := tmp / "evil.npz", p.write_bytes(b"\x80\x04\x95" + os.urandom(20)), eqcore.Network.load(p))[2]
    yield "Network.load", "an object array", lambda: eqcore.Network.load(file_with(tmp, W0=np.array([{}], dtype=object)))
    yield "Network.load", "format_version 999", lambda: eqcore.Network.load(file_with(tmp, format_version=np.array(999)))
    yield "Network.load", "sizes [3.9, 2.5]", lambda: eqcore.Network.load(file_with(tmp, sizes=np.array([3.9, 2.5])))
    yield "Network.load", "activation 'relu'", lambda: eqcore.Network.load(file_with(tmp, activation=np.array("relu")))
    yield "Network.load", "W1 of another shape", lambda: eqcore.Network.load(file_with(tmp, W1=np.zeros((5, 4), np.float32)))
    yield "Network.load", "a NaN in b1", lambda: eqcore.Network.load(file_with(tmp, b1=np.full(5, np.nan, np.float32)))
    yield "Network.load", "a file descriptor", lambda: eqcore.Network.load(3)
    yield "read_checkpoint", "a network file", lambda: train.read_checkpoint(file_with(tmp))
    yield "TrainConfig", "lr of the wrong length", lambda: train.TrainConfig(layers=[784, 500, 10], lr=[0.1, 0.1, 0.1])
    yield "TrainConfig", "beta -1", lambda: train.TrainConfig(beta=-1.0)
    yield "TrainConfig", "free_dynamics 'sweep' with BPTT", lambda: train.TrainConfig(free_dynamics="sweep", method="bptt")
    yield "TrainConfig", "unknown field in a config file", lambda: train.TrainConfig.from_dict({"lr": [0.1], "momentum": 0.9})
    yield "Trainer", "labels out of range", lambda: train.Trainer(
        train.TrainConfig(layers=[6, 5, 3]), (X, np.array([0, 1, 2, 7])))


def main() -> None:
    print("| function | bad input | exception | message |")
    print("| --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for function, what, call in cases(Path(tmp)):
            what = what.replace("|", "\\|")
            try:
                call()
            except Exception as err:  # noqa: BLE001 - every outcome is reported
                message = str(err).replace(tmp, "<dir>").replace("|", "\\|").replace("\n", " ")
                if len(message) > 150:
                    message = message[:147] + "..."
                print(f"| {function} | {what} | {type(err).__name__} | {message} |")
            else:
                print(f"| {function} | {what} | ACCEPTED | - |")


if __name__ == "__main__":
    main()
