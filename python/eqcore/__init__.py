"""eqcore: Equilibrium Propagation and Recurrent Backpropagation on a fused Eigen kernel."""

import os as _os

# libgomp's threads busy-wait ~300k spins after each parallel region by default; when another
# process (or a second eqcore process) holds a core, that spinning starves the thread doing the
# work, and a 2-thread minibatch step measured 8-10x slower. 10k spins keeps the idle-machine speed
# (measured equal) and cuts that slowdown to ~3x. Set before the kernel (and libgomp) loads;
# an explicit user setting wins.
if "OMP_WAIT_POLICY" not in _os.environ:
    _os.environ.setdefault("GOMP_SPINCOUNT", "10000")

from . import algorithms, checks, cli, data, train
from ._core import DivergenceError, NotPositiveDefiniteError
from .network import Network, Relaxation

__all__ = ["DivergenceError", "Network", "NotPositiveDefiniteError", "Relaxation", "algorithms", "checks", "cli", "data", "train"]
__version__ = "0.1.0"
