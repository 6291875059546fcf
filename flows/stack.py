"""The local team stack on loopback: Prefect server, PostgreSQL, MLflow server (on PostgreSQL, artifacts on S3)
and one S3-compatible endpoint that also serves the DVC remote and the artifact store mirror.

    alignloop stack up --dir .stack      # prints the environment to use it; `stack down` stops it by pid

Every service is a child process in its own session with a pid file (<dir>/pids/<name>.pid) and a log
(<dir>/logs/<name>.log), so `down` stops exactly what `up` started. Connection settings (no secrets) go to
<dir>/stack.env; secrets come from the environment or a git-ignored `.env` (see `secrets`).

S3 endpoint: moto's server mode (moto[server], PyPI). No real S3-compatible server installs here (Debian has
no MinIO/SeaweedFS/Garage server package, PyPI `minio` is a client), and moto keeps objects in memory: fine
for a laptop and for CI, gone on `stack down`. Teams point AWS_ENDPOINT_URL at MinIO/Ceph/S3 instead.
"""

from __future__ import annotations

import contextlib
import os
import secrets as _secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BUCKET = "alignloop"
SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "ALIGNLOOP_PG_PASSWORD")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def start(stack: Path, name: str, argv: list[str], env: dict[str, str], ready, timeout: float = 180,
          **popen) -> int:
    """Start `argv` detached (own session), record its pid, wait until `ready()` is true or it exits."""
    (stack / "pids").mkdir(parents=True, exist_ok=True)
    (stack / "logs").mkdir(parents=True, exist_ok=True)
    log = open(stack / "logs" / f"{name}.log", "ab")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, **popen)
    (stack / "pids" / f"{name}.pid").write_text(str(proc.pid))
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(stack, name)
            tail = (stack / "logs" / f"{name}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{name} did not start ({'exited' if proc.returncode is not None else 'timeout'});"
                               f" log {stack / 'logs' / (name + '.log')}:\n{tail}")
        time.sleep(0.5)
    return proc.pid


def stop(stack: Path, name: str, grace: float = 20) -> bool:
    """SIGTERM the service's process group, SIGKILL after `grace` seconds; False if it was not running."""
    pidfile = stack / "pids" / f"{name}.pid"
    if not pidfile.exists():
        return False
    pid = int(pidfile.read_text())
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pidfile.unlink()
        return False
    deadline = time.monotonic() + grace
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)  # helpers left in the group (uvicorn/gunicorn workers)
    pidfile.unlink()
    return True


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and " Z " not in Path(f"/proc/{pid}/stat").read_text()[:64]


def running(stack: Path) -> dict[str, int]:
    d = stack / "pids"
    return {p.stem: int(p.read_text()) for p in sorted(d.glob("*.pid")) if _alive(int(p.read_text()))} \
        if d.exists() else {}


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status < 500
    except OSError:
        return False


# ---- services ---------------------------------------------------------------------------------------------
def prefect_server(stack: Path, port: int, env: dict[str, str]) -> str:
    """`prefect server start` with its own PREFECT_HOME (SQLite database) under the stack directory."""
    env = {**env, "PREFECT_HOME": str(stack / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": ""}
    url = f"http://127.0.0.1:{port}/api"
    start(stack, "prefect", [_bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port),
                             "--no-ui"], env, lambda: _http_ok(f"{url}/health"))
    return url


def s3_endpoint(stack: Path, port: int, env: dict[str, str]) -> str:
    url = f"http://127.0.0.1:{port}"
    start(stack, "s3", [_bin("moto_server"), "-H", "127.0.0.1", "-p", str(port)], env,
          lambda: _http_ok(f"{url}/moto-api/"))
    import boto3

    boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"]).create_bucket(Bucket=BUCKET)
    return url
