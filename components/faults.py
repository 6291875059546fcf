"""Crash-test hooks: named points where a test can make the process die, to prove that dying there is survivable.

Kept apart from the modules that call it (components.artifacts, components.lineage, tasks.stages) so that
each can import it at module level without importing the others.
"""

from __future__ import annotations

import os


def fault_point(name: str) -> None:
    """Crash-test hook: when $ALIGNLOOP_FAULT_POINT equals `name`, the process SIGKILLs itself here, so a test can
    prove that dying there is survivable: between two registry writes (`promote:*`, `rollback:*`), at the end of a
    stage body (`stage:<name>:end`), or between an artifact's staged write and its rename (`publish:<kind>`).
    Only tests set it; unset, this does nothing."""
    if os.environ.get("ALIGNLOOP_FAULT_POINT") == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
