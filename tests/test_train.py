"""Training: learning on real MNIST, bit-identical resume, interrupts, checkpoint errors, CLI, plots."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest

import eqcore
from eqcore import algorithms, data, plots, train

OUTPUT_FILES = ("metrics.jsonl", "checkpoint.npz", "config.json", "learning_curve.png", "network.npz")


# --------------------------------------------------------------------------- helpers

def synthetic(n: int = 200, n_in: int = 30, n_classes: int = 5, seed: int = 0):
    """Inputs in [0, 1) labelled by a random linear teacher (learnable, not trivial)."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, n_in), dtype=np.float64).astype(np.float32)
    labels = np.argmax(x @ rng.standard_normal((n_in, n_classes)), axis=1).astype(np.uint8)
    return x, labels


def small_config(**overrides) -> train.TrainConfig:
    values = dict(layers=[30, 16, 5], free_steps=20, nudged_steps=4, beta=1.0, lr=[0.1, 0.05],
                  batch=20, epochs=3, seed=7, validation_size=0, eval_steps=30)
    values.update(overrides)
    return train.TrainConfig(**values)


def make_trainer(config: train.TrainConfig, out_dir=None, n: int = 200) -> train.Trainer:
    x, labels = synthetic(n)
    return train.Trainer(config, (x, labels), test=(x[:60], labels[:60]), threads=1, out_dir=out_dir)


def assert_same_state(a: train.Trainer, b: train.Trainer) -> None:
    """Bit for bit: parameters, particles, epoch, RNG state and metrics (except timings)."""
    assert a.epoch == b.epoch
    assert (a.particles is None) == (b.particles is None)
    arrays_a = a.net.weights + a.net.biases + (a.particles or [])
    arrays_b = b.net.weights + b.net.biases + (b.particles or [])
    for x, y in zip(arrays_a, arrays_b):
        assert np.array_equal(x, y)
    assert a.rng.bit_generator.state == b.rng.bit_generator.state
    timing = ("seconds", "eval_seconds", "examples_per_second")
    strip = lambda h: [{k: v for k, v in m.items() if k not in timing} for m in h]  # noqa: E731
    assert strip(a.history) == strip(b.history)


def mnist_or_skip() -> data.Dataset:
    try:
        return data.load("mnist", allow_download=False)
    except data.DataNotFoundError:
        pytest.skip("MNIST is not available offline (CI downloads it before pytest)")


# --------------------------------------------------------------------------- learning

def test_trainer_learns_mnist():
    """784-200-10, EP with a random sign of beta, hard sigmoid, persistent particles: 2,000 real
    training images, >= 85 % on the first 1,000 test images (about 89 %; 1-NN gets 87 %)."""
    ds = mnist_or_skip()
    config = train.TrainConfig(layers=[784, 200, 10], method="ep", ep_variant="random-sign",
                               activation="hardsigmoid", free_steps=20, nudged_steps=4, beta=1.0,
                               lr=[0.4, 0.2], batch=20, epochs=15, seed=0, eval_steps=50)
    trainer = train.Trainer(config, (ds.train.images[:2000], ds.train.labels[:2000]),
                            test=(ds.test.images[:1000], ds.test.labels[:1000]), threads=1)
    history = trainer.fit()
    assert len(history) == 15 and trainer.epoch == 15
    assert history[-1]["train_error"] < history[0]["train_error"]
    assert history[-1]["test_error"] <= 0.15, [m["test_error"] for m in history]
    # evaluate() agrees with what the trainer reported and with Network.predict
    assert trainer.evaluate(which="test")["error"] == history[-1]["test_error"]
    predicted = trainer.net.predict(data.to_float(ds.test.images[:1000]), steps=50, tol=1e-4)
    assert np.mean(predicted != ds.test.labels[:1000]) <= 0.15


def test_persistent_particles_continue_each_examples_free_phase():
    """With lr = 0 the weights stay put, so after e epochs every example's particle is its free
    state after e * T steps from zeros: each epoch resumes where the previous one stopped."""
    x, _ = synthetic()
    trainer = make_trainer(small_config(lr=0.0, epochs=1, free_steps=3))
    net = trainer.net
    for epochs in (1, 2, 3):
        trainer.fit(epochs=epochs)
        expected = net.relax(x, steps=3 * epochs, dt=0.5)
        for p, s in zip(trainer.particles, expected):
            np.testing.assert_allclose(p, s, rtol=0, atol=1e-6)
    assert make_trainer(small_config(persistent=False)).particles is None


