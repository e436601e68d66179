"""How the compiled module ``infomax_ext._C`` was built, readable without loading it.

CMake writes ``_build_info.json`` beside the package when it builds ``_C``; :func:`build_info`
returns it, and :func:`load_failure_message` uses it to say why a binary does not load next to
the running torch and what to install.
"""
from __future__ import annotations

import importlib.resources
import json
from typing import Any

import torch


__all__ = ["build_info", "load_failure_message"]

def build_info() -> dict[str, Any]:
    """The build of the compiled kernels, as a dict:

    - ``version``: the package version built;
    - ``torch``: the torch version built against (its headers);
    - ``stable_abi_target``: the oldest torch ("major.minor") whose stable C ABI the binary
      uses: it loads on that torch and every later one;
    - ``cuda``: the CUDA version of the kernels, "" for a CPU-only build;
    - ``cuda_archs``: the GPU architectures compiled (CMake notation: "90-real" machine code
      only, "120" machine code and PTX), empty for a CPU-only build;
    - ``compiler``: the C++ compiler.

    Every value is None when no compiled module was built (a source tree used as is).
    """
    keys = ("version", "torch", "stable_abi_target", "cuda", "cuda_archs", "compiler")
    try:
        info = json.loads(
            importlib.resources.files(__package__).joinpath("_build_info.json").read_text()
        )
    except (OSError, ValueError):
        return dict.fromkeys(keys)
    archs = info.get("cuda_archs") or ""
    info["cuda_archs"] = [a for a in archs.split(";") if a]
    return {key: info.get(key) for key in keys}


def _compiled_module_present() -> bool:
    """True when a file of the compiled module (_C.*.so) lies in the package."""
    try:
        return any(entry.name.startswith("_C.") and entry.name.endswith((".so", ".pyd"))
                   for entry in importlib.resources.files(__package__).iterdir())
    except OSError:
        return False


def load_failure_message(exc: BaseException) -> str:
    """Why ``infomax_ext._C`` did not load (``exc``), the build's and the running torch's
    versions, and what to install."""
    reason = f"Reason: {type(exc).__name__}: {exc}."
    if not _compiled_module_present():
        return (
            f"{reason} The compiled module infomax_ext._C is not installed next to the package: "
            "install a prebuilt wheel, or build it with `pip install --no-build-isolation .` "
            "after installing torch."
        )
    info = build_info()
    running = f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none: a CPU build'})"
    if info["torch"] is None:
        built = "an unknown build (no _build_info.json beside it)"
        advice = "Reinstall infomax_ext."
    else:
        cuda = f"CUDA {info['cuda']}" if info["cuda"] else "CPU only"
        built = (
            f"infomax_ext {info['version']}, built against torch {info['torch']} ({cuda}) for "
            f"the stable ABI of torch >= {info['stable_abi_target']}"
        )
        if info["cuda"] and not torch.version.cuda:
            advice = (
                "This is a CUDA build of infomax_ext and the running torch has no CUDA: install "
                "a CUDA build of torch, or the CPU wheel of infomax_ext (+cpu)."
            )
        else:
            advice = (
                f"Install torch >= {info['stable_abi_target']}, or rebuild infomax_ext for the "
                "running torch: `pip install --no-build-isolation --force-reinstall .` in its "
                "source tree."
            )
    return f"{reason} The binary is {built}; the running torch is {running}. {advice}"
