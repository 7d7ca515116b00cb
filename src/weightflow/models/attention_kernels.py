"""Compiled CPU kernels for the fused NG-T attention and edge MLP: one pass over a layer block's edges each, built once
per machine.

:mod:`weightflow.models.layered` computes the attention block by block with ATen ops: for each block a handful of
batched products over hundreds of tiny matrices and element-wise ops on ``[·, H]`` tensors, about 18,000 ATen calls a
training step.  Each of the loops below is one pass over the block's edge states ``ê`` ``[O, B, I, d]`` in
``attention_kernels.cpp`` (per edge ``(o, b, i)`` from source ``i`` to target ``o`` of graph ``b``, and head ``h``;
``τ`` the scale, ``·_t`` a term of the target, ``·_s`` of the source):

``scores``
    ``score_t = τ (<P_t + R_s, ê> + <q_e, k_e> + <q_t, k_s>)``, ``score_s = τ (<R_t + P_s, ê> + <q_e, k_e> +
    <k_t, q_s>)`` — the target attending to the source and the reverse, from the per-node operands ``[P | R]``, the
    edge GEMM's ``q_e, k_e`` and the node terms ``q, k``;
``values``
    ``α ← α / Σ α`` in place, then ``A_t = Σ_i α_t ê`` per target and ``A_s = Σ_o α_s ê`` per source (the values' edge
    part is ``W_v A``) and the node part ``Σ α ṽ``;
``d_alpha``
    ``dα_t = <G_t, ê> + <dout_t, ṽ_s>``, ``dα_s = <G_s, ê> + <ṽ_t, dout_s>``, and, accumulated, ``Σ α dα`` per node and
    the values' node-term gradients ``Σ α dout``;
``score_grads``
    ``dê += Σ_h α_t G_t + σ_t P_t + σ_s R_t + σ_s P_s + σ_t R_s + α_s G_s``; ``[dP_t | dR_t] = Σ_i [σ_t | σ_s] ê``,
    ``[dP_s | dR_s] = Σ_o [σ_s | σ_t] ê``; the node terms' ``[dq | dk]`` through ``<q_t, k_s>`` and ``<k_t, q_s>``;

and, over the block's rows, ``softmax_exp`` (``α ← exp(score − max)`` and its sums per node; the maximum comes out of
``scores``), ``edge_gradients`` (``[σ k_e | σ q_e | du_e]``, the edge GEMM's output gradient, ``σ = σ_t + σ_s`` per
head), and the edge MLP's hidden layer ``edge_mlp`` (``z = u_e + S_s + T_t``, ``SiLU(z)``) with its backward pass
``edge_mlp_grad`` (``dz = g SiLU'(z)`` and the node terms' sums).  ``exp`` runs on 16 lanes at a time (Cody–Waite
reduction and a degree-7 polynomial: within a float32 ulp or two of ATen's).

Each runs over the graphs of the batch in parallel (ATen's thread pool, so ``torch.set_num_threads`` and the
training's ``flow.threads`` apply) and writes every output element from one thread in a fixed order: the results do
not depend on the number of threads.  They agree with the ATen path to float32 rounding, not bitwise (sums run in
another order): the same config gives the same bytes on the same machine, where the same calls take the kernels.

Built with ``torch.utils.cpp_extension.load`` (g++ with OpenMP, and ninja — a dependency of this package) into
PyTorch's extension cache (``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``, under ``weightflow/``),
once per machine: 13–16 s on 2 cores, then a load in milliseconds; concurrent builds wait on PyTorch's lock file,
and a lock file left by a killed build is removed after :data:`STALE_LOCK_S` (PyTorch would wait on it forever).
The build is named after the source's hash and the CPU's vector extension (``AVX512``, ``AVX2`` or ``DEFAULT``,
compiled with the matching ``-m`` flags, never ``-march=native``), so nodes of a cluster that share a home directory
never load code compiled for another CPU.  ``WEIGHTFLOW_KERNELS=0`` turns the kernels off; where the build fails (no
compiler, no OpenMP) the reason is logged once and the ATen path runs.  :func:`usable` (:func:`usable_edge_mlp`) says
whether a call may use them: float32 CPU tensors, an edge width of 16, 32, 64 or 128 and a key width (edge-MLP
width) that is a multiple of 16 (the kernels work on vectors of 16 floats), outside ``torch.func`` transforms and the
likelihoods' vmapped backward pass, which run the ATen path (a custom op has no batching rule).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["load", "usable", "usable_edge_mlp", "WIDTHS"]

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("attention_kernels.cpp")
WIDTHS = (16, 32, 64, 128)  # edge widths the kernels are instantiated for
STALE_LOCK_S = 300.0  # a build takes 13–16 s on 2 cores: a build lock this old was left by a killed build
_ARCH_FLAGS = {  # per ATen CPU capability: vector flags safe on every CPU that reports it
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx2", "-mfma"],
    "AVX2": ["-mavx2", "-mfma"],
}


def _disabled() -> bool:
    return os.environ.get("WEIGHTFLOW_KERNELS", "1").strip().lower() in {"0", "off", "false", "no"}


@cache
def load() -> object | None:
    """``torch.ops.weightflow_attention`` — built on first use, then cached — or ``None`` where the kernels are off
    (``WEIGHTFLOW_KERNELS=0``) or cannot be built (the reason is logged once)."""
    if _disabled():
        log.info("attention kernels off (WEIGHTFLOW_KERNELS=%s): the ATen path runs", os.environ["WEIGHTFLOW_KERNELS"])
        return None
    from torch.utils.cpp_extension import load as build

    compiler = os.environ.get("CXX", "c++")
    missing = [what for what, ok in ((compiler, shutil.which(compiler)), ("ninja", _find_ninja())) if not ok]
    if missing:
        log.warning("attention kernels unavailable (%s not found): the NG-T attention runs on ATen ops, about 1.4x "
                    "slower", " and ".join(missing))
        return None
    capability = torch.backends.cpu.get_cpu_capability()
    source = SOURCE.read_bytes()
    name = f"weightflow_attention_{capability.lower()}_{hashlib.sha256(source).hexdigest()[:12]}"
    flags = ["-O3", "-fopenmp", *_ARCH_FLAGS.get(capability, [])]
    start = time.perf_counter()
    try:
        directory = _build_directory(name)
        _wait_for_lock(directory / "lock")
        build(name, sources=[str(SOURCE)], extra_cflags=flags, extra_ldflags=["-fopenmp"], is_python_module=False,
              build_directory=str(directory))
    except Exception as error:  # a failed build must not stop a run: the ATen path computes the same function
        lines = str(error).strip().splitlines()
        reason = next((line for line in lines if "error" in line.lower()), lines[-1] if lines else type(error).__name__)
        log.warning("attention kernels unavailable (build failed: %s): the NG-T attention runs on ATen ops", reason)
        return None
    seconds = time.perf_counter() - start
    if seconds > 5:
        log.info("attention kernels built in %.0f s (%s, %s)", seconds, capability, name)
    return torch.ops.weightflow_attention


def _build_directory(name: str) -> Path:
    """``$TORCH_EXTENSIONS_DIR`` (or PyTorch's default root) ``/weightflow/<name>``, created."""
    from torch.utils.cpp_extension import get_default_build_root

    directory = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()) / "weightflow" / name
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _wait_for_lock(lock: Path, stale_after_s: float = STALE_LOCK_S) -> None:
    """Wait while another process builds (PyTorch's lock file ``lock`` exists), at most until the file is
    ``stale_after_s`` old; then remove it.  PyTorch itself waits on that file without bound, and a build killed midway
    (a job's time limit, Ctrl-C) leaves it behind: every later run would hang."""
    while True:
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return
        if age > stale_after_s:
            log.warning("removing a build lock left %.0f s ago by an interrupted build: %s", age, lock)
            lock.unlink(missing_ok=True)
            return
        time.sleep(0.5)


