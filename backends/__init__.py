"""Framework adapters (one module per framework); see base.py for the protocol.

Installed as ``larnd_diff.backends`` (setup.cfg ``package_dir``). Nothing here imports a framework: each
adapter module (``numpy``, ``torch``, ``jax``, ``tensorflow``) imports its framework at the top and is itself
imported only when ``larnd_diff.ops.get_backend(name)`` first asks for it.

Adding a framework (also from another package): write one module with a subclass of
``larnd_diff.backends.base.Backend`` named ``Backend`` and declare it in the entry-point group
``larnd_diff.backends``, e.g. in setup.cfg::

    [options.entry_points]
    larnd_diff.backends =
        mxnet = my_package.larnd_mxnet:Backend

``_compat`` holds the EagerPy 0.30 fixes applied when ``larnd_diff.ops`` is imported.
"""
