"""The CFG image-token loop run as whole device steps on the `trt` backend, captured once in a CUDA graph.

Step i (i >= 1) is: gen_embed(codes of token i-1) -> lm (one position, all 2n rows) -> KV append -> gen_head
(CFG combine) -> sampling of token i. Everything whose value changes per step lives in device memory, so the
captured step has fixed shapes and addresses:
  - positions: a [T, rows] table written once per request; before each launch a device-to-device copy puts row
    i-1 into the lm's `position_ids` buffer and its first value into `pos_dev` (the native kv_append reads it);
  - the step index for the sampler's counter-based RNG: `step_dev`, copied from a table the same way;
  - tokens: the sampler writes every row's token into `codes` (the next gen_embed input); a strided copy after
    each launch stores the n conditional rows into the [n, T] token array, copied to the host once at the end.
After one warm-up step run directly (TensorRT's first enqueue at a shape may allocate), the step is captured
(`cudaStreamBeginCapture` / `cudaStreamEndCapture` / `cudaGraphInstantiate`) and replayed (`cudaGraphLaunch`).

What needs the native CUDA library (runtime/native.py): device sampling (`cfg_sample`) and the in-graph KV append
(`kv_append` with a device position). Without it: the KV append is one cudaMemcpy2DAsync per layer tensor after
each launch (outside the graph), and sampling reads the logits to the host each step (one sync per step, the same
math as the ORT backend). JANUS_EDGE_TRT_CUDA_GRAPH=0 runs the same device steps without capture.
"""
from __future__ import annotations

import warnings

import numpy as np

from .sampling import check_finite
from .trt_env import check

I64 = 8


class CaptureFailed(RuntimeError):
    """A CUDA-graph capture of the step that did not produce a graph; the message keeps the original error."""


def _device_sampling(be, plan) -> bool:
    """Device sampling needs cfg_sample and the device finite check (the host never sees those logits)."""
    k = be.kernels
    return k is not None and hasattr(k, "cfg_sample") and getattr(k, "nonfinite", None) is not None


def raise_if_nonfinite(worst: int) -> None:
    """The device flag (2: a NaN, 1: an inf, 0: finite) -> the ORT backend's NumericalError, word for word."""
    if worst:
        check_finite(np.array([np.nan if worst >= 2 else np.inf], np.float32), "image-token")


