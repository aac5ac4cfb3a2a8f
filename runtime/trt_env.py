"""Is the `trt` backend usable here? cuda-python, a GPU, TensorRT >= 10.3: each probed for real, none imported eagerly.

`require()` raises one BackendUnavailable line naming every missing piece and how to get it (the CLI prints it and
exits 2). Used by the backend at load and by `janus-edge build` before anything is written.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from janus_edge.errors import BackendUnavailable

from .trt_engines import check_trt_version

HOW_CUDA = "pip install 'janus-edge[trt]'"
HOW_TRT = ("on Jetson, JetPack 6.1+ ships it: make the venv with --system-site-packages; on a desktop GPU, install "
           "NVIDIA's tensorrt wheel from pypi.nvidia.com (docs/tensorrt-jetson.md)")


def import_cudart():
    """cuda-python's runtime module: `cuda.bindings.runtime` (12.6.1+, 13.x), else the older `cuda.cudart`."""
    try:
        from cuda.bindings import runtime as cudart
        return cudart
    except ImportError:
        pass
    try:
        from cuda import cudart  # cuda-python < 12.6.1 (removed in 13)
        return cudart
    except ImportError:
        return None


def err_name(cudart, err) -> str:
    try:
        return cudart.cudaGetErrorName(err)[1].decode()
    except Exception:
        return str(err)


def check(cudart, res, what: str):
    """cuda-python returns (err, *values): raise on error, return the values (one value unwrapped)."""
    err, *vals = res if isinstance(res, tuple) else (res,)
    if int(err) != 0:
        raise RuntimeError(f"{what} failed: {err_name(cudart, err)}")
    return vals[0] if len(vals) == 1 else (tuple(vals) if vals else None)


@dataclass
class TrtEnv:
    cudart: object | None = None
    trt: object | None = None
    device: dict = field(default_factory=dict)  # name, compute_capability [major, minor], total_memory
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def device_info(cudart, index: int = 0) -> dict:
    props = check(cudart, cudart.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
    name = props.name
    name = name.decode(errors="replace") if isinstance(name, (bytes, bytearray)) else str(name)
    return {"name": name.split("\x00")[0].strip(), "compute_capability": [int(props.major), int(props.minor)],
            "total_memory": int(props.totalGlobalMem)}


def probe(need_trt: bool = True) -> TrtEnv:
    env = TrtEnv()
    env.cudart = import_cudart()
    if env.cudart is None:
        env.problems.append(f"cuda-python is not installed ({HOW_CUDA})")
    else:
        err, count = env.cudart.cudaGetDeviceCount()
        if int(err) != 0 or not count:
            why = err_name(env.cudart, err) if int(err) != 0 else "0 devices"
            env.problems.append(f"no usable NVIDIA GPU (cudaGetDeviceCount: {why})")
        else:
            try:
                env.device = device_info(env.cudart)
            except RuntimeError as e:
                env.problems.append(f"cannot query the GPU ({e})")
    if need_trt:
        try:
            import tensorrt as trt
        except ImportError:
            env.problems.append(f"tensorrt is not installed ({HOW_TRT})")
        else:
            try:
                check_trt_version(trt.__version__)
                env.trt = trt
            except BackendUnavailable as e:
                env.problems.append(str(e))
    return env


def require(what: str = "backend 'trt'", need_trt: bool = True) -> TrtEnv:
    env = probe(need_trt)
    if not env.ok:
        raise BackendUnavailable(f"{what} cannot run here: {'; '.join(env.problems)}")
    return env


def trt_version(trt) -> str:
    return str(trt.__version__)
