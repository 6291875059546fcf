"""Library log lines are printed once: DVC's loggers have handlers of their own, so they must not also propagate
to the root logger (where Prefect's console handler, or any basicConfig, printed them a second time)."""

import logging
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import logging, sys
from components.env import apply_defaults
apply_defaults(offline=True, quiet=True)
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="ROOT %(name)s: %(message)s")
from dvc.repo import Repo
Repo.init(sys.argv[1], no_scm=True)
"""


def test_dvc_init_prints_its_line_once(tmp_path):
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).parents[2])
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert out.count("Initialized DVC repository.") == 1, out
    assert "ROOT dvc" not in out


def test_log_once_leaves_other_loggers_alone():
    from components.env import OWN_HANDLERS, log_once

    log_once()
    assert all(not logging.getLogger(n).propagate for n in OWN_HANDLERS)
    assert logging.getLogger("components").propagate