def test_same_seed_same_run_other_seed_other_run():
    a, b, c = (make_trainer(small_config(epochs=2, seed=s)) for s in (1, 1, 2))
    for t in (a, b, c):
        t.fit()
    assert_same_state(a, b)
    assert not np.array_equal(a.net.weights[0], c.net.weights[0])


# --------------------------------------------------------------------------- checkpoints

@pytest.mark.parametrize("overrides", [
    {},                                                     # EP random sign, persistent particles, fused
    {"fused": False},                                       # relax + ep_gradient + SGD in numpy
    {"ep_variant": "symmetric", "persistent": False},
    {"ep_variant": "one-sided", "batch": 33},               # a last, smaller minibatch
    {"ep_variant": "one-sided", "batch": 33, "fused": False},
    {"lr_schedule": "cosine"},                              # rates that change every epoch
    {"free_dynamics": "sweep", "free_steps": 6},            # free phase by even/odd sweeps
])
def test_resume_equals_uninterrupted_run_bit_for_bit(tmp_path, overrides):
    whole = make_trainer(small_config(**overrides), out_dir=tmp_path / "whole")
    whole.fit()

    first = make_trainer(small_config(**overrides), out_dir=tmp_path / "parts")
    first.fit(epochs=1)
    assert train.read_checkpoint(tmp_path / "parts" / "checkpoint.npz").epoch == 1
    resumed = make_trainer(small_config(**overrides), out_dir=tmp_path / "parts")
    resumed.load_checkpoint(tmp_path / "parts" / "checkpoint.npz")
    assert resumed.epoch == 1
    resumed.fit()
    lines = (tmp_path / "parts" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    final = eqcore.Network.load(tmp_path / "parts" / "network.npz")
    for wa, wb in zip(final.weights, resumed.net.weights):
        assert np.array_equal(wa, wb)
    assert_same_state(whole, resumed)


def test_keyboard_interrupt_mid_epoch_keeps_checkpoint_and_resumes_identically(tmp_path):
    whole = make_trainer(small_config())
    whole.fit()

    out = tmp_path / "run"
    ck = out / "checkpoint.npz"
    trainer = make_trainer(small_config(), out_dir=out)
    saved: dict = {}

    def interrupt(t: train.Trainer, batch: int) -> None:
        if t.epoch == 1 and batch == 0:
            saved["bytes"] = ck.read_bytes()      # the checkpoint of epoch 1, just written
        if t.epoch == 1 and batch == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trainer.fit(on_batch=interrupt)
    assert trainer.saved_epoch == 1
    assert ck.read_bytes() == saved["bytes"]      # untouched by the interrupted epoch
    assert not list(out.glob(".*tmp"))
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1

    resumed = make_trainer(small_config(), out_dir=out)
    resumed.load_checkpoint(ck)
    resumed.fit()
    assert_same_state(whole, resumed)


def test_interrupt_in_first_epoch_resumes_from_the_initial_checkpoint(tmp_path):
    whole = make_trainer(small_config(epochs=2))
    whole.fit()
    out = tmp_path / "run"

    def interrupt(t, batch):
        if batch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make_trainer(small_config(epochs=2), out_dir=out).fit(on_batch=interrupt)
    assert train.read_checkpoint(out / "checkpoint.npz").epoch == 0
    resumed = make_trainer(small_config(epochs=2), out_dir=out)
    resumed.load_checkpoint(out / "checkpoint.npz")
    resumed.fit()
    assert_same_state(whole, resumed)


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    trainer = make_trainer(small_config(epochs=1), out_dir=tmp_path)
    trainer.fit()
    ck = tmp_path / "checkpoint.npz"
    content = ck.read_bytes()
    for size in (len(content) // 2, len(content) - 10, 0):
        ck.write_bytes(content[:size])
        with pytest.raises(ValueError, match="damaged or truncated checkpoint"):
            make_trainer(small_config()).load_checkpoint(ck)


def test_checkpoint_of_another_architecture_or_config_is_a_clear_error(tmp_path):
    make_trainer(small_config(epochs=1), out_dir=tmp_path).fit()
    ck = tmp_path / "checkpoint.npz"
    with pytest.raises(ValueError, match=r"different run.*layers: 30-16-5 vs 30-12-5"):
        make_trainer(small_config(layers=[30, 12, 5])).load_checkpoint(ck)
    with pytest.raises(ValueError, match=r"different run.*lr: \[0.1, 0.05\] vs \[0.2, 0.05\]"):
        make_trainer(small_config(lr=[0.2, 0.05])).load_checkpoint(ck)
    with pytest.raises(ValueError, match="trained on 200 examples, this run has 100"):
        make_trainer(small_config(), n=100).load_checkpoint(ck)
    with pytest.raises(ValueError, match="not an eqcore checkpoint"):
        make_trainer(small_config()).load_checkpoint(tmp_path / "network.npz")
    # epochs and evaluation settings may change on resume
    t = make_trainer(small_config(epochs=5, eval_steps=10, eval_tol=0.0))
    t.load_checkpoint(ck)
    assert t.epoch == 1


def test_checkpoint_with_damaged_arrays_is_refused_and_restores_nothing(tmp_path):
    make_trainer(small_config(epochs=1), out_dir=tmp_path).fit()
    ck = tmp_path / "checkpoint.npz"
    arrays = dict(np.load(ck))
    arrays["particles1"] = arrays["particles1"][:10]
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    fresh = make_trainer(small_config())
    before = fresh.net.weights[0].copy()
    with pytest.raises(ValueError, match=r"'particles1' has shape \(10, 16\)"):
        fresh.load_checkpoint(bad)
    assert np.array_equal(fresh.net.weights[0], before) and fresh.epoch == 0


def test_checkpoint_holds_no_pickles_and_the_rng_as_json(tmp_path):
    make_trainer(small_config(epochs=1), out_dir=tmp_path).fit()
    with np.load(tmp_path / "checkpoint.npz", allow_pickle=False) as f:
        assert all(f[key].dtype != object for key in f.files)
        state = json.loads(str(f["rng_state"]))
        assert state["bit_generator"] == "PCG64"
        assert train.TrainConfig.from_dict(json.loads(str(f["config"]))) == small_config(epochs=1)


# --------------------------------------------------------------------------- methods

@pytest.mark.parametrize("method", ["rbp", "implicit", "bptt"])
def test_other_gradient_methods_train(method):
    config = small_config(method=method, epochs=2, activation="sigmoid", nudged_steps=20, lr=[0.5, 0.5])
    trainer = make_trainer(config)
    history = trainer.fit()
    assert all(np.all(np.isfinite(w)) for w in trainer.net.weights)
    assert history[-1]["train_cost"] < history[0]["train_cost"]


# --------------------------------------------------------------------------- configuration

def test_sweep_free_phase_trains_like_euler():
    """Sweeps reach the Euler free phase's fixed points in fewer steps: 6 sweeps train the small
    net about as well as 20 Euler steps (same seed, same data)."""
    euler = make_trainer(small_config(epochs=4), n=400)
    sweep = make_trainer(small_config(epochs=4, free_dynamics="sweep", free_steps=6), n=400)
    for t in (euler, sweep):
        t.fit()
    e, s = euler.history[-1]["test_error"], sweep.history[-1]["test_error"]
    assert s <= e + 0.05, (s, e)
    assert s < 0.5 * sweep.history[0]["test_error"]  # it learned (0.87 after one epoch, 0.3 after four)
    with pytest.raises(ValueError, match="free_dynamics"):
        small_config(free_dynamics="sweep", activation="sigmoid")
    with pytest.raises(ValueError, match="free_dynamics"):
        small_config(free_dynamics="sweep", method="bptt")
    with pytest.raises(ValueError, match="free_dynamics"):
        small_config(free_dynamics="newton")


def test_config_validation():
    assert small_config(lr=0.3).lr == [0.3, 0.3]
    assert train.TrainConfig().clip is True and train.TrainConfig(activation="sigmoid").clip is False
    for bad, match in [({"lr": [0.1, 0.1, 0.1]}, "expected 2 learning rates"),
                       ({"method": "sgd"}, "method: expected one of"),
                       ({"ep_variant": "two-sided"}, "ep_variant"),
                       ({"beta": 0.0}, "beta"), ({"batch": 0}, "batch"), ({"layers": [30]}, "layers")]:
        with pytest.raises(ValueError, match=match):
            small_config(**bad)
    with pytest.raises(ValueError, match="unknown fields"):
        train.TrainConfig.from_dict({"layers": [4, 2], "momentum": 0.9})
    with pytest.raises(ValueError, match=r"inputs of shape \(N, 30\)"):
        train.Trainer(small_config(), (np.zeros((10, 31)), np.zeros(10, np.uint8)))
    with pytest.raises(ValueError, match="labels must be in 0..4"):
        train.Trainer(small_config(), (np.zeros((10, 30)), np.full(10, 7)))


def test_cosine_schedule_sets_each_epochs_rates():
    config = small_config(lr=[0.2, 0.1], lr_schedule="cosine", epochs=4)
    assert config.lr_at(0) == [0.2, 0.1]
    assert config.lr_at(2) == pytest.approx([0.1, 0.05])  # half way: half the rates
    assert config.lr_at(3) == pytest.approx([0.2 * (1 + math.cos(0.75 * math.pi)) / 2,
                                             0.1 * (1 + math.cos(0.75 * math.pi)) / 2])
    assert small_config(lr=[0.2, 0.1]).lr_at(3) == [0.2, 0.1]
    seen = []
    trainer = make_trainer(config)
    trainer.fit(on_batch=lambda t, i: seen.append((t.epoch, [float(v) for v in t.optimizer.lr])) if i == 0 else None)
    assert [e for e, _ in seen] == [0, 1, 2, 3]
    for epoch, rates in seen:
        assert rates == pytest.approx(config.lr_at(epoch), rel=1e-6)  # float32 rates
    # with a schedule, epochs shape the rates: a resumed run cannot change them
    assert small_config(lr_schedule="cosine", epochs=4).differences(small_config(lr_schedule="cosine", epochs=8))
    assert not small_config(epochs=4).differences(small_config(epochs=8))


def test_presets_match_the_2017_paper():
    # The paper's table in its own convention (cost |s_L - y|^2); eqcore's cost has a factor 1/2,
    # so the same dynamics and updates take beta and learning rates twice as large.
    for name, (layers, t, k, lr, epochs) in {
        "mnist-1h": ([784, 500, 10], 20, 4, [0.1, 0.05], 25),
        "mnist-2h": ([784, 500, 500, 10], 100, 6, [0.4, 0.1, 0.01], 60),
        "mnist-3h": ([784, 500, 500, 500, 10], 500, 8, [0.128, 0.032, 0.008, 0.002], 500),
    }.items():
        c = train.TrainConfig.preset(name)
        assert (c.layers, c.free_steps, c.nudged_steps, c.epochs) == (layers, t, k, epochs)
        assert c.lr == pytest.approx([(2 if name == "mnist-1h" else 1) * a for a in lr])
        assert (c.batch, c.dt, c.ep_variant, c.activation, c.clip, c.dtype, c.persistent) == \
            (20, 0.5, "random-sign", "hardsigmoid", True, "float32", True)
        assert c.beta == (1.0 if name == "mnist-1h" else 2.0)  # the published code's 0.5 and 1.0
    tuned, paper = train.TrainConfig.preset("mnist-1h-tuned"), train.TrainConfig.preset("mnist-1h")
    assert tuned.lr == pytest.approx([3 * a for a in paper.lr])  # the only difference
    assert {**tuned.to_dict(), "lr": None} == {**paper.to_dict(), "lr": None}
    assert train.TrainConfig.preset("mnist-2h", epochs=1, beta=0.5).epochs == 1
    with pytest.raises(ValueError, match="preset: expected one of"):
        train.TrainConfig.preset("mnist-4h")


def test_cli_parses_presets_and_overrides():
    parser = argparse.ArgumentParser(prog="eqcore")
    train.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["train", "--preset", "mnist-1h", "--epochs", "1", "--lr", "0.2,0.1", "--no-clip"])
    assert args.run is train.run
    c = train.config_from_args(args)
    assert (c.layers, c.free_steps, c.epochs, c.lr, c.clip) == ([784, 500, 10], 20, 1, [0.2, 0.1], False)
    c = train.config_from_args(train.build_parser().parse_args(
        ["--preset", "mnist-2h", "--method", "rbp", "-T", "50", "--layers", "784-300-300-10", "--beta", "0.5"]))
    assert (c.layers, c.method, c.free_steps, c.nudged_steps, c.beta, c.lr) == \
        ([784, 300, 300, 10], "rbp", 50, 6, 0.5, [0.4, 0.1, 0.01])
    assert train.config_from_args(train.build_parser().parse_args([])) == train.TrainConfig()
    with pytest.raises(ValueError, match="expected 1 learning rates"):
        train.config_from_args(train.build_parser().parse_args(["--preset", "mnist-1h", "--layers", "784-10"]))
    with pytest.raises(SystemExit):
        train.build_parser().parse_args(["--preset", "mnist-9h"])


def test_cli_end_to_end(tmp_path, capsys):
    mnist_or_skip()
    out = tmp_path / "run"
    common = ["--out", str(out), "--offline", "--threads", "1", "--quiet",
              "--train-size", "200", "--test-size", "100"]
    assert train.main_args(["--layers", "784-50-10", "--epochs", "1", *common]) == 0
    for name in OUTPUT_FILES:
        assert (out / name).stat().st_size > 0, name
    assert (out / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (metrics,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for key in ("epoch", "train_error", "train_cost", "validation_error", "test_error", "test_cost",
                "test_energy", "seconds", "eval_seconds"):
        assert key in metrics
    config = json.loads((out / "config.json").read_text())
    assert config["layers"] == [784, 50, 10] and config["train_size"] == 200
    assert eqcore.Network.load(out / "network.npz").sizes == [784, 50, 10]

    # an existing run is never overwritten by accident ...
    assert train.main_args(["--epochs", "2", *common]) == 2
    assert "--resume" in capsys.readouterr().err
    # ... a resume takes the checkpoint's configuration (only --epochs and --eval-* may change) ...
    assert train.main_args(["--layers", "784-60-10", "--resume", *common]) == 2
    assert "layers: 784-50-10 vs 784-60-10" in capsys.readouterr().err
    assert train.main_args(["--resume", "--epochs", "2", *common]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    # ... and a damaged checkpoint is reported, not a traceback
    (out / "checkpoint.npz").write_bytes(b"PK\x03\x04 not really")
    assert train.main_args(["--resume", *common]) == 2
    assert "damaged or truncated checkpoint" in capsys.readouterr().err


def test_cli_ctrl_c_exits_cleanly_and_says_how_to_resume(tmp_path, capsys, monkeypatch):
    mnist_or_skip()
    out = tmp_path / "run"
    args = ["--layers", "784-20-10", "--epochs", "2", "--out", str(out), "--offline", "--threads", "1",
            "--quiet", "--train-size", "100", "--test-size", "50", "--validation-size", "50", "--batch", "10"]
    cost = eqcore.Network.cost
    calls = {"n": 0}

    def interrupting_cost(self, state, target):
        if len(target) == 10:      # a training minibatch (evaluation batches have 50)
            calls["n"] += 1
            if calls["n"] == 13:   # the third minibatch of epoch 2
                raise KeyboardInterrupt
        return cost(self, state, target)

    monkeypatch.setattr(eqcore.Network, "cost", interrupting_cost)
    assert train.main_args(args) == 130
    err = capsys.readouterr().err
    assert "interrupted during epoch 2" in err and "holds epoch 1" in err
    assert f"eqcore train --out {out} --resume" in err
    assert train.read_checkpoint(out / "checkpoint.npz").epoch == 1
    monkeypatch.setattr(eqcore.Network, "cost", cost)
    assert train.main_args(["--resume", *args]) == 0
    assert train.read_checkpoint(out / "checkpoint.npz").epoch == 2


# --------------------------------------------------------------------------- plots

def test_learning_curve_png(tmp_path):
    history = [{"epoch": 1, "train_error": 0.2, "validation_error": 0.25, "test_error": 0.3},
               {"epoch": 2, "train_error": 0.0, "test_error": 0.1}]
    for h in (history, history[:1], [], [{"epoch": 1, "train_error": 0.0}]):
        path = plots.learning_curve(h, tmp_path / "curve.png", title="t")
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*tmp"))


def test_cli_reports_divergence_without_a_traceback(tmp_path, capsys, monkeypatch):
    x, labels = synthetic()
    monkeypatch.setattr(train, "load_data", lambda config, **kw: ((x, labels), None, (x, labels)))
    # Euler with dt = 5 > 2 on an unclipped sigmoid network blows up: |1 - dt| = 4 per step.
    args = ["--layers", "30-16-5", "--activation", "sigmoid", "--dt", "5", "-T", "100", "--epochs", "2",
            "--out", str(tmp_path), "--quiet", "--threads", "1"]
    assert train.main_args(args) == 1
    err = capsys.readouterr().err
    assert "diverged during epoch 1" in err and "holds epoch 0" in err
    assert train.read_checkpoint(tmp_path / "checkpoint.npz").epoch == 0
