"""odtkit's compiled ops: built once, loaded, swapped in.

One extension module from two sources: the lean engine's ops (``csrc/lean_ops.cpp``) and
the dense codecs' copy and 16-bit casts, the casts with their overflow check fused in
(``odtkit/compress/csrc/dense_ops.cpp``, used by ``odtkit.compress.cast`` where loaded).

At batch 1 a lean step's cost beyond a stock one is mostly the Python frame of each lean
op's autograd Function (its forward, and autograd calling back into Python for its
backward). The compiled ops are the same Functions in C++ (torch::autograd::Function,
bound with pybind11): the same ATen calls, the same kept tensors,
the same allocations in torch's allocator, the same gradients; no Python frame.

    odtkit native            # build now (make setup does), then say which ops run

Built with ``torch.utils.cpp_extension.load`` (a C++ compiler and ninja; about a minute on two
cores) into ``$ODTKIT_CACHE`` (default ``~/.cache/odtkit``)/native/<torch version>-<source
hash>, so a changed source or torch gets a fresh build. ``ODTKIT_NATIVE`` picks:
``auto`` (default: use the build if there is one; ``odt.lean`` builds it when missing,
and falls back to the Python ops with a warning if it cannot), ``0`` (the Python ops
always), ``1`` (the compiled ops or an error).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
import sys
import warnings
from pathlib import Path
from types import ModuleType

import torch

_PACKAGE = Path(__file__).resolve().parent.parent
SOURCES = (_PACKAGE / "engine" / "csrc" / "lean_ops.cpp",
           _PACKAGE / "compress" / "csrc" / "dense_ops.cpp")
SOURCE = SOURCES[0]  # the one holding the module's bindings
NAME = "odtkit_native"
MODES = ("auto", "0", "1")

_state: dict[str, object] = {"module": None, "failed": None}


def mode() -> str:
    """``ODTKIT_NATIVE``: "auto" (default), "0" or "1"; anything else raises naming it."""
    value = os.environ.get("ODTKIT_NATIVE", "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"ODTKIT_NATIVE={value!r} is not one of {', '.join(MODES)}: set it to "
                         f"'auto' (compiled ops where built), '1' (required) or '0' (Python)")
    return value


@functools.cache
def _digest() -> str:
    digest = hashlib.sha256()
    for source in SOURCES:  # the sources are fixed at run time
        digest.update(source.read_bytes())
    return digest.hexdigest()[:12]


def build_dir() -> Path:
    """Where this source, for this torch, is built."""
    digest = _digest()
    root = Path(os.environ.get("ODTKIT_CACHE", Path.home() / ".cache" / "odtkit"))
    return root / "native" / f"torch-{torch.__version__}-{digest}"


def library() -> Path:
    """The shared library a build leaves (it may not exist yet)."""
    return build_dir() / f"{NAME}.so"


def _load_built() -> bool:
    """Import a build made before (a Python extension module), if there is one."""
    path = library()
    if not path.exists():
        return False
    spec = importlib.util.spec_from_file_location(NAME, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _state["module"] = module
    return True


def ops() -> ModuleType:
    """The loaded extension module (clamp_mask, conv, linear, batch_norm_frozen,
    max_pool_index, cast_checked, uncast, flat_copy); build() or available() first."""
    module = _state["module"]
    if module is None:
        raise RuntimeError("odtkit's compiled ops are not loaded: call "
                           "odtkit.engine.native.available() first")
    return module


def failure() -> Path:
    """Where a failed build of this source leaves its error (so that later processes do
    not try again on their own; ``odtkit native`` does)."""
    return build_dir() / "FAILED"


def build(verbose: bool = False) -> Path:
    """Compile ``SOURCES`` (if not built yet) and load them; the library's path.
    Raises RuntimeError naming what is missing (a compiler, ninja) and how to get it; a
    compiler's failure is also written to ``failure()``."""
    if _state["module"] is not None or _load_built():
        return library()
    from torch.utils import cpp_extension

    env_bin = str(Path(sys.executable).parent)  # ninja from pip lives beside python
    if env_bin not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = env_bin + os.pathsep + os.environ.get("PATH", "")
    missing = [tool for tool in ("ninja", os.environ.get("CXX", "c++")) if shutil.which(tool) is None]
    if missing:
        raise RuntimeError(f"building odtkit's compiled ops needs {' and '.join(missing)}: "
                           f"install a C++ compiler (apt-get install g++) and ninja "
                           f"(pip install ninja), or set ODTKIT_NATIVE=0 to use the Python ops")
    target = build_dir()
    target.mkdir(parents=True, exist_ok=True)
    print(f"odtkit: compiling odtkit's ops once (about a minute) into {target}",
          file=sys.stderr, flush=True)
    try:
        _state["module"] = cpp_extension.load(
            name=NAME, sources=[str(s) for s in SOURCES], build_directory=str(target),
            extra_cflags=["-O3"], verbose=verbose)
    except Exception as err:  # the compiler's own message is in err
        message = (f"building odtkit's compiled ops failed: {str(err).rstrip('.')}. "
                   f"Run `odtkit native` to try again, or set ODTKIT_NATIVE=0 to use the Python ops")
        failure().write_text(message + "\n")
        raise RuntimeError(message) from err
    failure().unlink(missing_ok=True)
    return library()


def available(build_missing: bool = False) -> bool:
    """True if the compiled ops are loaded (loading a build; with ``build_missing``, building
    one first where ``ODTKIT_NATIVE`` allows and no build of this source failed before).
    ``ODTKIT_NATIVE=1`` raises instead of False; "auto" warns once, when asked to build,
    that the Python ops run and why."""
    chosen = mode()
    if chosen == "0":
        return False
    if _state["module"] is not None:
        return True
    if _state["failed"] is None and failure().exists():  # a build of this source failed
        _state["failed"] = failure().read_text().strip()
    if _state["failed"] is None:
        if not (build_missing or chosen == "1"):
            return _load_built()
        try:
            build()
            return True
        except RuntimeError as err:
            _state["failed"] = str(err)
    if chosen == "1":
        raise RuntimeError(f"ODTKIT_NATIVE=1 but the compiled ops are unavailable: "
                           f"{_state['failed']}")
    if build_missing and not _state.get("warned"):
        _state["warned"] = True
        warnings.warn(f"{_state['failed']}; the lean engine runs its Python ops (same results, "
                      f"slower per call)", RuntimeWarning, stacklevel=3)
    return False


def main() -> int:
    """``odtkit native``: build (if needed), load, and say which ops run; the exit status."""
    chosen = mode()
    if chosen == "0":
        print("ODTKIT_NATIVE=0: the lean engine runs its Python ops and the dense codecs "
              "torch's; nothing to build")
        return 0
    failure().unlink(missing_ok=True)  # asked for: try again
    try:
        path = build()
    except RuntimeError as err:
        print(f"odtkit: {err}", file=sys.stderr)
        return 1
    print(f"odtkit's compiled ops are built and load: {path}")
    return 0


__all__ = ["SOURCE", "NAME", "MODES", "mode", "build_dir", "library", "failure", "build",
           "available", "ops", "main"]
