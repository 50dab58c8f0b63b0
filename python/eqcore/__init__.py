"""eqcore: Equilibrium Propagation and Recurrent Backpropagation on a fused Eigen kernel."""

from . import algorithms, checks, cli, data
from ._core import DivergenceError, NotPositiveDefiniteError
from .network import Network, Relaxation

__all__ = ["DivergenceError", "Network", "NotPositiveDefiniteError", "Relaxation", "algorithms", "checks", "cli", "data"]
__version__ = "0.1.0"
