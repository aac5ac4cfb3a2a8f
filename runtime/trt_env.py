"""Is the `trt` backend usable here? cuda-python, a GPU, TensorRT >= 10.3: each probed for real, none imported eagerly.

`require()` raises one BackendUnavailable line naming every missing piece and how to get it (the CLI prints it and
exits 2). Used by the backend at load and by `janus-edge build` before anything is written.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from janus_edge.errors import BackendUnavailable

from .trt_engines import check_trt_version

HOW_CUDA = "pip install 'janus-edge[trt-cu12]' (CUDA 12 drivers, JetPack 6) or 'janus-edge[trt-cu13]' (driver R580+)"
CUDA_MAJORS = (12, 13)  # cuda-python runtime majors the project is written and pinned against (pyproject extras)
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


def cuda_versions(cudart) -> tuple[int, int]:
    """(runtime, driver) as CUDA encodes them (12060 = 12.6); 0 where the call fails (no driver at all)."""
    out = []
    for fn in (cudart.cudaRuntimeGetVersion, cudart.cudaDriverGetVersion):
        try:
            err, v = fn()
            out.append(int(v) if int(err) == 0 else 0)
        except Exception:
            out.append(0)
    return out[0], out[1]


def cuda_problem(runtime: int, driver: int) -> str | None:
    """Why cuda-python's CUDA runtime cannot work with this driver (None: it can). cuda-python 13 needs a driver
    for CUDA 13 (R580+); JetPack 6 and the 550/570 drivers support CUDA 12 only: every CUDA call then fails, and a
    GPU machine looks like a machine without a GPU."""
    rmaj, dmaj = runtime // 1000, driver // 1000
    if runtime and rmaj not in CUDA_MAJORS:
        return (f"cuda-python's CUDA runtime {rmaj}.{runtime % 1000 // 10} is untested (janus-edge supports CUDA "
                f"{' and '.join(map(str, CUDA_MAJORS))}): {HOW_CUDA}")
    if runtime and driver and dmaj < rmaj:
        return (f"cuda-python is built for CUDA {rmaj}.{runtime % 1000 // 10} but this driver supports CUDA "
                f"{dmaj}.{driver % 1000 // 10}: pip install 'janus-edge[trt-cu{dmaj}]' (cuda-python<{dmaj + 1}) "
                f"or upgrade the driver")
    return None


def probe(need_trt: bool = True) -> TrtEnv:
    env = TrtEnv()
    env.cudart = import_cudart()
    if env.cudart is None:
        env.problems.append(f"cuda-python is not installed ({HOW_CUDA})")
    else:
        err, count = env.cudart.cudaGetDeviceCount()
        versions = cuda_problem(*cuda_versions(env.cudart))
        if int(err) != 0 or not count:
            why = err_name(env.cudart, err) if int(err) != 0 else "0 devices"
            env.problems.append(f"no usable NVIDIA GPU (cudaGetDeviceCount: {why})" +
                                (f"; {versions}" if versions else ""))
        elif versions:
            env.problems.append(versions)
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
