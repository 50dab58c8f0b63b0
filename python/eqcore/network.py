"""The layered energy-based network: parameters in numpy, every hot loop in the kernel."""

from __future__ import annotations

import os
import re
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Callable, Literal, Optional, Union

import numpy as np

from . import _core

Activation = Literal["hardsigmoid", "sigmoid"]
Dynamics = Literal["euler", "sweep"]
DYNAMICS: tuple[str, ...] = ("euler", "sweep")
DType = Literal["float32", "float64"]
ParamList = list[np.ndarray]
Params = tuple[ParamList, ParamList]
StateLike = Sequence[np.ndarray]

_ACTIVATIONS = ("hardsigmoid", "sigmoid")
_FORMAT_VERSION = 1


def default_threads() -> int:
    """Cores this process may run on (all of them by default)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class Relaxation(list):
    """The state reached by :meth:`Network.relax`: a list of ``(B, n_k)`` arrays, k = 1..L.

    Attributes
    ----------
    steps : int
        Euler steps taken (fewer than asked when ``tol`` stopped the relaxation).
    trajectory : list of ndarray or None
        With ``record=True``, per layer an array ``(steps + 1, B, n_k)``: entry 0 is the
        initial state, entry t the state after t steps (so entry -1 equals the result).
    """

    steps: int
    trajectory: Optional[list[np.ndarray]]

    def __init__(self, layers: list[np.ndarray], steps: int, trajectory: Optional[list[np.ndarray]]):
        super().__init__(layers)
        self.steps = steps
        self.trajectory = trajectory


def _as_real_array(value: object, name: str, dtype: np.dtype) -> np.ndarray:
    """``value`` as a C-contiguous array of ``dtype``; other real dtypes and layouts are converted."""
    if type(value) is np.ndarray and value.dtype == dtype and value.flags.c_contiguous and value.flags.aligned:
        return value  # the common case, without np.require's overhead (~5 us a call, 5 calls a step)
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected real numbers, got an array of dtype {arr.dtype}")
    return np.require(arr, dtype=dtype, requirements=["C", "A"])  # C order, aligned (copies if needed)


def _as_layers(value: object, name: str, dtype: np.dtype, count: int) -> list[np.ndarray]:
    if isinstance(value, np.ndarray) or not isinstance(value, Sequence):
        raise TypeError(f"{name}: expected a list of {count} arrays (one per layer 1..L), got {type(value).__name__}")
    if len(value) != count:
        raise ValueError(f"{name}: expected {count} arrays (one per layer 1..L), got {len(value)}")
    return [_as_real_array(a, f"{name}[{i}]", dtype) for i, a in enumerate(value)]


class Network:
    """A layered network with sizes ``[n_0, n_1, ..., n_L]`` and energy

    ``E(s) = 1/2 sum_k |s_k|^2 - sum_k rho(s_k) W_k rho(s_{k+1})^T - sum_k b_k . rho(s_k)``

    with ``rho(s_0) = x`` (the clamped input). See ``shared/DESIGN.md`` for the derivatives.

    Parameters
    ----------
    sizes : sequence of int
        Layer sizes, input first, at least two.
    activation : {"hardsigmoid", "sigmoid"}
        ``clip(s, 0, 1)`` or the logistic sigmoid.
    dtype : {"float32", "float64"}
        Scalar type of the parameters and of every result.
    seed : int
        Seed of the Glorot-uniform initialisation (biases start at zero).
    threads : int, optional
        Threads the kernel splits each batch over; default: all cores this process may use.

    Attributes
    ----------
    weights : list of ndarray
        ``weights[k]`` has shape ``(n_k, n_{k+1})``, k = 0..L-1.
    biases : list of ndarray
        ``biases[k-1]`` has shape ``(n_k,)``, k = 1..L.

    The kernel reads ``weights`` and ``biases`` in place, never copying them: update them in
    place (``w -= lr * g``). Arrays put in their place must have the network's dtype and
    shape, be C-contiguous and writable; they are checked, never converted.

    Inputs ``x``, ``state``, ``target`` and ``v`` of another real dtype or memory layout are
    converted to the network's dtype and C order (a copy); NaN or inf is refused.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        activation: Activation = "hardsigmoid",
        dtype: DType = "float32",
        seed: int = 0,
        threads: Optional[int] = None,
    ) -> None:
        if isinstance(sizes, (str, bytes)) or not isinstance(sizes, (Sequence, np.ndarray)) or np.ndim(sizes) != 1:
            raise TypeError(f"sizes: expected a sequence of layer sizes like [784, 500, 10], got {sizes!r}")
        if not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) for n in sizes):
            raise TypeError(f"sizes: expected integers, got {list(sizes)!r}")
        sizes = [int(n) for n in sizes]
        if len(sizes) < 2:
            raise ValueError(f"sizes: expected at least 2 layer sizes (input and output), got {sizes}")
        if any(n < 1 for n in sizes):
            raise ValueError(f"sizes: every layer size must be >= 1, got {sizes}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation: expected one of {_ACTIVATIONS}, got {activation!r}")
        try:  # np.dtype(None) is float64: None is refused, not read as a default
            valid = dtype is not None and np.dtype(dtype) in (np.dtype(np.float32), np.dtype(np.float64))
        except TypeError:
            valid = False
        if not valid:
            raise TypeError(f"dtype: expected 'float32' or 'float64', got {dtype!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed: expected an integer >= 0, got {seed!r}")
        self.sizes: list[int] = sizes
        self.activation: Activation = activation
        self.dtype: np.dtype = np.dtype(dtype)
        self.threads = default_threads() if threads is None else threads
        rng = np.random.default_rng(seed)
        self.weights: ParamList = []
        self.biases: ParamList = []
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            bound = np.sqrt(6.0 / (n_in + n_out))  # Glorot & Bengio (2010), uniform
            self.weights.append(rng.uniform(-bound, bound, size=(n_in, n_out)).astype(self.dtype))
            self.biases.append(np.zeros(n_out, dtype=self.dtype))

    # -- properties ---------------------------------------------------------------------

    @property
    def layers(self) -> int:
        """L, the number of free layers (hidden layers + output)."""
        return len(self.sizes) - 1

    @property
    def threads(self) -> int:
        return self._threads

    @threads.setter
    def threads(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= 2**16:
            raise ValueError(f"threads: expected an integer in [1, 65536], got {value!r}")
        self._threads = int(value)

    def __repr__(self) -> str:
        sizes = "-".join(map(str, self.sizes))
        return f"Network({sizes}, activation={self.activation!r}, dtype={self.dtype.name!r}, threads={self.threads})"

    # -- helpers ------------------------------------------------------------------------

    def _net(self) -> tuple:
        # The kernel takes its scalar type from weights[0]: a replaced weights[0] of another dtype
        # must be named here, or the error would fall on the arrays that are right.
        w0 = self.weights[0] if self.weights else None
        if isinstance(w0, np.ndarray) and w0.dtype != self.dtype:
            raise TypeError(f"weights[0]: expected dtype {self.dtype}, got {w0.dtype}")
        return (self.sizes, self.activation, self.weights, self.biases)

    def _x(self, x: object) -> np.ndarray:
        return _as_real_array(x, "x", self.dtype)

    def _layers(self, value: object, name: str) -> list[np.ndarray]:
        return _as_layers(value, name, self.dtype, self.layers)

    def _target(self, target: object) -> Optional[np.ndarray]:
        return None if target is None else _as_real_array(target, "target", self.dtype)

    def zeros(self, batch: int) -> list[np.ndarray]:
        """A zero state for ``batch`` examples: arrays ``(batch, n_k)``, k = 1..L."""
        return [np.zeros((batch, n), dtype=self.dtype) for n in self.sizes[1:]]

    # -- the kernel ---------------------------------------------------------------------

    def relax(
        self,
        x: np.ndarray,
        state: Optional[StateLike] = None,
        target: Optional[np.ndarray] = None,
        beta: float = 0.0,
        steps: int = 100,
        dt: float = 0.5,
        clip: Optional[bool] = None,
        tol: Optional[float] = None,
        record: bool = False,
        dynamics: Dynamics = "euler",
    ) -> Relaxation:
        """Euler steps of ``s <- s - dt dE^beta/ds`` for the whole batch, in one kernel call.

        Parameters
        ----------
        x : (B, n_0) array
        state : list of (B, n_k) arrays, optional
            Initial state (zeros by default). Not modified: the result is a fresh state.
        target : (B, n_L) array, optional
            Target of the cost; required when ``beta != 0``.
        beta : float
            Nudging strength (0: free phase).
        steps : int
            Maximum number of steps.
        dt : float
            Euler step size (> 0).
        clip : bool, optional
            Project the state onto [0, 1] after each step; default: on for the hard sigmoid
            (Scellier & Bengio 2017), off for the sigmoid.
        tol : float, optional
            Stop after the first step whose largest ``|s_{t+1} - s_t|`` is below ``tol``.
        record : bool
            Keep the whole trajectory (``Relaxation.trajectory``).
        dynamics : {"euler", "sweep"}
            ``sweep``: each of the ``steps`` is an even/odd sweep instead of an Euler step: the odd
            layers jump to their minimiser given their neighbours, ``clip(u_k, 0, 1)``, then the
            even layers. Exact block-coordinate descent on E^beta with the same fixed points as
            the clipped Euler dynamics, reached in far fewer steps; needs the hard sigmoid with
            ``clip`` (``dt`` is unused). It is not the time course Theorem 3 is about.

        Returns
        -------
        Relaxation
            The state, a list of ``(B, n_k)`` arrays, with ``.steps`` and ``.trajectory``.

        Raises
        ------
        DivergenceError
            When the state becomes non-finite (dt too large).
        """
        x = self._x(x)
        s0 = None if state is None else self._layers(state, "state")
        if clip is None:
            clip = self.activation == "hardsigmoid"
        layers, taken, trajectory = _core.relax(
            *self._net(), x, s0, self._target(target), _real(beta, "beta"), _count(steps, "steps"),
            _real(dt, "dt"), _flag(clip, "clip"), 0.0 if tol is None else _real(tol, "tol"), _flag(record, "record"),
            _dynamics(dynamics, "dynamics") == "sweep", self.threads,
        )
        return Relaxation(layers, taken, trajectory)

    def energy(self, x: np.ndarray, state: StateLike) -> np.ndarray:
        """Energy ``E(s)`` per example, shape ``(B,)``."""
        return _core.energy(*self._net(), self._x(x), self._layers(state, "state"), self.threads)

    def cost(self, state: StateLike, target: np.ndarray) -> np.ndarray:
        """Cost ``C(s) = 1/2 |s_L - y|^2`` per example, shape ``(B,)``."""
        return _core.cost(*self._net(), self._layers(state, "state"), self._target(target))

    def energy_grad_state(
        self, x: np.ndarray, state: StateLike, target: Optional[np.ndarray] = None, beta: float = 0.0
    ) -> list[np.ndarray]:
        """``dE^beta/ds`` per example: a list like the state."""
        return _core.energy_grad_state(
            *self._net(), self._x(x), self._layers(state, "state"), self._target(target), _real(beta, "beta"), self.threads
        )

    def energy_grad_params(self, x: np.ndarray, state: StateLike) -> Params:
        """``dE/dtheta`` averaged over the batch: ``(list like weights, list like biases)``."""
        return tuple(_core.energy_grad_params(*self._net(), self._x(x), self._layers(state, "state"), self.threads))

    def hvp(self, x: np.ndarray, state: StateLike, v: StateLike, beta: float = 0.0) -> list[np.ndarray]:
        """Hessian-vector product ``(d2E^beta/ds2) v`` per example: a list like the state."""
        return _core.hvp(
            *self._net(), self._x(x), self._layers(state, "state"), self._layers(v, "v"), _real(beta, "beta"), self.threads
        )

    def mixed_hvp(self, x: np.ndarray, state: StateLike, v: StateLike) -> Params:
        """``(d2E/dtheta ds) v`` averaged over the batch: ``(list like weights, list like biases)``."""
        return tuple(
            _core.mixed_hvp(*self._net(), self._x(x), self._layers(state, "state"), self._layers(v, "v"), self.threads)
        )

    def predict(
        self, x: np.ndarray, steps: int = 1000, dt: float = 0.5, tol: float = 1e-5, clip: Optional[bool] = None
    ) -> np.ndarray:
        """Class index (argmax of the output layer) at the free fixed point from zeros, ``(B,)``."""
        state = self.relax(x, steps=steps, dt=dt, tol=tol, clip=clip)
        return np.argmax(state[-1], axis=1)

    # -- files --------------------------------------------------------------------------

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the parameters to an ``.npz`` file (no pickle), atomically."""
        arrays: dict[str, np.ndarray] = {
            "format_version": np.array(_FORMAT_VERSION),
            "sizes": np.array(self.sizes, dtype=np.int64),
            "activation": np.array(self.activation),
        }
        for k, w in enumerate(self.weights):
            arrays[f"W{k}"] = w
        for k, b in enumerate(self.biases, start=1):
            arrays[f"b{k}"] = b
        atomic_savez(path, arrays)

    @classmethod
    def load(cls, path: Union[str, os.PathLike], threads: Optional[int] = None) -> "Network":
        """Read a network written by :meth:`save`; never unpickles anything."""
        arrays = read_npz(path)
        sizes, activation = _file_header(arrays, path)
        dtype = arrays.get("W0", np.empty(0, np.float32)).dtype
        if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"{path}: W0 has dtype {dtype}, expected float32 or float64")
        # Every stored array is checked before a network of the claimed sizes is built, so a small
        # file claiming huge sizes fails here instead of allocating them.
        weights = [_stored(arrays, f"W{k}", (sizes[k], sizes[k + 1]), dtype, path) for k in range(len(sizes) - 1)]
        biases = [_stored(arrays, f"b{k}", (sizes[k],), dtype, path) for k in range(1, len(sizes))]
        # Parameters beyond the claimed sizes mean the file contradicts itself (other arrays, such as
        # notes another program added, are ignored).
        expected = {f"W{k}" for k in range(len(sizes) - 1)} | {f"b{k}" for k in range(1, len(sizes))}
        unexpected = sorted(k for k in arrays if re.fullmatch(r"[Wb]\d+", k) and k not in expected)
        if unexpected:
            raise ValueError(f"{path}: parameters {unexpected} do not belong to the {'-'.join(map(str, sizes))} "
                             "network its 'sizes' describe")
        net = cls(sizes, activation=activation, dtype=dtype.name, threads=threads)
        net.weights, net.biases = weights, biases
        return net


def _file_header(arrays: dict[str, np.ndarray], path: object) -> tuple[list[int], Activation]:
    """The validated ``sizes`` and ``activation`` of a network file; errors name the file."""
    for key in ("format_version", "sizes", "activation"):
        if key not in arrays:
            raise ValueError(f"{path}: not an eqcore network file (missing '{key}')")
    version, sizes, activation = arrays["format_version"], arrays["sizes"], arrays["activation"]
    if version.shape != () or version.dtype.kind not in "iu" or int(version) != _FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {version!r} is not {_FORMAT_VERSION}, the one this eqcore reads")
    if sizes.ndim != 1 or sizes.dtype.kind not in "iu" or len(sizes) < 2 or (sizes < 1).any():
        raise ValueError(f"{path}: 'sizes' must be a list of at least 2 integers >= 1, got {sizes.tolist()!r} "
                         f"(dtype {sizes.dtype})")
    if activation.shape != () or activation.dtype.kind != "U" or str(activation) not in _ACTIVATIONS:
        raise ValueError(f"{path}: 'activation' must be one of {_ACTIVATIONS}, got {activation.tolist()!r}")
    return [int(n) for n in sizes], str(activation)  # type: ignore[return-value]


def _count(value: object, name: str) -> int:
    """A step or iteration count: an integer in [0, 2**62] (the kernel's index range)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= 2**62:
        raise ValueError(f"{name}: expected an integer in [0, 2**62], got {value!r}")
    return int(value)


def _dynamics(value: object, name: str) -> str:
    if not isinstance(value, str) or value not in DYNAMICS:
        raise ValueError(f"{name}: expected one of {DYNAMICS}, got {value!r}")
    return value


def _flag(value: object, name: str) -> bool:
    """A yes/no argument: a bool (or numpy bool); anything else, such as the string "no", is refused."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def _real(value: object, name: str) -> float:
    """A real scalar argument as a Python float, or a TypeError naming the argument."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__} {value!r}")
    return float(value)


def _stored(arrays: dict, key: str, shape: tuple, dtype: np.dtype, path: object) -> np.ndarray:
    if key not in arrays:
        raise ValueError(f"{path}: missing array '{key}'")
    a = arrays[key]
    if a.shape != shape or a.dtype != dtype:
        raise ValueError(f"{path}: '{key}' has shape {a.shape} and dtype {a.dtype}, expected {shape} and {dtype}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{path}: '{key}' contains NaN or inf")
    return np.array(a, dtype=dtype, order="C")  # a writable copy we own


def atomic_write(path: Union[str, os.PathLike], write: Callable[[IO[bytes]], None]) -> None:
    """``write(f)`` into a temporary file beside ``path``, flushed to disk, then renamed over it:
    a crash or SIGKILL at any point leaves either the old file or the new one, never a mix."""
    path = Path(path)
    # A unique temporary name beside the target (same file system, so the rename is atomic),
    # also between threads of one process.
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_directory(path.parent)  # makes the rename itself survive a power loss


def _fsync_directory(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def atomic_savez(path: Union[str, os.PathLike], arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` written atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: np.savez(f, **arrays))


def read_npz(path: Union[str, os.PathLike]) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file, refusing pickled (object) arrays and damaged files."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"path: expected a file path, got {type(path).__name__} {path!r}")
    try:
        # Open the file ourselves: np.load leaks its handle when the zip is damaged.
        with open(path, "rb") as f:
            data = np.load(f, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ValueError(f"{path}: not an .npz archive (a single .npy array or other file)")
            with data:
                return {key: data[key] for key in data.files}
    except (zipfile.BadZipFile, EOFError, OSError, NotImplementedError, RuntimeError) as err:
        # zipfile raises NotImplementedError for an unknown compression method and RuntimeError
        # for an "encrypted" entry: both mean a damaged or foreign file here.
        raise ValueError(f"{path}: not a readable .npz file ({err})") from err
    except ValueError as err:  # numpy refuses object arrays when allow_pickle=False
        raise ValueError(f"{path}: refused ({err})") from err
