"""The differentiable simulator, written once against EagerPy tensors."""
