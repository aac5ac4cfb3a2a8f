"""The page's `--server URL` path: the demo's handlers over a real tritonserver serving the tiny bundle (the Triton
client, gRPC). Skipped with the reason where tritonserver or tritonclient is absent (as tests/test_serving.py)."""
from __future__ import annotations

import numpy as np
import pytest

from triton_helpers import triton_mark

pytestmark = triton_mark()  # before the serving imports below: skips the module without tritonclient

from janus_edge.serving.launch import TritonServer  # noqa: E402
from janus_edge.serving.repo import RepoOptions, write_repo  # noqa: E402


@pytest.fixture(scope="module")
def remote_app(tiny_bundle, tmp_path_factory):
    pytest.importorskip("gradio", reason="the demo extra is not installed (pip install 'janus-edge[demo]')")
    from janus_edge.demo.app import DemoApp
    from janus_edge.demo.backends import RemoteBackend

    repo = write_repo(tiny_bundle, str(tmp_path_factory.mktemp("triton") / "repo"), RepoOptions(rows=8, max_len=512))
    srv = TritonServer(repo).start(timeout_s=120)
    app = DemoApp(RemoteBackend(tiny_bundle, srv.grpc_url), log=lambda *_: None)
    yield app
    app.close()
    srv.stop()


def test_remote_t2i_chat_and_errors(remote_app, tiny_bundle, sample_image, tmp_path):
    from PIL import Image

    from janus_edge import Pipeline

    pipe = Pipeline.from_bundle(tiny_bundle)
    outs = list(remote_app.generate("a red fox in snow", 1, 5.0, 1.0, 0, 0, "3"))
    status, _, paths, _ = outs[-1]
    assert "je-done" in status, status
    ref = pipe.generate_image("a red fox in snow", n=1, cfg_weight=5.0, temperature=1.0, seed=3).images[0]
    np.testing.assert_array_equal(np.asarray(Image.open(paths[0]).convert("RGB")), np.asarray(ref))

    path = tmp_path / "scene.png"
    sample_image.save(path)
    outs = list(remote_app.ask([str(path)], "what is in the picture?", 16))
    assert "je-done" in outs[-1][1], outs[-1]
    assert outs[-1][0] == pipe.chat("what is in the picture?", [sample_image], max_new_tokens=16)

    status = list(remote_app.generate("a red fox " * 300, 1, 5.0, 1.0, 0, 0, ""))[-1][0]
    assert "je-error" in status and "context" in status, status  # the server's refusal, as a message
    assert "Triton server at" in remote_app.details()
