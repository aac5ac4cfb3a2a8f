"""Find and start a `tritonserver` for a model repository (the nvidia-pytriton wheel's, or one on PATH).

The wheel (`pip install nvidia-pytriton`) ships tritonserver 2.x, its Python backend and one Python-backend stub
per CPython minor version. The stub embeds the system's libpython3.X and takes its stdlib and site-packages from
the first `python3` on PATH, so the venv holding the wheel (and janus-edge, installed in it) must be made from the
system Python whose libpython3.X.so the stub links (Debian/Ubuntu: /usr/bin/python3.11 + libpython3.11), and its
bin/ must come first on PATH. A pyenv-built Python of the same minor version mixes its stdlib with the system
libpython and fails (`_thread.RLock has no _recursion_count`). See docs/serving.md.

    venv: JANUS_EDGE_TRITON_VENV, else <repo root>/.venv-triton, else the running interpreter's prefix.
"""
from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass

from janus_edge.errors import BackendUnavailable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class TritonInstall:
    binary: str
    backends: str  # source of backends/python (+ the stub for the venv's Python)
    stub: str | None  # python backend stub to copy into backends/python (wheel layout), None if in place
    libs: str | None  # LD_LIBRARY_PATH addition (the wheel's bundled libs)
    python_bin: str | None  # venv bin dir that goes first on PATH


def default_venv() -> str:
    import sys

    env = os.environ.get("JANUS_EDGE_TRITON_VENV")
    if env:
        return env
    local = os.path.join(ROOT, ".venv-triton")
    return local if os.path.isdir(local) else sys.prefix


def find_triton(venv: str | None = None) -> TritonInstall:
    venv = venv or default_venv()
    for sp in sorted(glob.glob(os.path.join(venv, "lib", "python3.*", "site-packages"))):
        dist = os.path.join(sp, "pytriton", "tritonserver")
        binary = os.path.join(dist, "bin", "tritonserver")
        if os.path.isfile(binary):
            minor = os.path.basename(os.path.dirname(sp))[len("python"):]
            stub = os.path.join(dist, "python_backend_stubs", minor, "triton_python_backend_stub")
            if not os.path.isfile(stub):
                raise BackendUnavailable(f"the nvidia-pytriton wheel in {venv} has no Python-backend stub for {minor}")
            return TritonInstall(binary, os.path.join(dist, "backends"), stub, os.path.join(sp, "nvidia_pytriton.libs"),
                                 os.path.join(venv, "bin"))
    on_path = shutil.which("tritonserver")
    if on_path:  # a Triton container / tarball install: backends next to the binary
        return TritonInstall(on_path, os.path.join(os.path.dirname(os.path.dirname(on_path)), "backends"), None, None,
                             None)
    raise BackendUnavailable(f"no tritonserver found (looked in the venv {venv} and on PATH); set up the serving venv: "
                             "/usr/bin/python3.11 -m venv .venv-triton && .venv-triton/bin/pip install nvidia-pytriton "
                             "-e . (docs/serving.md)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TritonServer:
    """tritonserver on 127.0.0.1 with free ports; `start()` waits until every model is ready; `stop()` ends it."""

    def __init__(self, repo: str, venv: str | None = None, http_port: int = 0, grpc_port: int = 0,
                 metrics_port: int = 0, log_path: str | None = None, exit_timeout_s: int = 30,
                 host: str = "127.0.0.1"):
        self.repo, self.install = os.path.abspath(repo), find_triton(venv)
        self.http_port, self.grpc_port = http_port or free_port(), grpc_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.host, self.exit_timeout_s = host, exit_timeout_s
        self.work = tempfile.mkdtemp(prefix="janus-triton-")
        self._own_log = log_path is None
        self.log_path = log_path or os.path.join(self.work, "tritonserver.log")
        self.proc: subprocess.Popen | None = None
        self._log_text: str | None = None  # the log's text once the work dir is removed (stop)

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def command(self) -> list[str]:
        backends = self._backends()
        return [self.install.binary, f"--model-repository={self.repo}", f"--backend-directory={backends}",
                f"--http-address={self.host}", f"--http-port={self.http_port}", f"--grpc-address={self.host}",
                f"--grpc-port={self.grpc_port}", f"--metrics-address={self.host}",
                f"--metrics-port={self.metrics_port}", f"--exit-timeout-secs={self.exit_timeout_s}",
                "--allow-gpu-metrics=false", "--log-verbose=0"]

    def env(self) -> dict:
        env = dict(os.environ)
        if self.install.libs:
            env["LD_LIBRARY_PATH"] = ":".join(p for p in (env.get("LD_LIBRARY_PATH"), self.install.libs) if p)
        if self.install.python_bin:
            env["PATH"] = self.install.python_bin + os.pathsep + env.get("PATH", "")
        for k in ("PYTHONHOME", "VIRTUAL_ENV", "PYTHONPATH"):  # the stub takes its Python from PATH alone
            env.pop(k, None)
        return env

    def _backends(self) -> str:
        if self.install.stub is None:
            return self.install.backends
        dst = os.path.join(self.work, "backends")
        if not os.path.isdir(dst):
            shutil.copytree(self.install.backends, dst, ignore=shutil.ignore_patterns("__pycache__"))
            shutil.copy(self.install.stub, os.path.join(dst, "python", "triton_python_backend_stub"))
        return dst

    def start(self, timeout_s: float = 180.0) -> "TritonServer":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"tritonserver exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.ready():
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"tritonserver not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def log_tail(self, n: int = 40) -> str:
        if self._log_text is not None:  # the server has stopped and its work dir is gone: the log kept in memory
            return "".join(self._log_text.splitlines(keepends=True)[-n:])
        try:
            with open(self.log_path, errors="replace") as fh:
                return "".join(fh.readlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM (Triton finishes or fails what is in flight within --exit-timeout-secs), then SIGKILL. The work
        dir (backends copy, own log) is removed whatever the exit: the log's text stays readable via log_tail()."""
        if self.proc is None:
            self._cleanup()
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s or self.exit_timeout_s + 30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._cleanup()
        return self.proc.returncode

    def _cleanup(self) -> None:
        if self._own_log and self._log_text is None:
            self._log_text = self.log_tail(100_000)
        shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
