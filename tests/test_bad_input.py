"""Every bad input a user can hand us: a broken bundle, odd text, odd image files, unwritable outputs.

Refused input: one `error: ...` line on stderr, exit 2, nothing at the output path. Accepted odd input (any image
mode, emoji / CJK / right-to-left text, special-token strings other than the image placeholder) runs, and where
transformers accepts the same input it gives the same ids / pixels.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import zlib
from contextlib import contextmanager

import numpy as np
import pytest

from janus_edge import Pipeline
from janus_edge import contract as C
from janus_edge.errors import InputError
from janus_edge.runtime.image import load_image, preprocess

ONE_LEVEL = 2 / 255 + 1e-6  # one grey level after normalising with std 0.5


@pytest.fixture(scope="module")
def pipe(tiny_bundle):
    return Pipeline.from_bundle(tiny_bundle)


@pytest.fixture(scope="module")
def ext_bundle(tiny_ckpt, tmp_path_factory):
    """The tiny bundle with every graph's weights in NAME.onnx.data (as large graphs are exported)."""
    from janus_edge.export.exporter import ExportOptions, export_bundle

    out = str(tmp_path_factory.mktemp("ext") / "b")
    return export_bundle(tiny_ckpt, out, options=ExportOptions(external_data_threshold=0, progress=False))


@pytest.fixture(scope="module")
def processor(tiny_ckpt):
    from transformers import JanusProcessor

    return JanusProcessor.from_pretrained(tiny_ckpt)


def refused(cli, one_error_line, args, needle, outputs):
    """Run the CLI; assert exit 2, one error line holding `needle`, and that no output (nor temp file) exists."""
    code, _, err = cli(*args)
    line = one_error_line(err)
    assert code == 2 and needle in line, line
    for p in outputs:
        assert not os.path.lexists(p), p
        assert not [f for f in os.listdir(os.path.dirname(p)) if f.startswith(".janus-edge-")]
    return line


# ---- bundles ------------------------------------------------------------------------------------------------

def _manifest(d) -> dict:
    with open(os.path.join(d, C.MANIFEST)) as fh:
        return json.load(fh)


def _write_manifest(d, m) -> None:
    with open(os.path.join(d, C.MANIFEST), "w") as fh:
        json.dump(m, fh)


def _rehash(d, rel) -> None:
    m = _manifest(d)
    m["files"][rel] = C.sha256_file(os.path.join(d, rel))
    _write_manifest(d, m)


