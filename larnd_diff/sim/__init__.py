"""The differentiable simulator, written once against EagerPy tensors.

``simulate(segments, backend=..., params=..., relaxation=...)`` runs quench -> drift -> pixels -> induce ->
electronics on NumPy, PyTorch, JAX or TensorFlow and returns :class:`larnd_diff.hits.Hits` of native tensors.
"""
from larnd_diff.sim.expected_noise import ExpectedReadout, expected_readout, observed_samples, readout_log_likelihood
from larnd_diff.sim.pipeline import simulate, trace_count

__all__ = ["ExpectedReadout", "expected_readout", "observed_samples", "readout_log_likelihood", "simulate",
           "trace_count"]
