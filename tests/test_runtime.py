"""Runtime behaviour on the tiny bundle: CFG batching, the cache, sampling, lazy graphs, CLI output, bad input."""
import json
import os
import shutil

import numpy as np
import pytest

from janus_edge import Pipeline
from janus_edge import contract as C
from janus_edge.errors import BundleError, InputError


@pytest.fixture(scope="module")
def pipe(tiny_bundle):
    return Pipeline.from_bundle(tiny_bundle, threads=1)



@pytest.mark.parametrize("n,cfg", [(1, 5.0), (2, 5.0), (3, 1.0)])
def test_one_lm_call_per_step_with_all_rows(tiny_bundle, n, cfg):
    p = Pipeline.from_bundle(tiny_bundle)
    calls, rows = [], []
    lm = p.bundle.graph("lm")
    bind = lm.bind

    def spy_bind(inputs, outputs):  # record the row count of every binding
        rows.append(inputs["inputs_embeds"].shape[0])
        return bind(inputs, outputs)

    lm.bind = spy_bind
    res = p.generate_image("a cat", n=n, cfg_weight=cfg, temperature=0,
                           on_step=lambda i: calls.append((lm.calls, p.bundle.graph("gen_head").calls)))
    T = p.dims.num_image_tokens
    want_rows = 2 * n if cfg != 1 else n
    assert set(rows) == {want_rows}  # prefill and step bindings both carry every row
    lm_calls = [c[0] for c in calls]
    head_calls = [c[1] for c in calls]
    assert lm_calls == list(range(1, T + 1))  # prefill, then exactly one lm call per image token
    assert head_calls == list(range(1, T + 1))  # one gen_head call per image token
    assert res.tokens.shape == (n, T)


def test_cache_and_buffers_are_allocated_before_the_loop(tiny_bundle):
    p = Pipeline.from_bundle(tiny_bundle)
    be = p.bundle.backend
    sizes = []
    alloc = be.alloc

    def spy_alloc(shape, dtype, zero=True):
        sizes.append(int(np.prod(shape)))
        return alloc(shape, dtype, zero)

    be.alloc = spy_alloc
    at_first_step = []
    p.generate_image("a cat", n=2, temperature=0, decode=False,
                     on_step=lambda i: at_first_step.append(len(sizes)) if i == 0 else None)
    assert at_first_step and len(sizes) == at_first_step[0]  # nothing allocated per step
    d = p.dims
    cache = [s for s in sizes if s == 4 * d.num_kv_heads * (len(p.prompt_ids("a cat")) + d.num_image_tokens) * d.head_dim]
    assert len(cache) == 2 * d.num_layers  # every layer's K and V at the final length, once


def test_seeded_sampling_is_reproducible(pipe):
    a = pipe.generate_image("a red fox", n=2, seed=3, top_k=50, top_p=0.9)
    b = pipe.generate_image("a red fox", n=2, seed=3, top_k=50, top_p=0.9)
    c = pipe.generate_image("a red fox", n=2, seed=4, top_k=50, top_p=0.9)
    assert (a.tokens == b.tokens).all() and (a.tokens != c.tokens).any()
    assert np.array_equal(np.asarray(a.images[1]), np.asarray(b.images[1]))


def test_top_k_1_equals_greedy(pipe):
    g = pipe.generate_image("a red fox", temperature=0, decode=False).tokens
    k1 = pipe.generate_image("a red fox", temperature=1.0, top_k=1, seed=0, decode=False).tokens
    assert (g == k1).all()


def test_t2i_never_loads_vision(tiny_bundle):
    p = Pipeline.from_bundle(tiny_bundle)
    p.generate_image("a cat", temperature=0)
    assert "vision" not in p.bundle.loaded_graphs and "vq_encoder" not in p.bundle.loaded_graphs
    assert {"lm", "gen_head", "gen_embed", "vq_decoder"} <= set(p.bundle.loaded_graphs)


