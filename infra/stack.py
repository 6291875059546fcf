"""The local team stack on loopback: Prefect server, PostgreSQL, MLflow server (on PostgreSQL, artifacts on S3)
and one S3-compatible endpoint that also serves the DVC remote and the artifact store mirror.

    alignloop stack up --dir .stack      # prints the environment to use it; `stack down` stops it by pid

Every service is a child process in its own session with a pid file (<dir>/pids/<name>.pid) and a log
(<dir>/logs/<name>.log), so `down` stops exactly what `up` started. Connection settings (no secrets) go to
<dir>/stack.env; secrets come from the environment or a git-ignored `.env` (see `secrets`).

Authentication (on by default; `stack up --no-auth` for none): MLflow runs its basic-auth app (admin account =
MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, which MLflow's clients send; users in a SQLite database under
<dir>), Prefect checks PREFECT_SERVER_API_AUTH_STRING (clients send PREFECT_API_AUTH_STRING), PostgreSQL has a
scram password. The credentials are generated into `.env` (mode 600), which every `alignloop` command loads.

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

from components.env import TELEMETRY_OFF

BUCKET = "alignloop"
SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "ALIGNLOOP_PG_PASSWORD")
# what authenticated servers need: the clients' credentials (MLflow and Prefect read these names themselves) and
# the MLflow server's CSRF key; MLFLOW_TRACKING_USERNAME is an account name, not a secret
AUTH_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "PREFECT_API_AUTH_STRING",
             "ALIGNLOOP_MLFLOW_SECRET_KEY")
NOT_SECRET = ("MLFLOW_TRACKING_USERNAME",)


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
    with open(stack / "logs" / f"{name}.log", "ab") as log:  # the child keeps its own copy of the descriptor
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
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
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
def prefect_server(stack: Path, port: int, env: dict[str, str], auth_string: str | None = None) -> str:
    """`prefect server start` with its own PREFECT_HOME (SQLite database) under the stack directory; with
    `auth_string` every API call but the health check needs HTTP basic auth with it (PREFECT_API_AUTH_STRING)."""
    env = {**env, "PREFECT_HOME": str(stack / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": ""}
    env.pop("PREFECT_SERVER_API_AUTH_STRING", None)
    if auth_string:
        env["PREFECT_SERVER_API_AUTH_STRING"] = auth_string
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


def pg_bindir(install: bool = True) -> Path:
    """Debian's PostgreSQL binaries; installed with apt-get when missing and we are root."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not found and install and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "--no-install-recommends",
                                                  "postgresql"]):
            subprocess.run(cmd, env=env, check=False, capture_output=True, timeout=600)
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not found:
        raise FileNotFoundError("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin): "
                                "`apt-get install postgresql` (Debian), then retry")
    return found[-1].parent


def postgres(stack: Path, port: int, env: dict[str, str]) -> str:
    """A private cluster on 127.0.0.1:`port` with password (scram) auth and a database `mlflow`; returns the
    URI without the password (servers get it as PGPASSWORD). PostgreSQL refuses to run as root: as root the
    cluster runs as the OS user `postgres` (made by Debian's package), in a directory it can enter
    (/tmp/alignloop-pg-<id>, since a root-owned 0700 parent such as a pytest tmp dir would lock it out)."""
    bindir = pg_bindir()
    as_root = os.geteuid() == 0
    base = Path(f"/tmp/alignloop-pg-{abs(hash(str(stack.resolve()))) % 10**10}") if as_root else stack / "pg"
    (stack / "pg-location").write_text(str(base))
    run_as = {"user": "postgres", "group": "postgres", "extra_groups": []} if as_root else {}
    data, pw = base / "data", env["ALIGNLOOP_PG_PASSWORD"]
    if not (data / "PG_VERSION").exists():
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(mode=0o700, parents=True)
        pwfile = base / "pw"
        pwfile.write_text(pw)
        pwfile.chmod(0o600)
        if as_root:
            shutil.chown(base, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
        subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", "alignloop", "--auth=scram-sha-256",
                        f"--pwfile={pwfile}", "-E", "UTF8", "--no-locale"], check=True, capture_output=True,
                       **run_as)
        pwfile.unlink()
    argv = [str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(base),
            "-c", "listen_addresses=127.0.0.1"]
    client_env = {**env, "PGPASSWORD": pw}
    isready = [str(bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)]
    start(stack, "postgres", argv, env, lambda: subprocess.run(isready, check=False).returncode == 0, **run_as)
    made = subprocess.run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "alignloop",
                           "mlflow"], env=client_env, capture_output=True, text=True, check=False)
    if made.returncode and "already exists" not in made.stderr:
        raise RuntimeError(f"createdb mlflow failed: {made.stderr.strip()}")
    return f"postgresql://alignloop@127.0.0.1:{port}/mlflow"