def _truncate(rel):
    def edit(d):
        p = os.path.join(d, rel)
        with open(p, "rb") as fh:
            b = fh.read()
        with open(p, "wb") as fh:
            fh.write(b[: len(b) // 2])
        _rehash(d, rel)  # a cut file whose manifest was updated: the sha256 check passes
    return edit


def _remove(rel):
    return lambda d: os.remove(os.path.join(d, rel))


def _raw_manifest(data: bytes):
    def edit(d):
        with open(os.path.join(d, C.MANIFEST), "wb") as fh:
            fh.write(data)
    return edit


def _set_dtype(dtype):
    def edit(d):
        m = _manifest(d)
        m["dtype"] = dtype
        _write_manifest(d, m)
    return edit


BUNDLE_FAULTS = {  # name: (which bundle, edit, what the error line says)
    "truncated-onnx": ("plain", _truncate("lm.onnx"), "cannot open graph lm"),
    "missing-onnx-data": ("ext", _remove("lm.onnx.data"), "bundle file missing"),
    "truncated-onnx-data": ("ext", _truncate("gen_head.onnx.data"), "cannot open graph gen_head"),
    "missing-text-embed": ("plain", _remove("text_embed.npy"), "bundle file missing"),
    "truncated-text-embed": ("plain", _truncate("text_embed.npy"), "cannot read the text-embedding table"),
    "missing-tokenizer": ("plain", _remove("tokenizer.json"), "bundle file missing"),
    "truncated-tokenizer": ("plain", _truncate("tokenizer.json"), "cannot read the tokenizer"),
    "manifest-not-json": ("plain", _raw_manifest(b'{"format": "janus-edge-bundle", '), "cannot read"),
    "manifest-not-utf8": ("plain", _raw_manifest(b"\xff\xfe{}"), "cannot read"),
    "manifest-a-list": ("plain", _raw_manifest(b"[1, 2]"), "not a janus-edge bundle manifest"),
    "dtype-float16-of-fp32-graphs": ("plain", _set_dtype("float16"), "manifest dtype is float16"),
    "dtype-unknown": ("plain", _set_dtype("bfloat16"), "manifest dtype 'bfloat16'"),
}


@pytest.mark.parametrize("fault", list(BUNDLE_FAULTS))
def test_broken_bundle(fault, cli, one_error_line, tiny_bundle, ext_bundle, tmp_path):
    which, edit, needle = BUNDLE_FAULTS[fault]
    b = tmp_path / "b"
    shutil.copytree(tiny_bundle if which == "plain" else ext_bundle, b)
    edit(str(b))
    out = tmp_path / "out"
    out.mkdir()
    refused(cli, one_error_line, ["generate", b, "--prompt", "a fox", "--out", out / "x.png",
                                  "--tokens-out", out / "t.npy"], needle, [out / "x.png", out / "t.npy"])
    assert os.listdir(out) == []


def test_external_data_bundle_runs(ext_bundle, cli, tmp_path):
    """The fixture above is a real external-data bundle (so its faults test what they claim) and it runs."""
    m = _manifest(ext_bundle)
    assert all(e["external_data"] == [f"{g}.onnx.data"] for g, e in m["graphs"].items())
    code, _, _ = cli("generate", ext_bundle, "--prompt", "a fox", "--out", tmp_path / "x.png", "--seed", 0)
    assert code == 0 and os.path.isfile(tmp_path / "x.png")


# ---- text ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["", " ", "\n\t  \n"])
def test_empty_prompt_and_question(text, cli, one_error_line, tiny_bundle, sample_image, tmp_path):
    refused(cli, one_error_line, ["generate", tiny_bundle, "--prompt", text, "--out", tmp_path / "x.png"],
            "prompt must be a non-empty string", [tmp_path / "x.png"])
    sample_image.save(tmp_path / "a.png")
    code, out, err = cli("chat", tiny_bundle, "--image", tmp_path / "a.png", "--question", text)
    assert code == 2 and "question must be a non-empty string" in one_error_line(err) and out == ""


def test_undecodable_bytes_on_the_command_line(cli, one_error_line, tiny_bundle, tmp_path):
    """Python hands argv bytes that are not UTF-8 over as lone surrogates ('\\udcff' for 0xff)."""
    refused(cli, one_error_line, ["generate", tiny_bundle, "--prompt", "a \udcff fox", "--out", tmp_path / "x.png"],
            "prompt is not valid UTF-8", [tmp_path / "x.png"])


UNICODE = ["一只在雪地里的红狐狸 🦊❄️", "שועל אדום בשלג", "ثعلب أحمر في الثلج",
           "👩🏽\u200d🚀 + 🏳️\u200d🌈 (ZWJ), e\u0301 vs \u00e9, ｆｕｌｌ ｗｉｄｔｈ",  # nothing may normalise these
           "mixed English עברית 日本語"]


def _hf_t2i_ids(processor, prompt):
    conv = [{"role": "user", "content": [{"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(conv, add_generation_prompt=True)
    return processor(text=text, generation_mode="image", return_tensors="np")["input_ids"][0].tolist()


def _hf_chat_ids(processor, question, image):
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(conv, add_generation_prompt=True)
    return processor(text=text, images=[image], return_tensors="np")["input_ids"][0].tolist()


@pytest.mark.parametrize("text", UNICODE)
def test_unicode_text_round_trips_and_matches_transformers(text, pipe, processor, sample_image):
    tok = pipe.bundle.tokenizer
    assert tok.decode(tok.encode(text, add_special_tokens=False).ids) == text  # byte-level: nothing lost
    assert pipe.prompt_ids(text) == _hf_t2i_ids(processor, text)
    ids, _ = pipe.chat_inputs(text, [sample_image])
    assert ids == _hf_chat_ids(processor, text, sample_image)


def test_unicode_round_trips_through_a_real_bpe_tokenizer(trained_ckpt):
    """The same on SmolLM2's BPE grown by the Janus tokens (the tiny preset's tokenizer is a toy)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(trained_ckpt, "tokenizer.json"))
    for text in UNICODE:
        assert tok.decode(tok.encode(text, add_special_tokens=False).ids, skip_special_tokens=False) == text
    ids = tok.encode("a <image_placeholder> b", add_special_tokens=False).ids
    assert tok.token_to_id("<image_placeholder>") in ids  # what the refusal of a typed placeholder looks for


def test_unicode_text_through_the_cli(cli, tiny_bundle, sample_image, tmp_path):
    code, out, _ = cli("generate", tiny_bundle, "--prompt", UNICODE[0], "--out", tmp_path / "狐狸.png", "--seed", 0)
    assert code == 0 and os.path.isfile(tmp_path / "狐狸.png")
    sample_image.save(tmp_path / "a.png")
    code, out, _ = cli("chat", tiny_bundle, "--image", tmp_path / "a.png", "--question", UNICODE[1],
                       "--max-new-tokens", 3)
    assert code == 0


@pytest.mark.parametrize("text", ["a <image_placeholder> fox", "<image_placeholder>"])
def test_typed_image_placeholder_is_refused_as_transformers_refuses_it(text, cli, one_error_line, tiny_bundle,
                                                                      processor, sample_image, tmp_path):
    with pytest.raises(ValueError, match="image_placeholder"):
        _hf_t2i_ids(processor, text)
    with pytest.raises(ValueError, match="image_placeholder"):
        _hf_chat_ids(processor, text, sample_image)
    refused(cli, one_error_line, ["generate", tiny_bundle, "--prompt", text, "--out", tmp_path / "x.png"],
            "image placeholder", [tmp_path / "x.png"])
    sample_image.save(tmp_path / "a.png")
    code, out, err = cli("chat", tiny_bundle, "--image", tmp_path / "a.png", "--question", text)
    assert code == 2 and "image placeholder" in one_error_line(err) and out == ""


@pytest.mark.parametrize("text", ["draw <begin_of_image> a fox", "a fox<end_of_image>", "<|User|>: hi <|Assistant|>:",
                                  "<｜end▁of▁sentence｜> after"])
def test_other_special_token_strings_tokenize_as_transformers_does(text, pipe, processor, sample_image):
    tok, t = pipe.bundle.tokenizer, pipe.bundle.tokens
    special = {t["boi"], t["eoi"], t["user"], t["assistant"], t["eos"]}
    assert special & set(tok.encode(text, add_special_tokens=False).ids)  # the string became its special token
    assert pipe.prompt_ids(text) == _hf_t2i_ids(processor, text)
    ids, _ = pipe.chat_inputs(text, [sample_image])
    assert ids == _hf_chat_ids(processor, text, sample_image)
    assert pipe.generate_image(text, temperature=0, decode=False).tokens.shape == (1, pipe.dims.num_image_tokens)


# ---- images -------------------------------------------------------------------------------------------------

def _png_header_only(w: int, h: int) -> bytes:
    """A PNG that claims w x h pixels (PIL checks the size at open, before decoding any pixel data)."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [30000, 10000])  # over 2x PIL's limit (its error), between 1x and 2x (its warning)
def test_decompression_bomb_is_refused(side, cli, one_error_line, tiny_bundle, tmp_path):
    from PIL import Image

    assert Image.MAX_IMAGE_PIXELS < side * side
    (tmp_path / "bomb.png").write_bytes(_png_header_only(side, side))
    code, out, err = cli("chat", tiny_bundle, "--image", tmp_path / "bomb.png", "--question", "What?")
    assert code == 2 and "image too large" in one_error_line(err) and out == ""


def test_truncated_jpeg_is_refused(cli, one_error_line, tiny_bundle, sample_image, tmp_path):
    sample_image.save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    code, out, err = cli("chat", tiny_bundle, "--image", tmp_path / "cut.jpg", "--question", "What?")
    assert code == 2 and "not a readable image" in one_error_line(err) and "truncated" in err and out == ""
    with pytest.raises(InputError, match="truncated"):  # the same for an image opened lazily by the caller
        from PIL import Image

        load_image(Image.open(tmp_path / "cut.jpg"))


@pytest.mark.parametrize("kind,needle", [("empty", "not a readable image"), ("html", "not a readable image"),
                                         ("dir", "not a file"), ("missing", "not found")])
def test_unreadable_image_paths(kind, needle, cli, one_error_line, tiny_bundle, tmp_path):
    p = tmp_path / "x.png"
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "html":
        p.write_text("<html>404 Not Found</html>")
    elif kind == "dir":
        p.mkdir()
    code, out, err = cli("chat", tiny_bundle, "--image", p, "--question", "What?")
    assert code == 2 and needle in one_error_line(err) and out == ""


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory, sample_image):
    """Image files transformers' load_image reads too: {name: path}."""
    from PIL import Image

    d = tmp_path_factory.mktemp("odd")
    rng = np.random.default_rng(0)
    files = {}

    def save(name, img, **kw):
        files[name] = str(d / name)
        img.save(files[name], **kw)

    save("1x1.png", Image.new("RGB", (1, 1), (200, 30, 10)))
    save("10000x10.png", Image.fromarray(rng.integers(0, 255, (10, 10000, 3), np.uint8)))
    save("10x10000.png", Image.fromarray(rng.integers(0, 255, (10000, 10, 3), np.uint8)))
    save("mode1.png", sample_image.convert("1"))
    la = sample_image.convert("LA")
    la.putalpha(Image.fromarray(rng.integers(0, 255, (90, 160), np.uint8)))
    save("modeLA.png", la)
    save("rgba.png", sample_image.convert("RGBA"))
    save("modeF.tiff", Image.fromarray(rng.random((90, 160), np.float32) * 300))  # floats, some over 255
    save("palette.gif", sample_image.convert("P"))
    save("cmyk.jpg", sample_image.convert("CMYK"))
    frames = [Image.new("RGB", (40, 30), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    files["anim.gif"] = str(d / "anim.gif")
    frames[0].save(files["anim.gif"], save_all=True, append_images=frames[1:], duration=100, loop=0)
    return files


def test_odd_image_files_load_as_transformers_loads_them(odd_images, pipe, tiny_ckpt):
    from transformers import JanusImageProcessor
    from transformers.image_utils import load_image as hf_load_image

    hf = JanusImageProcessor.from_pretrained(tiny_ckpt)
    cfg = pipe.bundle.manifest.image_preprocess
    for name, path in odd_images.items():
        ours, ref = load_image(path), hf_load_image(path)
        assert ours.mode == "RGB" and ours.size == ref.size, name
        assert np.array_equal(np.asarray(ours), np.asarray(ref)), name
        px_ref = hf(ref, return_tensors="np")["pixel_values"][0]
        assert np.abs(preprocess(ours, cfg) - px_ref).max() <= ONE_LEVEL, name
    assert np.asarray(load_image(odd_images["anim.gif"]))[0, 0].tolist() == [255, 0, 0]  # the first frame


def test_odd_image_files_through_the_cli(odd_images, cli, tiny_bundle):
    args = [a for p in odd_images.values() for a in ("--image", p)]
    code, out, err = cli("chat", tiny_bundle, *args, "--question", "Which is odd?", "--max-new-tokens", 2)
    assert code == 0, err


def test_16_bit_grey_is_scaled_not_clipped(tmp_path, pipe):
    """PIL's (and so transformers') convert clips 16-bit values at 255: most of a 16-bit photo turns white. We
    scale by 1/257, so a 16-bit file gives the image its 8-bit version gives."""
    from PIL import Image
    from transformers.image_utils import load_image as hf_load_image

    a16 = (np.linspace(0, 65535, 90 * 160).reshape(90, 160)).astype(np.uint16)
    a8 = np.rint(a16 / 257).astype(np.uint8)
    Image.fromarray(a16).save(tmp_path / "g16.png")
    Image.fromarray(a16).save(tmp_path / "g16.tiff")
    Image.fromarray(a8).save(tmp_path / "g8.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    want = np.asarray(load_image(str(tmp_path / "g8.png")))
    for f in ("g16.png", "g16.tiff"):
        assert np.array_equal(np.asarray(load_image(str(tmp_path / f))), want), f
    clipped = np.asarray(hf_load_image(str(tmp_path / "g16.png")))
    assert (clipped == 255).mean() > 0.9  # what the clip does (why we differ here)
    # the pipeline sees the scaled image too: the 16-bit file's vision embeddings are the 8-bit file's, not the
    # clipped image's, and the greedy answer is the 8-bit file's
    Image.fromarray(clipped).save(tmp_path / "clipped.png")
    emb = {f: pipe.chat_inputs("What?", [str(tmp_path / f)])[1] for f in ("g16.png", "g8.png", "clipped.png")}
    assert np.array_equal(emb["g16.png"], emb["g8.png"])
    assert np.abs(emb["g16.png"] - emb["clipped.png"]).max() > 1e-3
    answer = [pipe.chat("What?", images=[str(tmp_path / f)], max_new_tokens=4) for f in ("g16.png", "g8.png")]
    assert isinstance(answer[0], str) and answer[0] == answer[1]


# EXIF orientation n: how to display the stored pixels (EXIF 2.3, tag 0x0112), on [H, W, C] arrays.
EXIF_DISPLAY = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
                5: lambda a: np.rot90(a[:, ::-1], 1), 6: lambda a: np.rot90(a, -1),
                7: lambda a: np.rot90(a[:, ::-1], -1), 8: lambda a: np.rot90(a, 1)}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation, sample_image, tmp_path, tiny_ckpt, pipe):
    """Applied, as transformers' load_image (and every image viewer) applies it; the same for a path and for an
    Image.open() of it. (transformers' processor, handed a PIL image, ignores EXIF: we do not.)"""
    from PIL import Image
    from transformers import JanusImageProcessor
    from transformers.image_utils import load_image as hf_load_image

    exif = Image.Exif()
    exif[0x0112] = orientation
    path = str(tmp_path / "o.png")  # lossless, so the pixels can be compared exactly
    sample_image.save(path, exif=exif)
    want = EXIF_DISPLAY[orientation](np.asarray(sample_image))
    assert np.array_equal(np.asarray(load_image(path)), want)
    assert np.array_equal(np.asarray(load_image(Image.open(path))), want)
    assert np.array_equal(np.asarray(hf_load_image(path)), want)
    hf = JanusImageProcessor.from_pretrained(tiny_ckpt)(hf_load_image(path), return_tensors="np")["pixel_values"][0]
    ours = preprocess(load_image(path), pipe.bundle.manifest.image_preprocess)
    assert np.abs(ours - hf).max() <= ONE_LEVEL


def test_exif_orientation_of_a_camera_jpeg(sample_image, tmp_path):
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6
    sample_image.save(tmp_path / "cam.jpg", exif=exif, quality=95)
    got = np.asarray(load_image(str(tmp_path / "cam.jpg"))).astype(int)
    want = EXIF_DISPLAY[6](np.asarray(sample_image)).astype(int)
    assert got.shape == want.shape and np.abs(got - want).mean() < 8  # JPEG loss only


# ---- outputs ------------------------------------------------------------------------------------------------

@contextmanager
def unwritable_dir(path):
    """A directory no file can be created in, for this user. Root ignores permission bits, so there the dir is
    made immutable (chattr +i: ext4/xfs/btrfs, CAP_LINUX_IMMUTABLE); the test is skipped where neither works."""
    path.mkdir()
    root = os.geteuid() == 0
    if root:
        try:
            r = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
        except FileNotFoundError:
            pytest.skip("running as root, where chmod does not block writes, and chattr is not installed")
        if r.returncode != 0:
            pytest.skip(f"running as root, where chmod does not block writes, and chattr +i failed: {r.stderr.strip()}")
    else:
        path.chmod(0o555)
    try:
        try:
            (path / "probe").touch()
        except OSError:
            pass
        else:
            os.remove(path / "probe")
            pytest.skip("this filesystem lets the test user write in a read-only directory")
        yield path
    finally:
        if root:
            subprocess.run(["chattr", "-i", str(path)], capture_output=True)
        else:
            path.chmod(0o755)


def test_missing_output_directory(cli, one_error_line, tiny_bundle, tmp_path):
    refused(cli, one_error_line, ["generate", tiny_bundle, "--prompt", "a", "--out", tmp_path / "no" / "x.png"],
            "output directory does not exist", [])
    refused(cli, one_error_line, ["generate", tiny_bundle, "--prompt", "a", "--out", tmp_path / "x.png",
                                  "--tokens-out", tmp_path / "no" / "t.npy"], "output directory does not exist",
            [tmp_path / "x.png"])


def test_unwritable_output_directory(cli, one_error_line, tiny_bundle, tmp_path):
    with unwritable_dir(tmp_path / "ro") as ro:
        refused(cli, one_error_line, ["generate", tiny_bundle, "--prompt", "a", "--out", ro / "x.png"],
                "cannot write", [ro / "x.png"])
        refused(cli, one_error_line, ["generate", tiny_bundle, "--prompt", "a", "--out", tmp_path / "x.png",
                                      "--tokens-out", ro / "t.npy"], "cannot write", [tmp_path / "x.png", ro / "t.npy"])
        assert os.listdir(ro) == []


def test_unwritable_export_parent(cli, one_error_line, tiny_ckpt, tmp_path):
    with unwritable_dir(tmp_path / "ro") as ro:
        refused(cli, one_error_line, ["export", tiny_ckpt, "--out", ro / "b"], "cannot write", [ro / "b"])
    refused(cli, one_error_line, ["export", tiny_ckpt, "--out", tmp_path / "no" / "b"], "does not exist", [])


def test_output_path_is_a_directory(cli, one_error_line, tiny_bundle, tmp_path):
    (tmp_path / "x.png").mkdir()
    (tmp_path / "t.npy").mkdir()
    refused(cli, one_error_line, ["generate", tiny_bundle, "--prompt", "a", "--out", tmp_path / "x.png"],
            "is a directory", [])
    refused(cli, one_error_line, ["generate", tiny_bundle, "--prompt", "a", "--out", tmp_path / "y.png",
                                  "--tokens-out", tmp_path / "t.npy"], "is a directory", [tmp_path / "y.png"])


@pytest.mark.parametrize("name", ["x.gif", "x.tiff", "x", "x.png.txt"])
def test_unknown_image_extension(name, cli, one_error_line, tiny_bundle, tmp_path):
    refused(cli, one_error_line, ["generate", tiny_bundle, "--prompt", "a", "--out", tmp_path / name],
            "--out must end in", [tmp_path / name])
    assert os.listdir(tmp_path) == []


def test_a_failed_write_leaves_no_output(cli, one_error_line, tiny_bundle, tmp_path, monkeypatch):
    """The disk fills while the tokens file is written, after the image was: neither stays, nor any temp file."""
    import errno

    from janus_edge.runtime import cli_support

    def full(path, a):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(cli_support, "_save_npy", full)
    refused(cli, one_error_line, ["generate", tiny_bundle, "--prompt", "a", "--out", tmp_path / "x.png",
                                  "--tokens-out", tmp_path / "t.npy"], "No space left", [tmp_path / "x.png"])
    assert os.listdir(tmp_path) == []
