"""What `janus-edge generate` and `janus-edge chat` do beyond the API: progress, output files, streaming."""
from __future__ import annotations

import os
import sys
import tempfile

import numpy as np

from janus_edge.errors import InputError

from .pipeline import Pipeline


IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def output_paths(out: str, n: int) -> list[str]:
    """IMG.png for n == 1; IMG_0.png ... IMG_{n-1}.png otherwise."""
    root, ext = os.path.splitext(out)
    if ext.lower() not in IMAGE_EXTS or not _pil_saves(ext):
        raise InputError(f"--out must end in .png (or .jpg/.webp/.bmp where PIL can write them), got {out!r}")
    return [out] if n == 1 else [f"{root}_{i}{ext}" for i in range(n)]


def _pil_saves(ext: str) -> bool:
    from PIL import Image

    Image.init()
    return Image.registered_extensions().get(ext.lower()) in Image.SAVE


def check_output(path: str, probed: set | None = None) -> None:
    """Before any slow work: `path` is not a directory and its directory exists and takes a new file (probed once per
    directory when `probed`, the set of directories done, is given)."""
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise InputError(f"output directory does not exist: {d}")
    if os.path.isdir(path):
        raise InputError(f"output path is a directory: {path}")
    if probed is not None:
        if d in probed:
            return
        probed.add(d)
    try:
        fd, probe = tempfile.mkstemp(prefix=".janus-edge-", dir=d)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise InputError(f"cannot write to the output directory {d}: {e.strerror or e}") from None


def save_all(writes: list) -> None:
    """[(write(tmp_path), path)]: every output to a temp file beside it first, then all renamed into place, so a
    failure (disk full, a vanished directory) leaves no output and no temp file."""
    temps: list[str] = []
    try:
        for write, path in writes:
            fd, tmp = tempfile.mkstemp(prefix=".janus-edge-", suffix=os.path.splitext(path)[1],
                                       dir=os.path.dirname(os.path.abspath(path)))
            os.close(fd)
            temps.append(tmp)
            write(tmp)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; an output is an ordinary file
        for tmp, (_, path) in zip(temps, writes):
            os.replace(tmp, path)
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        for tmp in temps:
            if os.path.lexists(tmp):
                os.unlink(tmp)


def _save_npy(path: str, a: np.ndarray) -> None:
    with open(path, "wb") as fh:  # a file object: np.save must not append ".npy" to the temp name
        np.save(fh, a)


def run_generate(bundle: str, prompt: str, out: str, n: int = 1, cfg: float = 5.0, temperature: float = 1.0,
                 top_k=None, top_p=None, seed=None, tokens_out=None, threads=None, backend="ort",
                 device=None) -> int:
    paths = output_paths(out, n) if isinstance(n, int) and n >= 1 else [out]
    probed: set = set()
    for p in paths + ([tokens_out] if tokens_out else []):
        check_output(p, probed)
    pipe = Pipeline.from_bundle(bundle, backend=backend, threads=threads, device=device)
    bar = None
    if sys.stdout.isatty():
        from tqdm import tqdm

        bar = tqdm(total=pipe.dims.num_image_tokens, desc="image tokens", unit="tok")
    try:
        res = pipe.generate_image(prompt, n=n, cfg_weight=cfg, temperature=temperature, top_k=top_k, top_p=top_p,
                                  seed=seed, on_step=(lambda i: bar.update(1)) if bar else None)
    finally:
        if bar is not None:
            bar.close()
    writes = [(img.save, p) for img, p in zip(res.images, paths)]  # the temp keeps the extension: PIL's format
    if tokens_out:
        writes.append((lambda t: _save_npy(t, res.tokens), tokens_out))
    save_all(writes)
    for _, p in writes:
        print(p)
    steps = res.timings["step_s"]
    if steps:
        print(f"{len(res.images)} image(s), {n * 2 if cfg != 1 else n} rows/step, "
              f"{1000 * float(np.median(steps)):.1f} ms/token (median), total {res.timings['total_s']:.1f} s",
              file=sys.stderr)
    return 0


def run_chat(bundle: str, images: list[str], question: str, max_new_tokens: int = 256, temperature: float = 0.0,
             top_p=None, seed=None, threads=None, backend="ort", device=None) -> int:
    pipe = Pipeline.from_bundle(bundle, backend=backend, threads=threads, device=device)
    for piece in pipe.chat_stream(question, images=images, max_new_tokens=max_new_tokens, temperature=temperature,
                                  top_p=top_p, seed=seed):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
