"""`janus-edge doctor`: what this machine can run, one line per fact, then a verdict. Users on a Jetson start here.

Facts: Python, OS/arch, the Jetson board and its memory (where it is one), GPU / driver / compute capability, the CUDA
runtime of cuda-python, TensorRT (and whether this project supports it), onnxruntime and its providers, the native
libraries (each run once: a host call, a real kernel launch), then which backends and precisions can run here.
Nothing is imported eagerly and nothing may raise: a missing piece is a fact. Exit 0 when at least the CPU path
(onnxruntime's CPU provider) works, 1 otherwise.
"""
from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import asdict, dataclass

FP8_MIN_CC = (8, 9)


@dataclass
class Fact:
    name: str
    value: str
    ok: bool | None = None  # None: informational


def _version(dist: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return None


def parse_jetson(model: str | None, release: str | None) -> str | None:
    """/proc/device-tree/model and /etc/nv_tegra_release -> 'NVIDIA Jetson AGX Orin ... (L4T R36.4.0)' or None."""
    if not model or "jetson" not in model.lower():
        return None
    name = model.replace("\x00", "").strip()
    if release and release.startswith("# R"):
        parts = release[2:].split(",")
        rel = parts[0].strip().split()[0]
        rev = next((p.split(":")[1].strip() for p in parts if "REVISION" in p), "")
        name += f" (L4T {rel}{'.' + rev if rev else ''})"
    return name


def _read(path: str) -> str | None:
    try:
        with open(path, errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def mem_total_gib() -> float | None:
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 2**20
    return None


def precisions(cc: tuple[int, int] | None, trt_ok: bool) -> list[str]:
    """Bundle precisions the `trt` backend can run on a GPU of compute capability `cc` (fp8: >= 8.9)."""
    if cc is None or not trt_ok:
        return []
    return ["fp32", "fp16", "int8", "int4"] + (["fp8"] if tuple(cc) >= FP8_MIN_CC else [])


def _cpu_lib() -> Fact:
    """libjanus_edge_cpu: the int4 lm's weight MatMuls on the CPU (runtime/cpu_split.py)."""
    name = "CPU int4 kernels"
    try:
        from . import cpu_split

        why = cpu_split.unavailable()
        if why:
            return Fact(name, f"{why}: int4 lm graphs run ORT's MatMulNBits (slower)", None)
        from .cpu_kernels import load_cpu_lib

        k = load_cpu_lib()
        return Fact(name, f"ok ({k.best_isa} path, up to {k.default_threads} threads): int4 lm graphs run their "
                          "weight MatMuls in libjanus_edge_cpu", True)
    except Exception as e:  # noqa: BLE001 - doctor reports, never raises
        return Fact(name, f"fails: {e}", False)


def _host_lib() -> Fact:
    from .native import BackendUnavailable, load_host_lib

    try:
        out = load_host_lib().philox([0, 0, 0, 0], [0, 0])  # one real call into the library
        return Fact("native host library", f"ok (philox {int(out[0]):#010x})", True)
    except BackendUnavailable as e:
        return Fact("native host library", f"not built ({str(e).split(':')[0]})", None)
    except Exception as e:  # noqa: BLE001 - doctor reports, never raises
        return Fact("native host library", f"fails: {e}", False)


def collect() -> tuple[list[Fact], dict]:
    """(facts, summary) where summary holds what the verdict needs."""
    facts = [Fact("python", f"{platform.python_version()} ({sys.executable})"),
             Fact("os / arch", f"{platform.system()} {platform.release()} / {platform.machine()}")]
    board = parse_jetson(_read("/proc/device-tree/model"), _read("/etc/nv_tegra_release"))
    mem = mem_total_gib()
    if board:
        facts.append(Fact("jetson", f"{board}, {mem:.1f} GiB shared CPU/GPU memory" if mem else board))
    elif mem:
        facts.append(Fact("memory", f"{mem:.1f} GiB"))
    s = {"cpu": False, "gpu": None, "cc": None, "trt": False, "providers": []}
    try:
        import onnxruntime as ort

        s["providers"] = list(ort.get_available_providers())
        s["cpu"] = "CPUExecutionProvider" in s["providers"]
        facts.append(Fact("onnxruntime", f"{ort.__version__}: {', '.join(s['providers'])}", s["cpu"]))
    except Exception as e:  # noqa: BLE001
        facts.append(Fact("onnxruntime", f"not usable ({e}): pip install onnxruntime", False))
    facts += _gpu_facts(s)
    facts.append(_host_lib())
    facts.append(_cpu_lib())
    facts += _verdict_lines(s)
    return facts, s


def _gpu_facts(s: dict) -> list[Fact]:
    from . import trt_env
    from .trt_engines import check_trt_version

    out = []
    cu = trt_env.import_cudart()
    if cu is None:
        out.append(Fact("cuda-python", f"not installed ({trt_env.HOW_CUDA})", None))
    else:
        rt, drv = trt_env.cuda_versions(cu)
        ver = _version("cuda-python") or _version("cuda-bindings") or "?"
        fmt = lambda v: f"{v // 1000}.{v % 1000 // 10}" if v else "none"  # noqa: E731
        problem = trt_env.cuda_problem(rt, drv)
        out.append(Fact("cuda-python", f"{ver}, CUDA runtime {fmt(rt)}; driver supports CUDA {fmt(drv)}"
                        + (f": {problem}" if problem else ""), (problem is None) if drv else None))
        env = trt_env.probe(need_trt=False)
        if env.ok:
            d = env.device
            s["gpu"], s["cc"] = d["name"], tuple(d["compute_capability"])
            out.append(Fact("gpu", f"{d['name']}, compute capability {s['cc'][0]}.{s['cc'][1]}, "
                                   f"{d['total_memory'] / 2**30:.1f} GiB", True))
            out.append(_cuda_lib(cu))
        else:
            out.append(Fact("gpu", "; ".join(env.problems), None))
    try:
        import tensorrt as trt

        try:
            check_trt_version(trt.__version__)
            s["trt"] = True
            out.append(Fact("tensorrt", f"{trt.__version__} (supported)", True))
        except Exception as e:  # noqa: BLE001
            out.append(Fact("tensorrt", f"{trt.__version__}: {e}", False))
    except ImportError:
        out.append(Fact("tensorrt", "not installed (JetPack 6.1+: venv --system-site-packages; desktop: "
                                    "'janus-edge[trt-cu12]' or '[trt-cu13]')", None))
    except Exception as e:  # noqa: BLE001 - a broken install (missing libnvinfer)
        out.append(Fact("tensorrt", f"installed but fails to import: {e}", False))
    return out


def _cuda_lib(cu) -> Fact:
    from . import native

    try:
        k = native.load_cuda_lib()
    except Exception as e:  # noqa: BLE001
        return Fact("native CUDA library", f"not usable ({str(e)[:120]})", None)
    err, stream = cu.cudaStreamCreate()
    problem = native.probe_cuda_lib(k, cu, int(stream)) if int(err) == 0 else "cudaStreamCreate failed"
    if int(err) == 0:
        cu.cudaStreamDestroy(stream)
    return Fact("native CUDA library", "ok (probe launch ran)" if problem is None else f"fails: {problem}",
                problem is None)


def _verdict_lines(s: dict) -> list[Fact]:
    gpu = s["gpu"] is not None
    rows = [Fact("backend ort --device cpu", "fp32, fp16, int8, int4" if s["cpu"] else "no (onnxruntime missing)",
                 s["cpu"])]
    for dev, prov in (("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider")):
        ok = gpu and prov in s["providers"]
        why = "yes" if ok else ("no GPU" if not gpu else f"no {prov} (pip install 'janus-edge[ort-gpu]')")
        rows.append(Fact(f"backend ort --device {dev}", why, ok if gpu else None))
    p = precisions(s["cc"], s["trt"])
    rows.append(Fact("backend trt", ", ".join(p) if p else ("no TensorRT" if gpu else "no GPU"),
                     bool(p) if gpu else None))
    return rows


def verdict(s: dict) -> tuple[str, int]:
    if not s["cpu"]:
        return "verdict: nothing can run here: install onnxruntime", 1
    gpu = [] if s["gpu"] is None else [b for b, ok in (("trt", s["trt"]),
                                                       ("ort cuda", "CUDAExecutionProvider" in s["providers"]))
                                       if ok]
    if gpu:
        return f"verdict: ready: CPU and GPU ({', '.join(gpu)}) on {s['gpu']}", 0
    return "verdict: ready for the CPU path (backend ort); no GPU path here", 0


def run_cli(as_json: bool = False) -> int:
    facts, s = collect()
    line, code = verdict(s)
    if as_json:
        print(json.dumps({"facts": [asdict(f) for f in facts], "verdict": line, "exit": code}, indent=2))
        return code
    width = max(len(f.name) for f in facts)
    for f in facts:
        mark = {True: "ok ", False: "!! ", None: "-- "}[f.ok]
        print(f"{mark}{f.name:<{width}}  {f.value}")
    print(line)
    return code
