"""Make the GPU tox envs see frameworks installed in another environment (a virtualenv or conda env).

tox's ``system_site_packages`` exposes the *base* interpreter's site-packages only; on machines whose CUDA builds
of torch / jax / numba-cuda live in a virtualenv, set FRAMEWORK_SITE to that environment's site-packages
directory. This writes a .pth file into the tox env that adds it with ``site.addsitedir``, so its own .pth hooks
run too (numba-cuda redirects ``numba.cuda`` through one; a bare PYTHONPATH would silently give the old
built-in numba.cuda instead). Without FRAMEWORK_SITE it does nothing.
"""
import os
import site
import sys
from pathlib import Path

target = os.environ.get("FRAMEWORK_SITE", "").strip()
if target:
    if not Path(target).is_dir():
        sys.exit(f"FRAMEWORK_SITE={target!r} is not a directory")
    pth = Path(site.getsitepackages()[0]) / "zz_framework_site.pth"
    pth.write_text(f"import site; site.addsitedir({target!r})\n")
    print(f"framework site-packages added: {target}")
