"""Framework adapters (one module per framework); see base.py for the protocol."""
