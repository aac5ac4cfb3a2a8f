"""`janus-edge triton-repo` and `janus-edge serve` (argparse and thin runners; the work is in repo.py / launch.py)."""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import tempfile
import time


def _repo_args(s) -> None:
    s.add_argument("bundle", help="bundle (or engines directory with --backend trt) to serve")
    s.add_argument("--rows", type=int, default=8,
                   help="LM rows in the decode pool (an image with guidance takes 2, a chat 1)")
    s.add_argument("--max-len", type=int, default=None,
                   help="cache slots per row: the longest prompt + new tokens (default: image tokens + 384)")
    s.add_argument("--max-queue", type=int, default=16, help="requests waiting for rows before 'busy' errors")
    s.add_argument("--backend", default="ort", choices=["ort", "trt"],
                   help="ort: ONNX Runtime on a bundle; trt: TensorRT on an engines directory")
    s.add_argument("--threads", type=int, default=None, help="CPU threads of the ORT sessions (default: all cores)")


def add_serving_parsers(sub, make=None) -> None:
    """`triton-repo` and `serve`; `make(sub, name, help)` makes a subparser (janus_edge/cli_args.py's _cmd)."""
    make = make or (lambda sub, name, help: sub.add_parser(name, help=help))
    s = make(sub, "triton-repo", "write a Triton model repository (t2i + streaming chat) for a bundle")
    _repo_args(s)
    s.add_argument("--out", required=True, help="model repository directory to write")
    s.add_argument("--force", action="store_true", help="replace an existing --out (default: refuse)")

    s = make(sub, "serve", "serve a bundle through tritonserver (HTTP + gRPC) until Ctrl-C")
    _repo_args(s)
    s.add_argument("--http-port", type=int, default=8000, help="HTTP port (t2i)")
    s.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (t2i, streaming chat)")
    s.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics port")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    s.add_argument("--triton-venv", default=None,
                   help="venv holding nvidia-pytriton + janus-edge (default $JANUS_EDGE_TRITON_VENV or .venv-triton)")


def _options(a):
    from .repo import RepoOptions

    return RepoOptions(rows=a.rows, max_len=a.max_len, max_queue=a.max_queue, backend=a.backend, threads=a.threads,
                       force=getattr(a, "force", False))


def run_triton_repo(a) -> int:
    from .launch import find_triton
    from .repo import write_repo

    out = write_repo(a.bundle, a.out, _options(a))
    print(out)
    try:
        t = find_triton()
        print(f"start it with: {shlex.join([t.binary, '--model-repository', out])}"
              + ("  (run `janus-edge serve` instead to get the venv's PATH and libs set for the wheel's server)"
                 if t.stub else ""))
    except Exception:  # noqa: BLE001 - the repository is written; the hint is optional
        print(f"start it with: tritonserver --model-repository {out}")
    return 0


def run_serve(a) -> int:
    from .launch import TritonServer
    from .repo import write_repo

    repo = write_repo(a.bundle, os.path.join(tempfile.mkdtemp(prefix="janus-serve-"), "repo"), _options(a))
    srv = TritonServer(repo, venv=a.triton_venv, http_port=a.http_port, grpc_port=a.grpc_port,
                       metrics_port=a.metrics_port, host=a.host)
    print(f"[serve] {shlex.join(srv.command())}", flush=True)
    srv.start(timeout_s=900)
    print(f"[serve] ready: HTTP {srv.http_url} (t2i), gRPC {srv.grpc_url} (t2i, streaming chat); log {srv.log_path}",
          flush=True)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        while not stop["now"] and srv.proc.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    rc = srv.stop()
    shutil.rmtree(os.path.dirname(repo), ignore_errors=True)
    print(f"[serve] stopped ({rc})", flush=True)
    return 0 if rc in (0, None) else 1
