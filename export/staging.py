"""Write a directory artifact (checkpoint, bundle) completely or not at all: build it in a temp dir beside the
target, then rename it into place, replacing an old one only once the new one is complete.

Interruptions: an exception, Ctrl-C (SIGINT) or SIGTERM removes the temp dir and leaves `out` as it was. A
process killed outright (SIGKILL, power loss) cannot clean up; its temp dir is named `.{out name}.tmp-{pid}-XXXX`,
and the next staged write to the same `out` removes such dirs whose process no longer runs on this machine.
"""
from __future__ import annotations

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
def staged_dir(out: str, force: bool, error: type[Exception]) -> Iterator[str]:
    """`with staged_dir(out, force, InputError) as tmp:` write into tmp; on success it becomes `out`."""
    out = os.path.abspath(out)
    check_target(out, force, error)
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
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