def run_image_steps(be, plan) -> np.ndarray | None:
    """plan: decode.ImageSteps. Returns tokens [n, T] (int64, host)."""
    lm, n, T = plan.lm, plan.n, plan.num_tokens
    rows = lm.rows
    k = be.kernels
    dev_sample = _device_sampling(be, plan)
    dev_kv = k is not None and hasattr(k, "kv_append")
    pos0 = lm.pos
    # per-request device tables (one H2D write each, before the loop)
    pos_table = be.alloc((T, rows), "int64", zero=False)
    be.write(pos_table, np.repeat((pos0 + np.arange(T, dtype=np.int64))[:, None], rows, 1))
    step_table = be.alloc((T,), "int64", zero=False)
    be.write(step_table, np.arange(T, dtype=np.int64))
    pos_dev, step_dev = be.alloc((1,), "int64"), be.alloc((1,), "int64")
    tokens_dev = be.alloc((n, T), "int64") if dev_sample else None
    bad_dev = be.alloc((1,), "uint64") if dev_sample else None  # finite check of every step's logits (zeroed)
    tokens = np.zeros((n, T), np.int64)
    head_in, hidden = plan.head_in, plan.hidden
    half = hidden.nbytes

    def head_and_sample() -> None:
        if not plan.uncond:  # gen_head combines halves: feed [h; h] (u + w(c - u) = h)
            be.copy(head_in.ptr, hidden.ptr, half)
            be.copy(head_in.ptr + half, hidden.ptr, half)
        plan.run_head()
        if dev_sample:
            s = plan.sampling
            k.nonfinite(plan.logits.ptr, int(np.prod(plan.logits.shape)), bad_dev.ptr, str(plan.logits.dtype),
                        be.stream)
            # logits are gen_head's CFG-combined [n, V]: no uncond rows left to combine here
            k.cfg_sample(plan.logits.ptr, n, plan.logits.shape[1], False, 1.0, s.temperature, s.top_k, s.top_p,
                         int(plan.seed), step_dev.ptr, plan.codes.ptr, rows // n, be.stream,
                         dtype=str(plan.logits.dtype))

    def step_body() -> None:
        plan.run_embed()
        plan.run_lm()
        if dev_kv:
            c = lm.cache[0]
            k.kv_append([b.ptr for b in lm.cache], [lm.io[nm].ptr for nm in lm.new_names], rows, c.shape[1],
                        c.shape[2], 1, c.shape[3], pos_dev.ptr, str(c.dtype), be.stream)
        head_and_sample()

    def after(i: int) -> None:
        if not dev_kv:  # the memcpy fallback: addresses depend on the position, so outside the graph
            be.kv_append(lm.cache, [lm.io[nm] for nm in lm.new_names], pos0 + i - 1)
        collect(i)

    def collect(i: int) -> None:
        if dev_sample:  # codes[:n] (conditional rows) -> tokens[:, i]
            be.copy2d(tokens_dev.ptr + i * I64, T * I64, plan.codes.ptr, I64, I64, n)
        else:
            out = be.read(plan.logits)
            plan.check(out)
            tokens[:, i] = plan.sample(out, i)
            be.write(plan.codes, np.tile(tokens[:, i], rows // n)[:, None])
        if plan.on_step is not None:
            plan.on_step(i)

    be.copy(step_dev.ptr, step_table.ptr, I64)
    head_and_sample()
    collect(0)
    exec_graph, capture_error = None, None
    try:
        for i in range(1, T):
            be.copy(lm.io["position_ids"].ptr, pos_table.ptr + (i - 1) * rows * I64, rows * I64)
            be.copy(pos_dev.ptr, pos_table.ptr + (i - 1) * rows * I64, I64)
            be.copy(step_dev.ptr, step_table.ptr + i * I64, I64)
            if exec_graph is None and capture_error is None and i >= 2 and be.use_cuda_graph:
                try:
                    exec_graph = capture(be, step_body)
                except CaptureFailed as e:  # nothing of the step ran: run it (and the rest) uncaptured
                    capture_error = str(e)
                    warnings.warn(f"{e}; running the image steps without a CUDA graph", RuntimeWarning,
                                  stacklevel=2)
            if exec_graph is not None:
                check(be.cudart, be.cudart.cudaGraphLaunch(exec_graph, be.stream), "cudaGraphLaunch")
            else:
                step_body()  # step 1: the warm-up, run directly
            after(i)
        lm.pos = pos0 + T - 1
        if dev_sample:
            tokens = be.read(tokens_dev)  # the one copy to the host (and the finite flag after it)
            raise_if_nonfinite(int(be.read(bad_dev)[0]))
        else:
            be.synchronize()
    finally:
        if exec_graph is not None:
            be.cudart.cudaGraphExecDestroy(exec_graph)
    plan.stats.update(cuda_graph=exec_graph is not None, device_sampling=dev_sample, device_kv_append=dev_kv,
                      cuda_graph_error=capture_error)
    return tokens


def capture(be, body):
    """Record `body`'s launches on the backend's stream into an instantiated CUDA graph (nothing runs).

    A failure while recording (a launch or call that capture forbids, a TensorRT enqueue that allocates) or at
    EndCapture/Instantiate raises CaptureFailed carrying the original error: the capture is ended first, so the
    stream is usable again, and nothing of `body` ran, so the caller can run it directly."""
    cu = be.cudart
    check(cu, cu.cudaStreamBeginCapture(be.stream, cu.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal),
          "cudaStreamBeginCapture")
    try:
        body()
    except Exception as e:
        _end_failed_capture(cu, be.stream)
        raise CaptureFailed(f"CUDA graph capture of the image step failed: {type(e).__name__}: {e}") from e
    try:
        graph = check(cu, cu.cudaStreamEndCapture(be.stream), "cudaStreamEndCapture")
    except RuntimeError as e:  # invalidated by something in body (a sync, a legacy-stream call)
        raise CaptureFailed(f"CUDA graph capture of the image step failed: {e}") from e
    try:
        return check(cu, cu.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
    except RuntimeError as e:
        raise CaptureFailed(f"CUDA graph of the image step cannot be instantiated: {e}") from e
    finally:
        cu.cudaGraphDestroy(graph)


def _end_failed_capture(cu, stream) -> None:
    """End a capture whose body raised; its own error (usually 'capture invalidated') must not hide the body's."""
    try:
        res = cu.cudaStreamEndCapture(stream)
        err, graph = (res[0], res[1]) if isinstance(res, tuple) and len(res) > 1 else (res, None)
        if int(err) == 0 and graph is not None:
            cu.cudaGraphDestroy(graph)
    except Exception:
        pass
