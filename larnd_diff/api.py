"""The one-call entry points: ``simulate`` dispatches to the Numba reference or the differentiable simulator."""
from __future__ import annotations

from .hits import Hits


def __getattr__(name):
    # BACKENDS: "reference" and every backend the registry knows (built-in and entry points), read when asked
    if name == "BACKENDS":
        from .ops import known_backends

        return ("reference", *known_backends())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def simulate(segments, backend: str = "reference", *, device=None, params=None, noise: bool = False,
             relaxation="hard", detector=None, dtype: str = "float64", seed: int = 0,
             precision: str = "larnd-sim", chunk_size: int | None = 600, progress: bool = False,
             config=None) -> Hits:
    """Simulate the pixel hits of ``segments`` (simulation frame, z = drift; see :func:`load_segments`).

    backend     "reference" (Numba, non-differentiable, the oracle; NumPy results) or a framework for the
                differentiable simulator: "numpy" (forward only), "torch", "jax", "tensorflow", or a backend
                registered through the entry-point group ``larnd_diff.backends``. Results of a framework backend
                are that framework's tensors, so its autodiff works through them.
    device      framework device string ("cpu", "cuda:0", ...); None = the framework's default.
    params      mapping of parameter name -> value (float or framework tensor) overriding the nominal values
                (``larnd_diff.params.PARAMETERS``), or a :class:`~larnd_diff.params.Params`.
    noise       electronics noise (reset 900 e-, discriminator 500 e-), seeded by ``seed``.
    relaxation  "hard" (reference semantics), "smooth" (fitting default) or a ``Relaxation`` (framework backends).
    precision   reference only: "larnd-sim" (float32 map of the real code) or "float64".
    dtype       framework backends: "float64" or "float32".
    chunk_size  segments per processing chunk within an event (larnd-sim's 600; None = whole events).

    Before simulating, the inputs are checked alike for every backend (:mod:`larnd_diff.checks`): parameters
    outside their physical domain, missing fields, NaN or infinite values, negative dE or dEdx, and electron counts
    beyond larnd-sim's 32-bit field raise a :class:`~larnd_diff.errors.InputError` naming what and where;
    degenerate segments (zero length, parallel to the anode, x_start = x_end) are counted in one warning.
    """
    params = _checked_inputs(segments, backend, params, detector,
                             relaxation if config is None else config.relaxation)
    if backend == "reference":
        from .reference import simulate as reference_simulate

        return reference_simulate(segments, detector=detector, params=params, noise=noise, seed=seed,
                                  precision=precision, chunk_size=chunk_size, progress=progress)
    from .sim import simulate as sim_simulate
    from .sim.config import SimConfig

    if config is None:
        config = SimConfig(relaxation=relaxation, dtype=dtype, chunk_size=chunk_size)
    return sim_simulate(segments, backend=backend, device=device, params=params, detector=detector,
                        noise=noise, seed=seed, config=config)


def _checked_inputs(segments, backend, params, detector, relaxation):
    """The parameters as a checked :class:`~larnd_diff.params.Params` after :mod:`larnd_diff.checks`' checks of the
    segments (the warning about degenerate segments points at the caller of ``simulate``)."""
    from .checks import READ_FIELDS, check_simulation_inputs
    from .detector import resolve_detector
    from .params import as_params

    det = resolve_detector(detector)
    params = as_params(params, nominal=det.nominal)
    required = READ_FIELDS
    if backend == "reference":
        from .reference.pipeline import REQUIRED_FIELDS

        required = REQUIRED_FIELDS
    check_simulation_inputs(segments, backend, params=params, detector=det, relaxation=relaxation,
                            required=required, stacklevel=4)
    return params


def value_and_grad(loss_fn, params: dict, *args, backend: str = "torch", has_aux: bool = False):
    """``(loss, {name: d loss / d param})`` of ``loss_fn(params, *args)`` on a framework backend.

    Framework-neutral gradients: ``params`` maps names to floats or tensors (converted to the backend's tensors),
    ``loss_fn`` receives a dict of EagerPy tensors and returns a scalar (it may call :func:`simulate` with
    ``backend=backend`` and pass ``{k: v.raw for k, v in params.items()}``). Values come back as EagerPy tensors.
    The numpy backend is forward-only and raises ``NotSupported``. ``params`` may be any mapping (a dict, a flax
    ``FrozenDict``, a torch ``nn.ParameterDict``, ...) and its values ``tf.Variable``s or ``nn.Parameter``s.
    """
    from .ops import get_backend
    from .params import plain_mapping

    return get_backend(backend).value_and_grad(loss_fn, plain_mapping(params), *args, has_aux=has_aux)
