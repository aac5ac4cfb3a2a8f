"""A bundle reads only files inside its own directory: a manifest naming a file outside it (`..`, an absolute path, a
symlink leading out) or a graph whose ONNX external data lies outside it is refused with one line, before any file of
the bundle is read (the manifest's paths) or before the graph is opened (the .onnx's external-data locations)."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from janus_edge import contract as C


@pytest.fixture(scope="module")
def ext_bundle(tiny_ckpt, tmp_path_factory):
    """The tiny bundle with every graph's weights in NAME.onnx.data."""
    from janus_edge.export.exporter import ExportOptions, export_bundle

    out = str(tmp_path_factory.mktemp("ext") / "b")
    return export_bundle(tiny_ckpt, out, options=ExportOptions(external_data_threshold=0, progress=False))


def _edit_manifest(d, fn) -> None:
    p = os.path.join(d, C.MANIFEST)
    with open(p) as fh:
        m = json.load(fh)
    fn(m)
    with open(p, "w") as fh:
        json.dump(m, fh)


def _move_out(d, rel, new_rel, where):
    """Move bundle file `rel` to `where` (outside the bundle) and point the manifest at it as `new_rel`, its sha256
    entry moved along (so the sha256 check alone would pass)."""
    os.makedirs(os.path.dirname(where), exist_ok=True)
    shutil.move(os.path.join(d, rel), where)

    def fn(m):
        m["files"][new_rel] = m["files"].pop(rel)
        for e in m["graphs"].values():
            if e["file"] == rel:
                e["file"] = new_rel
        for k in ("text_embedding", "tokenizer"):
            if m[k]["file"] == rel:
                m[k]["file"] = new_rel
    _edit_manifest(d, fn)


def dotdot(rel):
    return lambda d, out: _move_out(d, rel, f"../outside/{rel}", os.path.join(out, rel))


def absolute(rel):
    return lambda d, out: _move_out(d, rel, os.path.join(out, rel), os.path.join(out, rel))


def symlink_file(rel):
    def edit(d, out):
        os.makedirs(out)
        shutil.move(os.path.join(d, rel), os.path.join(out, rel))
        os.symlink(os.path.join(out, rel), os.path.join(d, rel))
    return edit


def symlink_dir(rel):
    def edit(d, out):
        _move_out(d, rel, f"sub/{rel}", os.path.join(out, rel))
        os.symlink(out, os.path.join(d, "sub"))
    return edit


FORMS = {
    "graph-file-dotdot": (dotdot("gen_head.onnx"), "'../outside/gen_head.onnx' is a '..' path"),
    "graph-file-absolute": (absolute("gen_head.onnx"), "is an absolute path"),
    "graph-file-symlink-out": (symlink_file("gen_head.onnx"), "'gen_head.onnx' is a symlink resolving to"),
    "graph-dir-symlink-out": (symlink_dir("gen_head.onnx"), "'sub/gen_head.onnx' is a symlink resolving to"),
    "text-table-dotdot": (dotdot("text_embed.npy"), "text_embedding file '../outside/text_embed.npy'"),
    "tokenizer-absolute": (absolute("tokenizer.json"), "tokenizer file"),
}


def _bundle_copy(src, tmp_path) -> str:
    b = str(tmp_path / "b")
    shutil.copytree(src, b)
    return b


@pytest.mark.parametrize("form", list(FORMS))
def test_manifest_path_outside_the_bundle_is_refused_before_any_read(form, cli, one_error_line, tiny_bundle,
                                                                      tmp_path, monkeypatch):
    edit, needle = FORMS[form]
    b = _bundle_copy(tiny_bundle, tmp_path)
    edit(b, str(tmp_path / "outside"))

    def no_read(path, *a, **k):
        raise AssertionError(f"{path} was read before the manifest's paths were checked")

    monkeypatch.setattr(C, "sha256_file", no_read)
    out = tmp_path / "x.png"
    code, _, err = cli("generate", b, "--prompt", "a fox", "--out", out, "--seed", 0)
    line = one_error_line(err)
    assert code == 2 and needle in line and "outside the bundle directory" in line, line
    assert not out.exists()


def test_every_command_reading_a_bundle_refuses_it(cli, one_error_line, tiny_bundle, tmp_path):
    b = _bundle_copy(tiny_bundle, tmp_path)
    dotdot("gen_head.onnx")(b, str(tmp_path / "outside"))
    for args in (["memory", b], ["quantize", b, "--mode", "int8", "--out", tmp_path / "q"], ["lint-trt", b]):
        code, _, err = cli(*args)
        assert code == 2 and "outside the bundle directory" in one_error_line(err), (args, err)
    assert not (tmp_path / "q").exists()


def _relocate(onnx_path, location) -> None:
    """Point every external-data entry of the .onnx at `location` (the proto only; the data files stay as they are)."""
    import onnx

    m = onnx.load(onnx_path, load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    onnx.save(m, onnx_path)


@pytest.mark.parametrize("location,needle", [
    ("../x.data", "names external data '../x.data', a '..' path, outside the bundle directory"),
    ("ABS", "an absolute path, outside the bundle directory"),
    ("other.data", "names external data 'other.data', which its manifest entry does not list"),
], ids=["dotdot", "absolute", "inside-but-unlisted"])
def test_external_data_location_outside_the_bundle_is_refused(location, needle, cli, one_error_line, ext_bundle,
                                                              tmp_path):
    b = _bundle_copy(ext_bundle, tmp_path)
    data = os.path.join(b, "gen_head.onnx.data")
    target = {"../x.data": str(tmp_path / "x.data"), "ABS": str(tmp_path / "abs.data"),
              "other.data": os.path.join(b, "other.data")}[location]
    shutil.copyfile(data, target)  # the listed file stays (its sha256 passes); the graph reads another
    location = target if location == "ABS" else location
    _relocate(os.path.join(b, "gen_head.onnx"), location)
    _edit_manifest(b, lambda m: m["files"].update({"gen_head.onnx": C.sha256_file(os.path.join(b, "gen_head.onnx"))}))
    out = tmp_path / "x.png"
    code, _, err = cli("generate", b, "--prompt", "a fox", "--out", out, "--seed", 0)
    line = one_error_line(err)
    assert code == 2 and needle in line, line
    assert not out.exists()


def test_locations_are_read_from_the_proto_bytes(ext_bundle, tmp_path):
    """The byte scan finds exactly what onnx reads, whatever the read chunk (an entry cut between two chunks)."""
    import onnx

    p = os.path.join(ext_bundle, "lm.onnx")
    m = onnx.load(p, load_external_data=False)
    want = [e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"]
    assert want and set(want) == {"lm.onnx.data"}
    for chunk in (7, 11, 12, 64, 1 << 20):
        assert C.external_data_locations(p, chunk=chunk) == want


def test_a_plain_and_an_external_data_bundle_still_run(cli, tiny_bundle, ext_bundle, tmp_path):
    for i, b in enumerate((tiny_bundle, ext_bundle)):
        code, _, err = cli("generate", b, "--prompt", "a fox", "--out", tmp_path / f"{i}.png", "--seed", 0)
        assert code == 0, err


@pytest.mark.parametrize("rel,why", [("a/b.onnx", None), ("a/../b.onnx", "a '..' path"),
                                     ("/etc/passwd", "an absolute path"), ("", "not a file name"),
                                     (3, "not a file name")])
def test_inside(rel, why, tmp_path):
    got = C.inside(str(tmp_path), rel)
    assert got == why
