"""Small shared pieces of the benchmarks: step statistics, peak-RSS sampling, the environment record.

Nothing heavy is imported here (numpy, psutil lazily); torch and transformers only in `baseline_hf`.
"""
from __future__ import annotations

import os
import platform
import resource
import threading
import time
from collections.abc import Sequence

import numpy as np


class StopAfter(Exception):
    """Raised from a per-step callback to end a generation after the steps we time (caught by the caller)."""


def ms(seconds: float) -> float:
    return round(float(seconds) * 1e3, 4)


def step_stats(step_s: Sequence[float]) -> dict:
    """Per-step seconds -> p50 / p90 / mean / min / max in milliseconds."""
    a = np.asarray(step_s, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no decode steps were timed")
    return {"decode_step_ms_p50": ms(np.percentile(a, 50)), "decode_step_ms_p90": ms(np.percentile(a, 90)),
            "decode_step_ms_mean": ms(a.mean()), "decode_step_ms_min": ms(a.min()),
            "decode_step_ms_max": ms(a.max()), "steps_timed": int(a.size)}


def process_peak_rss_mb() -> float:
    """High-water mark of this process's resident set since it started (getrusage; Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def rss_mb() -> float:
    try:
        import psutil

        return round(psutil.Process().memory_info().rss / 2**20, 1)
    except ImportError:  # pragma: no cover - psutil is in the bench extra
        with open("/proc/self/statm") as fh:
            return round(int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def _cpu_jiffies() -> tuple[int, int, int]:
    """(busy jiffies of the whole machine, total jiffies, busy jiffies of this process and its threads)."""
    try:
        with open("/proc/stat") as fh:
            f = [int(x) for x in fh.readline().split()[1:]]
        with open("/proc/self/stat") as fh:
            g = fh.read().rsplit(")", 1)[1].split()
        idle = f[3] + (f[4] if len(f) > 4 else 0)
        return sum(f[:8]) - idle, sum(f[:8]), int(g[11]) + int(g[12])
    except (OSError, IndexError, ValueError):
        return 0, 0, 0


class PeakRSS:
    """Peak RSS of one phase: a thread samples the process RSS every `interval` s (getrusage's high-water mark
    is process-wide and never goes down, so it cannot tell the phases of one run apart)."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak_mb, self.start_mb, self.others_cores = interval, 0.0, 0.0, None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, rss_mb())
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRSS":
        self.start_mb = self.peak_mb = rss_mb()
        self._cpu0 = _cpu_jiffies()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_mb = max(self.peak_mb, rss_mb())
        busy1, total1, own1 = _cpu_jiffies()
        busy0, total0, own0 = self._cpu0
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        # CPU the OTHER processes used meanwhile, in cores (0 = a quiet machine; 1 = one core taken from us)
        self.others_cores = (round(max(0, (busy1 - busy0) - (own1 - own0)) / (total1 - total0) * cores, 2)
                             if total1 > total0 else None)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The SIMD flags that matter for the CPU kernels (AVX2, AVX-512 VNNI/BF16, AMX)."""
    want = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [f for f in want if f in have]
    except OSError:
        pass
    return []


def _version(mod: str) -> str | None:
    try:
        return __import__(mod).__version__
    except Exception:  # noqa: BLE001 - absent or broken: record None
        return None


def environment(threads: int | None, backend: str, bundles: dict[str, dict], baseline: bool) -> dict:
    """CPU, cores, threads, library versions, and the precision of each graph of each bundle."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        mem_gib = None
    env = {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "cores": cores, "memory_gib": mem_gib,
           "threads": threads if threads is not None else cores, "threads_requested": threads, "backend": backend,
           "python": platform.python_version(), "platform": platform.platform(),
           "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
           "versions": {"janus_edge": _version("janus_edge"), "onnxruntime": _version("onnxruntime"),
                        "numpy": _version("numpy"), "onnx": _version("onnx")},
           "precision": bundles, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if baseline:
        env["versions"].update(torch=_version("torch"), transformers=_version("transformers"))
    return env


# ---- re-used results: keyed by what made them --------------------------------------------------------------------
def code_version(*packages: str) -> str:
    """A digest of the Python sources of the named janus_edge packages (default: quant, runtime, export): results
    measured with other code do not count as this code's, committed or not."""
    import hashlib
    import importlib

    h = hashlib.sha256()
    for name in packages or ("quant", "runtime", "export"):
        folder = os.path.dirname(importlib.import_module(f"janus_edge.{name}").__file__)
        for f in sorted(x for x in os.listdir(folder) if x.endswith(".py")):
            with open(os.path.join(folder, f), "rb") as fh:
                h.update(f.encode() + b"\0" + fh.read())
    return h.hexdigest()[:16]


def file_digest(path: str) -> str:
    import hashlib

    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()[:16]


def key_of(obj) -> str:
    """A short digest of a JSON-able object (knobs, settings): equal knobs, equal key."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_results(state: dict, out: str, markdown) -> None:
    """OUT.json (the state) and OUT.md (`markdown(state)`), the pair every results script writes."""
    import json

    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out + ".json", "w") as fh:
        json.dump(state, fh, indent=1, default=float)
        fh.write("\n")
    with open(out + ".md", "w") as fh:
        fh.write(markdown(state))
