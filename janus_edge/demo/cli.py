"""`janus-edge demo BUNDLE [--port] [--host] [--server URL]`: arguments and the call into the app (no gradio import
until the page is built)."""
from __future__ import annotations

import importlib.util


def add_demo_parser(sub, cmd=None) -> None:
    """`cmd(sub, name, help)` makes the subparser where the CLI has such a factory (its help formatter appends each
    option's default); plain `sub.add_parser` otherwise."""
    what = "a web page (Gradio): text to image with a live preview, image chat"
    s = cmd(sub, "demo", what) if cmd is not None else sub.add_parser("demo", help=what, description=what)
    s.add_argument("bundle", help="bundle directory (what `janus-edge export` or `quantize` wrote)")
    s.add_argument("--port", type=int, default=7860, help="port of the page")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to listen on: 127.0.0.1 is this machine only; 0.0.0.0 is every interface, where "
                        "anyone who reaches the port can use the model (no login)")
    s.add_argument("--server", default=None, metavar="URL",
                   help="send the requests to a running `janus-edge serve` (its gRPC address, e.g. 127.0.0.1:8001) "
                        "(default: none, the bundle runs in this process)")
    s.add_argument("--backend", default="ort", choices=["ort", "trt"], help="runtime backend (in process)")
    s.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    s.add_argument("--rows", type=int, default=8,
                   help="scheduler rows shared by every open tab (an image with guidance takes 2, a chat 1)")


def run_demo(bundle: str, port: int = 7860, host: str = "127.0.0.1", server: str | None = None, backend: str = "ort",
             threads: int | None = None, rows: int = 8) -> int:
    from janus_edge.errors import BackendUnavailable, InputError

    if importlib.util.find_spec("gradio") is None:
        raise BackendUnavailable("the demo needs gradio: pip install 'janus-edge[demo]'")
    if not 0 < port < 65536:
        raise InputError(f"--port must be in 1..65535, got {port}")
    _check_port(host, port)  # before the model loads (minutes for a big one)
    from .app import DemoConfig, launch, warn_if_public

    warn_if_public(host)
    launch(DemoConfig(bundle=bundle, host=host, port=port, server=server, backend=backend, threads=threads,
                      rows=rows))
    return 0


def _check_port(host: str, port: int) -> None:
    import socket

    from janus_edge.errors import InputError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise InputError(f"--host {host!r} is not an address here ({e})") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise InputError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port") from None