def test_images_decode_from_tokens(pipe):
    res = pipe.generate_image("a cat", n=2, seed=0)
    assert len(res.images) == 2 and res.images[0].size == (pipe.dims.image_size,) * 2
    again = pipe.decode_tokens(res.tokens)
    assert np.array_equal(np.asarray(again[0]), np.asarray(res.images[0]))


def test_chat_stream_joins_to_chat(pipe, sample_image):
    pieces = list(pipe.chat_stream("What is it?", images=[sample_image], max_new_tokens=12))
    assert "".join(pieces) == pipe.chat("What is it?", images=[sample_image], max_new_tokens=12)
    assert len(list(pipe.chat_token_ids("What is it?", [sample_image], max_new_tokens=5))) <= 5


def test_chat_accepts_any_image_mode_and_exif(pipe, sample_image, tmp_path):
    from PIL import Image

    for mode in ("L", "RGBA", "P", "CMYK", "I;16"):
        im = sample_image.convert(mode) if mode != "I;16" else Image.new("I;16", (33, 70))
        assert isinstance(pipe.chat("Hi?", images=[im], max_new_tokens=2), str)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    path = tmp_path / "rot.jpg"
    sample_image.save(path, exif=exif)
    from janus_edge.runtime.image import load_image

    assert load_image(str(path)).size == (sample_image.height, sample_image.width)


# ---- CLI ------------------------------------------------------------------------------------------------

def test_cli_generate_writes_predictable_files(cli, tiny_bundle, tmp_path):
    code, out, _ = cli("generate", tiny_bundle, "--prompt", "a fox", "--out", tmp_path / "fox.png", "--n", 2,
                       "--seed", 1, "--tokens-out", tmp_path / "t.npy")
    assert code == 0
    assert sorted(os.listdir(tmp_path)) == ["fox_0.png", "fox_1.png", "t.npy"]
    assert np.load(tmp_path / "t.npy").shape == (2, 64)
    code, out, _ = cli("generate", tiny_bundle, "--prompt", "a fox", "--out", tmp_path / "one.png", "--seed", 1)
    assert code == 0 and os.path.isfile(tmp_path / "one.png")


def test_cli_chat_streams_to_stdout(cli, tiny_bundle, tmp_path, sample_image):
    sample_image.save(tmp_path / "a.png")
    code, out, _ = cli("chat", tiny_bundle, "--image", tmp_path / "a.png", "--question", "What?",
                       "--max-new-tokens", 4)
    assert code == 0 and out.endswith("\n")


@pytest.mark.parametrize("args,needle", [
    (["--cfg", "0.5"], "cfg"),
    (["--temperature", "-1"], "temperature"),
    (["--top-p", "0"], "top-p"),
    (["--top-p", "1.5"], "top-p"),
    (["--top-k", "0"], "top-k"),
    (["--n", "0"], "n must"),
    (["--prompt", "word " * 3000], "context"),
])
def test_cli_generate_bad_arguments(one_error_line, cli, tiny_bundle, tmp_path, args, needle):
    base = ["generate", tiny_bundle, "--prompt", "a fox", "--out", tmp_path / "x.png"]
    code, _, err = cli(*base, *args)
    assert code == 2 and needle in one_error_line(err)
    assert os.listdir(tmp_path) == []


def _altered_bundle(src, dst, edit):
    shutil.copytree(src, dst)
    edit(dst)
    return dst


def test_missing_bundle(one_error_line, cli, tmp_path):
    code, _, err = cli("generate", tmp_path / "nope", "--prompt", "a", "--out", tmp_path / "x.png")
    assert code == 2 and "not found" in one_error_line(err) and not os.path.exists(tmp_path / "x.png")


