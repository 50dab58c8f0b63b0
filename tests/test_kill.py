"""SIGKILL at random moments: atomic writers never leave a partial file in place of a good one,
and `eqcore train` killed mid-training resumes to exactly the parameters of an uninterrupted run.

Design
------
* Writers (Network.save -> eqcore.network.atomic_savez, and Trainer.save_checkpoint): a child
  process writes versions 1, 2, 3, ... of a large file (each a known function of its number, so
  the parent can rebuild any of them), printing each version number once it is written. The
  parent waits until the child is ready, sleeps a random delay, sends SIGKILL, and then checks
  that the file loads (Network.load / train.read_checkpoint + Trainer.load_checkpoint), equals
  *exactly* the last version printed or the one after it (killed between the rename and the
  print), never goes back to an older version, and that the only other files in the folder are
  temporary files of killed children (``.NAME.*.tmp``, never the target name). The next child
  continues from the version found. 20 kills per writer, with delays up to max(0.2 s, 5 write
  times); a third to a half land inside a write (the child leaves its temporary file).
* Training: `eqcore train` on a real-MNIST subset (5 epochs of 12,000 examples, ~0.25 s each) is
  killed 3 times, each time resumed with --resume, then run to the end; its network.npz,
  checkpoint (parameters, particles, RNG state, history) and metrics.jsonl must equal an
  uninterrupted run's, bit for bit. The first kill lands at a random moment (possibly during
  start-up); the others at a random delay (0-0.35 s) after the run's next checkpoint, i.e. in an
  epoch, a checkpoint write, the metrics append or the plot, so that every resumed run has made
  progress. After each kill the checkpoint must load into a Trainer and never go back in epochs.

EQCORE_KILL_SEED fixes the random delays (they are printed on failure).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import eqcore
from eqcore import data, train

SEED = int(os.environ.get("EQCORE_KILL_SEED", str(int.from_bytes(os.urandom(4), "little"))))
KILLS = 20

# Shared by the parent (to rebuild a version) and the child (to write it).
COMMON = """
import numpy as np
import eqcore
from eqcore import train

def make_network():
    return eqcore.Network([784, 1000, 10], dtype="float64", seed=0, threads=1)  # 6.3 MB on disk

def make_trainer(out_dir):
    rng = np.random.default_rng(0)
    x = rng.random((20000, 30), dtype=np.float32)
    labels = (np.arange(20000) % 10).astype(np.int64)
    config = train.TrainConfig(layers=[30, 200, 10], validation_size=0, epochs=10**6, seed=3)
    return train.Trainer(config, (x, labels), threads=1, out_dir=out_dir)  # 17 MB checkpoints

def set_version(obj, i):
    '''Version i of the network's (or trainer's) state: every value a function of i.'''
    net = obj if isinstance(obj, eqcore.Network) else obj.net
    arrays = list(net.weights) + list(net.biases)
    if not isinstance(obj, eqcore.Network):
        arrays += list(obj.particles)
        obj.epoch = i
        obj.history = [{"epoch": j + 1, "train_error": 1.0 / (j + 2)} for j in range(i)]
        obj.rng = np.random.default_rng(i)
    for a in arrays:
        a[...] = i + np.linspace(0.0, 1.0, a.size, dtype=a.dtype).reshape(a.shape)
"""

CHILD = COMMON + """
import sys
from pathlib import Path
folder, writer, first = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
obj = make_network() if writer == "network" else make_trainer(folder)
print("ready", flush=True)
i = first
while True:
    set_version(obj, i)
    if writer == "network":
        obj.save(folder / "net.npz")
    else:
        obj.save_checkpoint()
    print(i, flush=True)
    i += 1