def _find_ninja() -> bool:
    """Whether PyTorch finds ninja; if not, puts the ``ninja`` pip package's binary (a dependency) on ``PATH`` first —
    an environment's ``bin`` is not on ``PATH`` when its Python runs without activation."""
    from torch.utils.cpp_extension import is_ninja_available

    if is_ninja_available():
        return True
    try:
        import ninja
    except ImportError:
        return False
    os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, os.environ.get("PATH", "")])
    return is_ninja_available()


def usable(width: int, key_width: int, heads: int, *tensors: Tensor) -> bool:
    """Whether the kernels may run: an edge width in :data:`WIDTHS`, a key width that is a multiple of 16 (at most
    128), at most 16 heads dividing both; float32 CPU ``tensors``, none of them batched or wrapped (``torch.func``
    transforms, the vmapped backward pass of ``is_grads_batched``); and the kernels built."""
    if width not in WIDTHS or key_width % 16 or not 0 < key_width <= 128 or not 0 < heads <= 16:
        return False
    if width % heads or key_width % heads:
        return False
    for x in tensors:
        if x.device.type != "cpu" or x.dtype != torch.float32 or not _plain(x):
            return False
    return load() is not None


def usable_edge_mlp(hidden: int, *tensors: Tensor) -> bool:
    """Whether the edge MLP's kernels may run: a hidden width that is a multiple of 16 (at most 128) and ``tensors``
    as :func:`usable` asks."""
    if hidden % 16 or not 0 < hidden <= 128:
        return False
    plain = all(x.device.type == "cpu" and x.dtype == torch.float32 and _plain(x) for x in tensors)
    return plain and load() is not None


def _plain(x: Tensor) -> bool:
    """Whether ``x`` is a plain tensor with storage the kernels can read: not a batched tensor (``torch.func.vmap``,
    or autograd's ``is_grads_batched`` backward pass) nor a ``torch.func`` grad wrapper."""
    return torch._C._has_storage(x) and not torch._C._functorch.is_functorch_wrapped_tensor(x)
