"""Write a directory artifact (checkpoint, bundle) completely or not at all: build it in a temp dir beside the
target, then rename it into place, replacing an old one only once the new one is complete.

Interruptions: an exception, Ctrl-C (SIGINT) or SIGTERM removes the temp dir and leaves `out` as it was. A
process killed outright (SIGKILL, power loss) cannot clean up; its temp dir is named `.{out name}.tmp-{pid}-XXXX`,
and the next staged write to the same `out` removes such dirs whose process no longer runs on this machine.

Disk space: `staged_dir(..., need=BYTES, what=...)` refuses at once when the estimate of what will be written does not
fit the free space of the output's filesystem (`check_space`), and a disk that fills anyway (the estimate is an
estimate; another process writes too) becomes one error naming the output, the file being written, the space needed
and the space free, after the temp dir is removed.
"""
from __future__ import annotations

import errno
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager


def check_target(out: str, force: bool, error: type[Exception]) -> None:
    """Refuse an existing `out` unless `force`, and an `out` whose parent does not exist or takes no new entry."""
    if os.path.lexists(out) and not force:
        raise error(f"output already exists: {out} (use --force to replace it)")
    if os.path.exists(out) and not os.path.isdir(out):
        raise error(f"output exists and is not a directory: {out}")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise error(f"parent directory of the output does not exist: {parent}")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".janus-edge-probe-", dir=parent))
    except OSError as e:
        raise error(f"cannot write in the output's parent directory {parent}: {e.strerror or e}") from None


def fmt_bytes(b: int) -> str:
    return f"{b / 1e9:.2f} GB" if b >= 10**9 else f"{b / 1e6:.1f} MB"


def check_space(out: str, need: int, what: str, error: type[Exception], shown: str | None = None) -> None:
    """Refuse (error) when `need` bytes of `what` cannot fit the free space beside `out` (where it is staged);
    `shown`: the path the message names (the final output, when `out` is its temp dir)."""
    parent = os.path.dirname(os.path.abspath(out))
    free = shutil.disk_usage(parent).free
    if need > free:
        raise error(f"not enough disk space for {what} at {shown or out}: it needs ~{fmt_bytes(need)}, {parent} has "
                    f"{fmt_bytes(free)} free")


_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def disk_full(e: BaseException) -> OSError | bool:
    """The OSError (or True, for a library's own wrapping of it) when `e` comes from a full disk or quota."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _FULL:
            return e
        if "No space left on device" in str(e) or "Disk quota exceeded" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _newest_file(d: str) -> str | None:
    files = [os.path.join(r, f) for r, _, fs in os.walk(d) for f in fs]
    files = [f for f in files if os.path.isfile(f)]
    return os.path.relpath(max(files, key=os.path.getmtime), d) if files else None


def _full_error(out: str, tmp: str, e: BaseException, need: int | None, what: str, error: type[Exception]):
    """The one-line error for a disk that filled while `what` was written into `tmp` (called before tmp is removed)."""
    full = disk_full(e)
    name = getattr(full, "filename", None) if isinstance(full, OSError) else None
    inside = isinstance(name, str) and os.path.abspath(name).startswith(tmp + os.sep)  # (copyfile names its source)
    name = os.path.relpath(os.path.abspath(name), tmp) if inside else _newest_file(tmp)
    written = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(tmp) for f in fs)
    shutil.rmtree(tmp, ignore_errors=True)
    parent = os.path.dirname(out)
    free = shutil.disk_usage(parent).free
    needs = f"it needs ~{fmt_bytes(need)}" if need else f"{fmt_bytes(written)} were written when it filled"
    return error(f"disk full writing {what} to {out} (file {name or '?'}): {needs}, {parent} has {fmt_bytes(free)} "
                 "free; nothing was kept")


def temp_prefix(out: str) -> str:
    """Name prefix of the temp dirs staged for `out` (followed by the writer's pid, '-', random characters)."""
    return f".{os.path.basename(os.path.abspath(out))}.tmp-"


def stale_temps(out: str) -> list[str]:
    """Temp dirs beside `out` whose writer process no longer runs (killed before it could clean up)."""
    parent, prefix = os.path.dirname(os.path.abspath(out)), temp_prefix(out)
    found = []
    for name in os.listdir(parent):
        pid = name[len(prefix):].split("-", 1)[0] if name.startswith(prefix) else ""
        if pid.isdigit() and not _running(int(pid)):
            found.append(os.path.join(parent, name))
    return found


def _running(pid: int) -> bool:
    if os.name != "posix" or pid == os.getpid():
        return True  # (elsewhere os.kill(pid, 0) is no probe: never call a dir stale there)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _publish_modes(d: str) -> None:
    """mkdtemp makes a 0700 dir and some writers (onnx external data) 0600 files: give the usual umask modes."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(d, 0o777 & ~umask)
    for name in os.listdir(d):
        os.chmod(os.path.join(d, name), 0o666 & ~umask)


_PENDING: list[int] = []  # signals received while staging: the check before publishing re-raises a swallowed one


def _raise_for(signum: int) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def _on_signal(signum, frame) -> None:
    _PENDING.append(signum)
    _raise_for(signum)


@contextmanager
def _signals_raise() -> Iterator[None]:
    """While staging, SIGTERM (the default `kill`) exits through the cleanup like Ctrl-C instead of killing the process
    on the spot, and both are recorded: a library that swallows the exception a signal raises cannot make the write
    complete anyway (a guard: no such library was caught doing it). Only in the main thread, and only for signals
    whose handler is Python's default: a process started with SIGINT ignored (a shell's background job) keeps
    ignoring it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    saved = {sig: h for sig, h in ((s, signal.getsignal(s)) for s in defaults) if h == defaults[sig]}
    for sig in saved:
        signal.signal(sig, _on_signal)
    try:
        yield
    finally:
        for sig, h in saved.items():
            signal.signal(sig, h)


@contextmanager
def staged_dir(out: str, force: bool, error: type[Exception], need: int | None = None,
               what: str = "the output") -> Iterator[str]:
    """`with staged_dir(out, force, InputError) as tmp:` write into tmp; on success it becomes `out`.
    `need`: the bytes it will write (an estimate), checked against the free space first; `what`: for messages."""
    out = os.path.abspath(out)
    check_target(out, force, error)
    if need:
        check_space(out, need, what, error)
    for stale in stale_temps(out):
        shutil.rmtree(stale, ignore_errors=True)
    _PENDING.clear()
    with _signals_raise():
        tmp = tempfile.mkdtemp(prefix=f"{temp_prefix(out)}{os.getpid()}-", dir=os.path.dirname(out))
        try:
            yield tmp
            if _PENDING:  # a signal's exception was swallowed on the way: do not publish
                _raise_for(_PENDING[-1])
            _publish_modes(tmp)
            if os.path.lexists(out):
                check_target(out, force, error)  # it may have appeared while we worked
                old = f"{tmp}.old"
                os.replace(out, old)
                os.replace(tmp, out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, out)
        except BaseException as e:
            if not isinstance(e, error) and disk_full(e):
                raise _full_error(out, tmp, e, need, what, error) from None
            shutil.rmtree(tmp, ignore_errors=True)
            raise
