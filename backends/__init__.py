"""Framework adapters: one module, one ``Backend`` class per framework (the protocol: ``base.py``).

Installed as ``larnd_diff.backends`` (setup.cfg ``package_dir``). Importing an adapter module imports no
framework: its ``Backend`` class imports the framework when ``larnd_diff.ops.get_backend(name)`` first
instantiates it, so the registry can read every class (names, aliases, features) cheaply.

Everything framework-specific is a method of that class (ops, gradients, jit, custom gradients, host and GPU
kernels as differentiable ops, scans, device count, placement, peak memory, the optimiser, Hessians), with
generic defaults in ``base.py``; the simulator, Soft-DTW, the comparison and the fit ask the backend (its methods,
``supports(feature)``) instead of testing a framework's name. So adding a framework is one module with a subclass
of ``larnd_diff.backends.base.Backend`` named ``Backend``, registered

* from another package: by one entry point in the group ``larnd_diff.backends``, e.g. in its setup.cfg::

      [options.entry_points]
      larnd_diff.backends =
          mxnet = my_package.larnd_mxnet:Backend

* in this package: by adding its module name to :data:`BUILTIN`.

``tests/test_backend_plugin.py`` registers a backend through the entry point alone and simulates with it.
``_compat`` holds the EagerPy 0.30 fixes applied when ``larnd_diff.ops`` is imported; ``optim`` the framework-free
optimiser protocol, the host-side full-matrix Adam and the dispatchers ``make_optimizer`` and ``hessian``.
"""

#: Adapters shipped in this package, in the registry's order: module ``larnd_diff.backends.<name>``.
BUILTIN = ("numpy", "torch", "jax", "tensorflow")
