"""A real Label Studio server on 127.0.0.1 for the human-labels test, from PyPI, in a venv of its own.

Label Studio cannot share the project's environment (with infra/constraints.txt, label-studio pins
python-json-logger==2.0.4 against our 4.2.0 and uv finds no solution), so this makes a separate venv with uv
(cached: ~/.cache/alignloop-tests/label-studio-<version>, or $ALIGNLOOP_LABEL_STUDIO_VENV; rebuilt only when a
previous build did not finish) and starts `label-studio start` from it on SQLite, data dir in tmp. The project
side talks to it through label-studio-sdk (installed beside our pins, dev extra).

Authentication: Label Studio 1.23 refuses legacy tokens by default, so the fixture logs in as the user it created
(Django session + CSRF, like the browser does) and creates a personal access token (POST /api/token/): a JWT
refresh token, which the SDK (`LabelStudio(api_key=...)`) exchanges for short-lived access tokens itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

VERSION = "1.23.2"
USER, PASSWORD = "annotator@example.com", "alignloop-test-pw"


def _uv() -> str:
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if not uv:
        raise RuntimeError("uv not found (infra/install.sh installs it into .venv)")
    return uv


def venv_dir() -> Path:
    env = os.environ.get("ALIGNLOOP_LABEL_STUDIO_VENV")
    return Path(env) if env else Path.home() / ".cache" / "alignloop-tests" / f"label-studio-{VERSION}"


def ensure_venv(log: Path) -> Path:
    """The label-studio executable, installing it first where no finished build is cached (one process at a
    time: a file lock next to the venv)."""
    venv = venv_dir()
    exe, done = venv / "bin" / "label-studio", venv / ".alignloop-installed"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists() and exe.exists():
            return exe
        shutil.rmtree(venv, ignore_errors=True)
        py = f"{sys.version_info.major}.{sys.version_info.minor}"
        env = {**os.environ, "VIRTUAL_ENV": str(venv), "UV_COMPILE_BYTECODE": "1"}
        env.pop("PIP_CONSTRAINT", None)
        with log.open("a") as out:
            for cmd in ([_uv(), "venv", "--python", py, str(venv)],
                        [_uv(), "pip", "install", f"label-studio=={VERSION}"]):
                rc = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=900).returncode
                if rc:
                    raise RuntimeError(f"{' '.join(cmd)} failed ({rc}); see {log}")
        done.write_text(VERSION + "\n")
    return exe


@dataclass
class Server:
    url: str
    token: str  # personal access token (JWT refresh token) for label_studio_sdk.LabelStudio(api_key=...)
    proc: subprocess.Popen
    log: Path


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"label-studio exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        time.sleep(1)
    raise RuntimeError(f"label-studio not healthy after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def personal_access_token(url: str) -> str:
    """Log in as the browser does and create the user's personal access token."""
    with httpx.Client(base_url=url, follow_redirects=True, timeout=30) as c:
        c.get("/user/login/").raise_for_status()
        r = c.post("/user/login/", data={"email": USER, "password": PASSWORD,
                                         "csrfmiddlewaretoken": c.cookies.get("csrftoken")})
        r.raise_for_status()
        r = c.post("/api/token/", headers={"X-CSRFToken": c.cookies.get("csrftoken")})
        if r.status_code != 201:
            raise RuntimeError(f"creating a personal access token: {r.status_code} {r.text[:300]}")
        return r.json()["token"]


def start(data_dir: Path, port: int, timeout: float = 180) -> Server:
    log = data_dir / "label-studio.log"
    exe = ensure_venv(data_dir / "install.log")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "LABEL_STUDIO_", "VIRTUAL_ENV"))}
    env.update(LABEL_STUDIO_BASE_DATA_DIR=str(data_dir / "data"), COLLECT_ANALYTICS="false",
               PATH=f"{exe.parent}{os.pathsep}{env.get('PATH', '')}")
    with log.open("w") as out:
        proc = subprocess.Popen([str(exe), "start", "--no-browser", "--host", "127.0.0.1", "--port", str(port),
                                 "--username", USER, "--password", PASSWORD],
                                cwd=data_dir, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, log, timeout)
        return Server(url, personal_access_token(url), proc, log)
    except BaseException:
        stop(proc)
        raise


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, SIGKILL what is left after 20 s."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # children the server left behind
