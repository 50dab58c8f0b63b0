"""eqcore: Equilibrium Propagation and Recurrent Backpropagation on a fused Eigen kernel."""

from ._core import DivergenceError
from .network import Network, Relaxation

__all__ = ["DivergenceError", "Network", "Relaxation"]
__version__ = "0.1.0"