def test_corrupt_graph_file_is_detected(one_error_line, cli, tiny_bundle, tmp_path):
    def flip(d):
        p = os.path.join(d, "gen_head.onnx")
        b = bytearray(open(p, "rb").read())
        b[len(b) // 2] ^= 0xFF
        open(p, "wb").write(bytes(b))

    b = _altered_bundle(tiny_bundle, tmp_path / "b", flip)
    code, _, err = cli("generate", b, "--prompt", "a", "--out", tmp_path / "x.png")
    assert code == 2 and "sha256" in one_error_line(err) and not os.path.exists(tmp_path / "x.png")


def test_other_format_version_is_refused(tiny_bundle, tmp_path):
    def bump(d):
        m = json.load(open(os.path.join(d, C.MANIFEST)))
        m["format_version"] = C.FORMAT_VERSION + 1
        json.dump(m, open(os.path.join(d, C.MANIFEST), "w"))

    b = _altered_bundle(tiny_bundle, tmp_path / "b", bump)
    with pytest.raises(BundleError, match="format version"):
        Pipeline.from_bundle(str(b))


def test_non_image_file_for_chat(one_error_line, cli, tiny_bundle, tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    code, _, err = cli("chat", tiny_bundle, "--image", tmp_path / "notes.txt", "--question", "What?")
    assert code == 2 and "not a readable image" in one_error_line(err)


def test_nan_logits_are_reported_and_nothing_is_written(one_error_line, cli, tiny_bundle, tmp_path):
    import onnx
    from onnx import numpy_helper

    def poison(d):
        p = os.path.join(d, "gen_head.onnx")
        model = onnx.load(p)
        init = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
        arr = numpy_helper.to_array(init).copy()
        arr[..., 0] = np.nan
        init.CopyFrom(numpy_helper.from_array(arr, init.name))
        onnx.save(model, p)
        m = json.load(open(os.path.join(d, C.MANIFEST)))
        m["files"]["gen_head.onnx"] = C.sha256_file(p)
        json.dump(m, open(os.path.join(d, C.MANIFEST), "w"))

    b = _altered_bundle(tiny_bundle, tmp_path / "b", poison)
    out = tmp_path / "o"
    out.mkdir()
    code, _, err = cli("generate", b, "--prompt", "a", "--out", out / "x.png")
    assert code == 2 and "NaN" in one_error_line(err)
    assert os.listdir(out) == []


def test_api_argument_checks(pipe):
    with pytest.raises(InputError):
        pipe.generate_image()
    with pytest.raises(InputError):
        pipe.generate_image("a", input_ids=[1, 2])
    with pytest.raises(InputError):
        pipe.generate_image(input_ids=[pipe.dims.vocab_size + 5])
    with pytest.raises(InputError):
        pipe.decode_tokens(np.zeros((1, 3), np.int64))
    with pytest.raises(InputError):
        pipe.chat("q", max_new_tokens=0)
    with pytest.raises(InputError):
        Pipeline.from_bundle(pipe.bundle.path, threads=0)


def test_trt_backend_is_refused_with_one_line(one_error_line, cli, tiny_bundle, tmp_path):
    code, _, err = cli("generate", tiny_bundle, "--prompt", "a", "--out", tmp_path / "x.png", "--backend", "trt")
    assert code == 2 and "trt" in one_error_line(err) and os.listdir(tmp_path) == []


def test_runtime_runs_without_torch_transformers_or_onnx(tiny_bundle, tmp_path):
    """The layering rule: a Jetson runs bundles with the runtime alone (no torch, transformers, onnx)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for m in ('torch', 'transformers', 'onnx', 'janus_edge.export', 'janus_edge.quant'):\n"
        "    sys.modules[m] = None  # any import of them now fails\n"
        "from janus_edge.cli import main\n"
        f"rc = main(['generate', {str(tiny_bundle)!r}, '--prompt', 'a fox', '--out', {str(tmp_path / 'a.png')!r},"
        " '--temperature', '0'])\n"
        "assert rc == 0, rc\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
    assert (tmp_path / "a.png").is_file()
