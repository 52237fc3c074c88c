"""llama-cpp-python with llama.cpp's weight repacking turned off. Imported, it offers
``disable_weight_repacking()``; run as a script, it is ``python -m llama_cpp.server``
(the same arguments) with repacking off.

llama-cpp-python compiles llama.cpp for the machine that installs it (``GGML_NATIVE``).
On an Intel Xeon with AMX the CPU backend then repacks quantized weights for its AMX
kernels, and the first matrix product kills the process with a general protection fault
on ``ldtilecfg`` in libggml-cpu's ``ggml_backend_amx_mul_mat`` (seen on this workplace's
Xeons, 2026-11-30, llama-cpp-python 0.3.36; the AMD machines have no AMX). llama.cpp's
``use_extra_bufts`` model parameter keeps the weights in plain CPU buffers, where the
ordinary kernels run. llama-cpp-python exposes it neither to ``Llama()`` nor to its
server's flags, so this sets it in the library's default model parameters, which both
start from. It is llama.cpp's inference as before; only the repacked kernels' speed-up is
given up, and no test measures it. (llamahost's own engine, the xllamacpp wheel, is a
generic build without AMX kernels and is not affected.)
"""

from __future__ import annotations

import runpy
from pathlib import Path

import llama_cpp.llama_cpp as llama_cpp_lib

_library_defaults = llama_cpp_lib.llama_model_default_params


def _without_repacking() -> llama_cpp_lib.llama_model_params:
    params = _library_defaults()
    params.use_extra_bufts = False
    return params


def disable_weight_repacking() -> None:
    """Every ``llama_cpp.Llama`` made after this call keeps its weights unrepacked."""
    llama_cpp_lib.llama_model_default_params = _without_repacking


def disable_weight_repacking_on_amx() -> bool:
    """For the benches, which keep repacking (and its speed) wherever it does not crash:
    turn it off on a host with AMX only; says whether it did."""
    try:
        amx = "amx_tile" in Path("/proc/cpuinfo").read_text()
    except OSError:
        amx = False
    if amx:
        disable_weight_repacking()
    return amx


if __name__ == "__main__":
    disable_weight_repacking()
    # The server's own argument parser reads the rest of the command line.
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
