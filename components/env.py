"""The process environment defaults, in one place: telemetry off, quiet libraries, and (embedded default only)
offline with one CPU thread.

    from components.env import apply_defaults
    apply_defaults(offline=True)       # before prefect/mlflow/transformers are imported

Every value is a default (`os.environ.setdefault`): what the user exported wins. Who applies what:
  * TELEMETRY_OFF: fine everywhere (CLI, tests, benchmarks, the service stack's processes, any MLflow client).
  * TOY_DEFAULTS (HF_HUB_OFFLINE=1, OMP_NUM_THREADS=1): only the embedded default and the tests set these; a real
    config downloads from the hub as transformers normally does and uses torch's threads. The rule is
    `offline_for(cfg)`: a config with `gold: toy` (the embedded toy task) is the embedded default. `alignloop run`
    and `alignloop deploy` load the config first and apply them only then (before transformers is imported);
    commands that load no config (status, verify, repair, the registry commands) leave them alone.
  * RUNTIME: tokenizers/Prefect settings every local process wants.
  * QUIET: library progress bars and chatter off (the CLI's rich display replaces them).
The Makefile exports the same TELEMETRY_OFF, TOY_DEFAULTS and part of RUNTIME for `make` targets (it cannot
import this module); infra/prefect.yaml lists the ones a worker-launched run needs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

TELEMETRY_OFF = {"DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true",
                 "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1"}
TOY_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    # torch's default of one thread per core was ~10x slower for tiny models on 2-core VMs
    "OMP_NUM_THREADS": "1",
}
RUNTIME = {"TOKENIZERS_PARALLELISM": "false", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
           "PREFECT_LOGGING_LEVEL": "WARNING"}
QUIET = {"TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "MLFLOW_LOGGING_LEVEL": "WARNING",
         "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}


def offline_for(cfg) -> bool:
    """Whether a loaded `LoopConfig` gets TOY_DEFAULTS: only the embedded default, i.e. `gold: toy` (the toy task's
    models are local and tiny); any other config keeps the hub and torch's threads."""
    return getattr(cfg, "gold", None) == "toy"


def defaults(offline: bool, quiet: bool = False) -> dict[str, str]:
    """TELEMETRY_OFF + RUNTIME, + TOY_DEFAULTS when `offline`, + QUIET when `quiet`."""
    return {**TELEMETRY_OFF, **(TOY_DEFAULTS if offline else {}), **RUNTIME, **(QUIET if quiet else {})}


def setdefaults(values: Mapping[str, str]) -> None:
    """Each of `values` into os.environ unless already set."""
    for k, v in values.items():
        os.environ.setdefault(k, v)


def apply_defaults(offline: bool, quiet: bool = False, **overrides: str) -> None:
    """`defaults(offline, quiet)` with `overrides` replacing some of its values, as environment defaults; and
    library log lines printed once (`log_once`)."""
    setdefaults({**defaults(offline, quiet), **overrides})
    log_once()


# Libraries that print through handlers of their own: `import dvc` gives these loggers stdout/stderr handlers
# (dvc.logger.setup), and their records also propagated to the root logger, where Prefect's console handler
# printed them again ("Initialized DVC repository." raw, then "| INFO | dvc.repo.init - ..."). setup() adds
# handlers and sets levels only, so turning propagation off before or after the import sticks.
OWN_HANDLERS = ("dvc", "dvc_objects", "dvc_data")


def log_once() -> None:
    """Each library log line once: loggers in OWN_HANDLERS keep their own handlers and stop propagating."""
    import logging

    for name in OWN_HANDLERS:
        logging.getLogger(name).propagate = False