def _mlflow_auth(stack: Path, env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """MLflow's basic-auth app: (server flags, server environment). Its config file holds no secret (the admin
    account comes from the environment, and only a salted hash of its password reaches the user database)."""
    ini = stack / "mlflow-auth.ini"
    ini.write_text("[mlflow]\ndefault_permission = READ\n"
                   f"database_uri = sqlite:///{(stack / 'mlflow-auth.db').resolve()}\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    return ["--app-name", "basic-auth"], {
        "MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_AUTH_ADMIN_USERNAME": env["MLFLOW_TRACKING_USERNAME"],
        "MLFLOW_AUTH_ADMIN_PASSWORD": env["MLFLOW_TRACKING_PASSWORD"],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": env["ALIGNLOOP_MLFLOW_SECRET_KEY"]}


def mlflow_server(stack: Path, port: int, backend: str, s3: str, env: dict[str, str], auth: bool = False) -> str:
    """MLflow tracking + registry on PostgreSQL, serving artifacts that it stores on the S3 endpoint; with `auth`,
    behind MLflow's basic-auth app (clients: MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)."""
    flags, auth_env = _mlflow_auth(stack, env) if auth else ([], {})
    env = {**env, "PGPASSWORD": env["ALIGNLOOP_PG_PASSWORD"], "MLFLOW_S3_ENDPOINT_URL": s3,
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **auth_env}  # else helpers outlive a stop
    url = f"http://127.0.0.1:{port}"
    start(stack, "mlflow", [_bin("mlflow"), "server", "--backend-store-uri", backend,
                            "--artifacts-destination", f"s3://{BUCKET}/mlartifacts", "--host", "127.0.0.1",
                            "--port", str(port), "--workers", "1", *flags], env, lambda: _http_ok(f"{url}/health"))
    return url


# ---- the whole stack --------------------------------------------------------------------------------------
def _generated(key: str) -> str:
    if key == "MLFLOW_TRACKING_USERNAME":
        return "alignloop"
    if key == "PREFECT_API_AUTH_STRING":  # user:password, what HTTP basic auth carries
        return f"alignloop:{_secrets.token_hex(16)}"
    return _secrets.token_hex(16)


def secrets(env_file: Path, auth: bool = True) -> dict[str, str]:
    """S3 keys, the database password and (with `auth`) the servers' credentials: from the environment, else
    `env_file` (git-ignored `.env`); missing ones are generated once and appended there (mode 600), so `up`
    works on a fresh checkout and every command, which loads `.env`, authenticates."""
    from dotenv import dotenv_values

    keys = SECRET_KEYS + AUTH_KEYS * auth
    found = {k: v for k, v in dotenv_values(env_file).items() if v} if env_file.exists() else {}
    found.update({k: os.environ[k] for k in keys if os.environ.get(k)})
    missing = {k: _generated(k) for k in keys if k not in found}
    if missing:
        with env_file.open("a") as fh:
            fh.writelines(f"{k}={v}\n" for k, v in missing.items())
    if env_file.exists():
        env_file.chmod(0o600)
    return {k: {**found, **missing}[k] for k in keys}


def up(stack: Path, env_file: Path = Path(".env"), auth: bool = True) -> dict[str, str]:
    """Start everything (what is already running is left alone); returns the settings, also written (without
    secrets) to <stack>/stack.env for `set -a; . .env; . <stack>/stack.env; set +a`. With `auth` (default)
    MLflow and Prefect refuse unauthenticated clients (credentials in `env_file`)."""
    stack = stack.resolve()
    stack.mkdir(parents=True, exist_ok=True)
    if running(stack):
        raise RuntimeError(f"{stack}: stack already running ({', '.join(running(stack))}); `alignloop stack down`")
    env = {**os.environ, **secrets(env_file, auth), "AWS_DEFAULT_REGION": "us-east-1", **TELEMETRY_OFF}
    try:
        s3 = s3_endpoint(stack, free_port(), env)
        settings = {"PREFECT_API_URL": prefect_server(stack, free_port(), env,
                                                      env["PREFECT_API_AUTH_STRING"] if auth else None),
                    "MLFLOW_TRACKING_URI": mlflow_server(stack, free_port(), postgres(stack, free_port(), env), s3,
                                                         env, auth),
                    "AWS_ENDPOINT_URL": s3, "MLFLOW_S3_ENDPOINT_URL": s3, "AWS_DEFAULT_REGION": "us-east-1",
                    "ALIGNLOOP_DVC_REMOTE": f"s3://{BUCKET}/dvc", "ALIGNLOOP_ARTIFACT_REMOTE": f"s3://{BUCKET}/store"}
    except BaseException:
        down(stack)
        raise
    (stack / "stack.env").write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    return settings


def down(stack: Path) -> list[str]:
    """Stop, by pid, everything `up` started (the database last); returns the names stopped."""
    order = ["prefect", "mlflow", "s3", "postgres"]
    names = sorted((p.stem for p in (stack / "pids").glob("*.pid")), key=lambda n: order.index(n)
                   if n in order else -1) if (stack / "pids").exists() else []
    return [n for n in names if stop(stack, n)]
