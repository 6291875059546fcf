"""components/interrupts.py: what counts as an interrupt, and that a stage's subprocess tree ends with it."""

import signal
import subprocess
import sys
import time

import psutil
import pytest

from components import interrupts


def test_errors_after_or_caused_by_an_interrupt_are_interrupts(monkeypatch):
    assert not interrupts.caused_by_interrupt(ValueError("a stage failed"))
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise ConnectionError("server gone") from None  # __context__ keeps the interrupt
    except ConnectionError as err:
        assert interrupts.caused_by_interrupt(err)
    monkeypatch.setitem(interrupts._state, "signum", signal.SIGTERM)
    assert interrupts.caused_by_interrupt(ValueError("anything after the signal"))
    assert interrupts.exit_code() == 143


def test_an_interrupt_while_waiting_on_a_launched_stage_ends_its_whole_tree():
    from components.backends.launch import _run_child

    spawn = "import subprocess, time; subprocess.Popen(['sleep', '300']); time.sleep(300)"
    before, t0 = set(psutil.Process().children(recursive=True)), time.time() - 1

    def interrupt(signum, frame):
        raise interrupts.Interrupted(signum)

    old = signal.signal(signal.SIGALRM, interrupt)
    signal.alarm(3)
    try:
        with pytest.raises(interrupts.Interrupted):
            _run_child([sys.executable, "-c", spawn], {})
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    time.sleep(0.2)
    left = [p for p in set(psutil.Process().children(recursive=True)) - before if p.is_running()
            and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, left
    orphans = [p for p in psutil.process_iter(["cmdline", "create_time", "status"]) if p.info["cmdline"] == [
        "sleep", "300"] and p.info["create_time"] > t0 and p.info["status"] != psutil.STATUS_ZOMBIE]
    assert not orphans, "the launched stage's grandchild outlived it"


def test_kill_tree_ends_descendants():
    proc = subprocess.Popen(["bash", "-c", "sleep 300 & wait"])
    time.sleep(0.3)
    kids = psutil.Process(proc.pid).children(recursive=True)
    assert kids
    interrupts.kill_tree(proc.pid, grace=2, include_self=True)
    proc.wait(timeout=5)
    assert not any(k.is_running() and k.status() != psutil.STATUS_ZOMBIE for k in kids)
