"""Write a directory artifact (checkpoint, bundle) completely or not at all: build it in a temp dir beside the
target, then rename it into place, replacing an old one only once the new one is complete."""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


def check_target(out: str, force: bool, error: type[Exception]) -> None:
    """Refuse an existing `out` unless `force`, and an `out` whose parent does not exist."""
    if os.path.lexists(out) and not force:
        raise error(f"output already exists: {out} (use --force to replace it)")
    if os.path.exists(out) and not os.path.isdir(out):
        raise error(f"output exists and is not a directory: {out}")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise error(f"parent directory of the output does not exist: {parent}")


def _publish_modes(d: str) -> None:
    """mkdtemp makes a 0700 dir and some writers (onnx external data) 0600 files: give the usual umask modes."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(d, 0o777 & ~umask)
    for name in os.listdir(d):
        os.chmod(os.path.join(d, name), 0o666 & ~umask)


@contextmanager
def staged_dir(out: str, force: bool, error: type[Exception]) -> Iterator[str]:
    """`with staged_dir(out, force, InputError) as tmp:` write into tmp; on success it becomes `out`."""
    out = os.path.abspath(out)
    check_target(out, force, error)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=os.path.dirname(out))
    try:
        yield tmp
        _publish_modes(tmp)
        if os.path.lexists(out):
            check_target(out, force, error)  # it may have appeared while we worked
            old = f"{tmp}.old"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
