"""Ctrl-C and SIGTERM for `alignloop run`: stop within seconds and leave the iteration resumable.

    with interrupts.handling():          # flows/cmd_loop.py run: SIGINT/SIGTERM -> `Interrupted` in the main thread
        continual_flow(...)              # flows/iteration.py calls `rearm()` in each flow body (see below)

What an interrupt must not turn into, and why each piece is here:
  - a *failed* iteration. The iteration flow marks an `Exception` from a stage as a permanent failure (history,
    not work) and anything else (a crash) as resumable. An interrupt is raised as `Interrupted(BaseException)`, but
    a Ctrl-C in a terminal reaches the whole process group, the ephemeral Prefect server included: it exits, and
    Prefect's engine, reporting the crash, raises `httpx.ConnectError` in place of the interrupt. So an interrupt
    is remembered (`requested()`), and `caused_by_interrupt` treats any error after one, or any error whose chain
    holds one, as the interrupt.
  - minutes of waiting. Prefect's client retries a refused connection with exponential backoff (~60 s per call,
    ~310 s measured for one interrupted run); after an interrupt it gets no retries (`_no_client_retries`). A
    deadline (ALIGNLOOP_INTERRUPT_GRACE_S, default 20 s) ends the process regardless, and a second signal at once.
  - orphaned workers. `kill_tree` ends a child's descendants (accelerate's workers, Ray's processes), not only the
    child; a stage waiting on a subprocess ends it when `Interrupted` arrives (components/backends/launch.py).
  - Prefect's own SIGTERM bridge. While a flow runs, Prefect's engine replaces the SIGTERM handler with one that
    raises its TerminationSignal; `rearm()` (a no-op unless `handling()` is active in this process) puts ours back
    for the flow body, so SIGTERM is remembered like SIGINT.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_state: dict = {"armed": False, "signum": None}


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived: not an error of the iteration, a reason to stop (resumable)."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


def requested() -> int | None:
    """The signal that interrupted this process, if one did."""
    return _state["signum"]


def caused_by_interrupt(err: BaseException) -> bool:
    """Whether `err` is an interrupt or a consequence of one (anything raised after an interrupt was requested, or
    an exception whose cause/context chain holds a non-Exception such as KeyboardInterrupt or Prefect's
    TerminationSignal)."""
    if requested() is not None:
        return True
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if not isinstance(e, (Exception, GeneratorExit)):
            return True
        e = e.__cause__ or e.__context__
    return False


def exit_code(err: BaseException | None = None) -> int:
    signum = requested() or (err.signum if isinstance(err, Interrupted) else signal.SIGINT)
    return 128 + int(signum)


def _no_client_retries() -> None:
    """Prefect's HTTP client reads PREFECT_CLIENT_MAX_RETRIES at every request: after an interrupt, a dead
    ephemeral server fails each call at once instead of after ~60 s of backoff."""
    base = sys.modules.get("prefect.client.base")
    if base is not None and hasattr(base, "PREFECT_CLIENT_MAX_RETRIES"):
        class _Zero:
            @staticmethod
            def value() -> int:
                return 0

        base.PREFECT_CLIENT_MAX_RETRIES = _Zero()


def _quiet_prefect() -> None:
    """After an interrupt Prefect logs each engine's crash report (with tracebacks of the refused connections to
    a server the Ctrl-C also stopped): noise to someone who asked it to stop. The CLI says what happened."""
    import logging

    for name in list(logging.root.manager.loggerDict):
        if name == "prefect" or name.startswith("prefect."):
            logging.getLogger(name).disabled = True


def kill_tree(pid: int | None = None, grace: float = 3.0, include_self: bool = False) -> None:
    """SIGTERM the descendants of `pid` (default: this process), SIGKILL what is left after `grace` seconds."""
    import psutil  # a dependency of accelerate

    try:
        root = psutil.Process(pid or os.getpid())
        procs = root.children(recursive=True) + ([root] if include_self else [])
    except psutil.NoSuchProcess:
        return
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()


def _deadline(signum: int, grace: float) -> None:
    time.sleep(grace)
    _hard_exit(signum, f"still running {grace:.0f} s after {signal.Signals(signum).name}")


def _hard_exit(signum: int, why: str) -> None:
    sys.stderr.write(f"alignloop: {why}: stopping now (the iteration stays resumable)\n")
    sys.stderr.flush()
    with contextlib.suppress(Exception):
        kill_tree(grace=1.0)
    os._exit(128 + signum)


def _handler(signum: int, _frame) -> None:
    if _state["signum"] is not None:  # a second Ctrl-C: don't wait for the clean-up
        _hard_exit(signum, "second interrupt")
    _state["signum"] = signum
    _no_client_retries()
    _quiet_prefect()
    grace = float(os.environ.get("ALIGNLOOP_INTERRUPT_GRACE_S", "20"))
    threading.Thread(target=_deadline, args=(signum, grace), daemon=True, name="alignloop-interrupt").start()
    raise Interrupted(signum)


@contextlib.contextmanager
def handling() -> Iterator[None]:
    """SIGINT/SIGTERM raise `Interrupted` in the main thread while this is active (main thread only)."""
    old = {s: signal.signal(s, _handler) for s in SIGNALS}
    _state["armed"] = True
    try:
        yield
    finally:
        _state["armed"] = False
        for s, h in old.items():
            signal.signal(s, h)


def rearm() -> None:
    """Inside a flow body: reinstall our handlers over Prefect's SIGTERM bridge (restored when the flow's engine
    exits). A no-op outside `handling()` (a deployment's run keeps Prefect's cancellation handling)."""
    if _state["armed"] and threading.current_thread() is threading.main_thread():
        for s in SIGNALS:
            signal.signal(s, _handler)