"""

shared: dict = {}
exec(COMMON, shared)  # noqa: S102 - our own code, shared with the child


def _version_of(path: Path, writer: str, trainer) -> int:
    """Loads the file as a user would, checks it is exactly one written version, returns its number."""
    if writer == "network":
        net = eqcore.Network.load(path)
        i = int(net.weights[0].flat[0])
        expected = shared["make_network"]()
        shared["set_version"](expected, i)
        for a, b in zip(net.weights + net.biases, expected.weights + expected.biases):
            assert a.dtype == b.dtype and np.array_equal(a, b), f"{path} is not exactly version {i}"
        return i
    ck = train.read_checkpoint(path)
    i = ck.epoch
    shared["set_version"](trainer, i)
    expected = trainer.checkpoint_arrays()
    assert sorted(ck.arrays) == sorted(expected), f"{path}: keys {sorted(ck.arrays)}"
    for key, value in expected.items():
        assert np.array_equal(ck.arrays[key], value), f"{path}: '{key}' is not that of version {i}"
    trainer.load_checkpoint(ck)  # the full validation a resuming run does
    assert trainer.epoch == i
    return i


@pytest.mark.parametrize("writer", ["network", "checkpoint"])
def test_sigkill_never_leaves_a_partial_file(tmp_path, writer):
    rng = np.random.default_rng(SEED)
    name = "net.npz" if writer == "network" else train.CHECKPOINT_FILE
    path = tmp_path / name
    trainer = shared["make_trainer"](tmp_path) if writer == "checkpoint" else None
    first = shared["make_network"]() if writer == "network" else trainer
    shared["set_version"](first, 0)
    t0 = time.perf_counter()
    if writer == "network":
        first.save(path)
    else:
        first.save_checkpoint()
    # Kill within the first few writes of each child, whatever this machine's disk speed.
    max_delay = max(0.2, 5 * (time.perf_counter() - t0))
    version, mid_write = 0, 0
    temporary = re.compile(rf"\.{re.escape(name)}\..+\.tmp")  # atomic_savez's name beside the target
    started = time.perf_counter()
    for kill in range(KILLS):
        before = {p.name for p in tmp_path.iterdir()}
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), writer, str(version + 1)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            ready = child.stdout.readline()
            assert ready.strip() == "ready", f"child failed to start: {child.stderr.read()[-2000:]}"
            delay = float(rng.uniform(0.0, max_delay))
            time.sleep(delay)
            os.kill(child.pid, signal.SIGKILL)
            out, err = child.communicate(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        context = f"(kill {kill + 1}, delay {delay:.3f} s, EQCORE_KILL_SEED={SEED})"
        assert child.returncode == -signal.SIGKILL, f"the child died by itself {context}: {err[-2000:]}"
        files = {p.name for p in tmp_path.iterdir()}
        if files - before:  # the killed child left the temporary file of the write it was in
            mid_write += 1
        written = [int(line) for line in out.split()]
        found = _version_of(path, writer, trainer)
        last = written[-1] if written else version
        assert last <= found <= last + 1, f"{path} holds version {found}; the child had written {written} {context}"
        assert found >= version, f"{path} went back from version {version} to {found} {context}"
        version = found
        # Nothing but the file and temporary files of killed children (which nothing reads).
        others = sorted(n for n in files - {name} if not temporary.fullmatch(n))
        assert not others, f"unexpected files {others} {context}"
    seconds = time.perf_counter() - started
    print(f"{writer}: {KILLS} kills in {seconds:.1f} s (delays up to {max_delay:.3f} s), {mid_write} inside a "
          f"write, final version {version}")
    assert mid_write >= 1, "no kill landed inside a write: the test did not exercise the atomic rename"
    assert version >= 2, f"no file was ever replaced ({version} versions in {KILLS} kills)"


# --------------------------------------------------------------------------- eqcore train

TRAIN_ARGS = ["--layers", "784-100-10", "--epochs", "5", "--train-size", "12000", "--test-size", "200",
              "--validation-size", "0", "--batch", "20", "-T", "30", "-K", "4", "--eval-steps", "20",
              "--offline", "--threads", "1", "--quiet"]
TIMING_KEYS = ("seconds", "eval_seconds", "examples_per_second")


def _train(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "eqcore", "train", *TRAIN_ARGS, "--out", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _inode(path: Path):
    try:
        st = path.stat()
        return st.st_ino, st.st_mtime_ns
    except FileNotFoundError:
        return None


def _without_timings(history):
    return [{k: v for k, v in m.items() if k not in TIMING_KEYS} for m in history]


def test_sigkill_mid_training_then_resume_equals_an_uninterrupted_run(tmp_path):
    try:
        data.load("mnist", allow_download=False)
    except data.DataNotFoundError:
        pytest.skip("MNIST is not available offline (CI downloads it before pytest)")
    rng = np.random.default_rng(SEED)
    reference = _train(tmp_path / "reference")
    runs = tmp_path / "killed"
    ck_path = runs / train.CHECKPOINT_FILE
    epochs_seen, moments = [], []
    for kill in range(3):
        child = _train(runs, "--resume")
        start, before = time.perf_counter(), _inode(ck_path)
        try:
            if kill == 0 and rng.random() < 0.5:  # during start-up, data loading or the first epoch
                moment = float(rng.uniform(0.1, 1.2))
                time.sleep(moment)
                moments.append(f"{moment:.2f} s after start")
            else:  # after the next checkpoint (so each run progresses): in an epoch, a write or the plot
                while _inode(ck_path) == before and child.poll() is None and time.perf_counter() - start < 60:
                    time.sleep(0.005)
                moment = float(rng.uniform(0.0, 0.35))
                time.sleep(moment)
                moments.append(f"{moment:.2f} s after a checkpoint")
            if child.poll() is None:
                os.kill(child.pid, signal.SIGKILL)
            out, err = child.communicate(timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        context = f"kills at {moments}, EQCORE_KILL_SEED={SEED}"
        if child.returncode == 0:
            break  # finished before the kill
        assert child.returncode == -signal.SIGKILL, f"train failed by itself ({context}): {err[-2000:]}"
        if ck_path.exists():
            ck = train.read_checkpoint(ck_path)
            assert not epochs_seen or ck.epoch >= epochs_seen[-1], f"the checkpoint went back ({context})"
            epochs_seen.append(ck.epoch)
            config = ck.config
            trainer = train.Trainer(config, *train.load_data(config, allow_download=False), threads=1)
            trainer.load_checkpoint(ck)  # parameters, particles, RNG, history: all valid
    final = _train(runs, "--resume")
    out, err = final.communicate(timeout=120)
    assert final.returncode == 0, err[-2000:]
    out_ref, err_ref = reference.communicate(timeout=120)
    assert reference.returncode == 0, err_ref[-2000:]

    context = f"kills at {moments}, checkpoint epochs after them {epochs_seen}, EQCORE_KILL_SEED={SEED}"
    a = eqcore.Network.load(tmp_path / "reference" / "network.npz")
    b = eqcore.Network.load(runs / "network.npz")
    for x, y in zip(a.weights + a.biases, b.weights + b.biases):
        assert np.array_equal(x, y), f"resumed parameters differ from the uninterrupted run's ({context})"
    ca, cb = train.read_checkpoint(tmp_path / "reference" / train.CHECKPOINT_FILE), train.read_checkpoint(ck_path)
    for key in ca.arrays:
        if key.startswith(("W", "b", "particles")) or key in ("epoch", "rng_state", "n_train"):
            assert np.array_equal(ca.arrays[key], cb.arrays[key]), f"checkpoint '{key}' differs ({context})"
    history = [_without_timings(json.loads(str(c.arrays["history"]))) for c in (ca, cb)]
    assert history[0] == history[1], f"histories differ ({context})"
    lines = (runs / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4, 5], f"metrics.jsonl: {lines} ({context})"
    assert _without_timings([json.loads(line) for line in lines]) == _without_timings(
        [json.loads(line) for line in (tmp_path / "reference" / "metrics.jsonl").read_text().splitlines()])
    leftovers = [p.name for p in runs.iterdir() if p.name.endswith(".tmp")]
    print(f"kills at {moments}; checkpoint epochs after each kill {epochs_seen}; stale temporary files {leftovers}")
    assert all(re.fullmatch(r"\..+\.tmp", n) for n in leftovers), leftovers
