"""Steps to a free fixed point: Euler steps vs even/odd sweeps, on trained networks.

    python bench/free_phase.py [--threads 1] [--examples 2000] [--epochs 3]

Trains each network briefly on MNIST with EP (the preset's settings, `--epochs` epochs, Euler
free phase), then relaxes `--examples` test images from zeros with each dynamics until the
largest change of a unit in one step is below each tolerance, and reports the steps taken, the
time, the test error at the end point, and the share of examples whose end point agrees with a
tightly converged Euler fixed point (max |difference| < 1e-3). Needs MNIST cached on this machine
(`eqcore train` caches it). Results: bench/results/free_phase.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from eqcore import data, train

RESULTS = Path(__file__).resolve().parent / "results"
NETWORKS = [("mnist-1h", {}), ("mnist-2h", {"train_size": 20000})]
TOLERANCES = [1e-2, 1e-3, 1e-4, 1e-5]


def trained(preset: str, overrides: dict, epochs: int, threads: int) -> train.Trainer:
    config = train.TrainConfig.preset(preset, epochs=epochs, validation_size=0, **overrides)
    splits = train.load_data(config, allow_download=False)
    trainer = train.Trainer(config, splits[0], threads=threads)
    trainer.fit()
    return trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    test = data.load("mnist", validation=0, allow_download=False).test
    x = test.images[: args.examples].reshape(args.examples, -1).astype(np.float32) / 255
    labels = test.labels[: args.examples]
    out = []
    for preset, overrides in NETWORKS:
        t0 = time.perf_counter()
        net = trained(preset, overrides, args.epochs, args.threads).net
        net.threads = args.threads
        print(f"{preset}: {'-'.join(map(str, net.sizes))} trained {args.epochs} epochs in "
              f"{time.perf_counter() - t0:.0f} s")
        reference = net.relax(x, steps=20000, tol=1e-7)  # a tightly converged Euler fixed point
        for tol in TOLERANCES:
            row = {"network": preset, "sizes": net.sizes, "tol": tol}
            for dynamics in ("euler", "sweep"):
                t = time.perf_counter()
                s = net.relax(x, steps=20000, tol=tol, dynamics=dynamics)
                seconds = time.perf_counter() - t
                gap = np.max([np.abs(a - b).max(axis=1) for a, b in zip(s, reference)], axis=0)
                row[dynamics] = {"steps": s.steps, "seconds": seconds,
                                 "test_error": float(np.mean(np.argmax(s[-1], axis=1) != labels)),
                                 "same_fixed_point": float(np.mean(gap < 1e-3))}
            e, w = row["euler"], row["sweep"]
            print(f"  tol {tol:.0e}: Euler {e['steps']:>5} steps {e['seconds']:6.2f} s err {100 * e['test_error']:.2f}% | "
                  f"sweeps {w['steps']:>5} steps {w['seconds']:6.2f} s err {100 * w['test_error']:.2f}% "
                  f"(x{e['steps'] / max(w['steps'], 1):.1f} fewer steps, x{e['seconds'] / w['seconds']:.1f} time) "
                  f"same point: Euler {100 * e['same_fixed_point']:.1f}%, sweeps {100 * w['same_fixed_point']:.1f}%")
            out.append(row)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "free_phase.json").write_text(json.dumps({"examples": args.examples, "epochs": args.epochs,
                                                         "threads": args.threads, "results": out}, indent=1))
    print(f"wrote {RESULTS / 'free_phase.json'}")


if __name__ == "__main__":
    main()
