"""The team stack for real: `alignloop stack up` (moto S3, PostgreSQL, MLflow server, Prefect server on loopback),
two iterations against it (authenticated with the generated `.env`), then independent clients check each service,
unauthenticated ones are refused, and no secret leaked anywhere."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from service_helpers import EXE, service_config

pytestmark = [pytest.mark.stack, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack_env(tmp_path_factory):
    from infra import stack

    try:
        stack.pg_bindir()  # installs Debian's postgresql with apt-get when missing and root
    except FileNotFoundError as err:
        pytest.skip(f"no PostgreSQL server here and it could not be installed: {err}")
    d = tmp_path_factory.mktemp("stack")
    env_file = d / ".env"
    r = subprocess.run([EXE, "stack", "up", "--dir", str(d / "s"), "--env-file", str(env_file)],
                       capture_output=True, text=True, timeout=600, env={
                           k: v for k, v in os.environ.items() if k not in stack.SECRET_KEYS + stack.AUTH_KEYS})
    assert r.returncode == 0, r.stdout + r.stderr
    assert env_file.stat().st_mode & 0o777 == 0o600
    from dotenv import dotenv_values

    secrets = dotenv_values(env_file)
    settings = dotenv_values(d / "s" / "stack.env")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALIGNLOOP_", "PREFECT_API"))}
    yield d, {**env, **settings, **secrets}, secrets, r.stdout + r.stderr
    down = subprocess.run([EXE, "stack", "down", "--dir", str(d / "s")], capture_output=True, text=True, timeout=120)
    assert "postgres" in down.stdout


def _status(url: str, auth: tuple[str, str] | None = None, data: bytes | None = None) -> int:
    import base64
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code


def test_servers_refuse_unauthenticated_clients(stack_env):
    _, env, secrets, _ = stack_env
    mlflow = env["MLFLOW_TRACKING_URI"] + "/api/2.0/mlflow/experiments/search?max_results=1"
    prefect, body = env["PREFECT_API_URL"] + "/flows/filter", b"{}"
    assert _status(mlflow) == 401 and _status(prefect, data=body) == 401
    assert _status(mlflow, ("alignloop", "wrong")) == 401 and _status(prefect, ("x", "y"), body) == 401
    user, password = secrets["MLFLOW_TRACKING_USERNAME"], secrets["MLFLOW_TRACKING_PASSWORD"]
    assert _status(mlflow, (user, password)) == 200
    assert _status(prefect, tuple(secrets["PREFECT_API_AUTH_STRING"].split(":", 1)), body) == 200


def test_two_iterations_on_the_stack(tmp_path, tiny_bootstrap, stack_env, monkeypatch):
    import boto3
    from mlflow import MlflowClient

    from infra import stack

    d, env, secrets, up_log = stack_env
    for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):  # this process's MLflow client
        monkeypatch.setenv(k, secrets[k])
    cfg, ws = service_config(tmp_path, tiny_bootstrap, "stackloop"), tmp_path / "ws"
    r = subprocess.run([EXE, "run", "-c", str(cfg), "-w", str(ws), "-n", "2"], env=env, capture_output=True,
                       text=True, timeout=1200)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (ws / "mlflow.db").exists()  # tracking went to the server, not the local default

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("stackloop")
    parents = [x for x in client.search_runs([exp.experiment_id]) if x.data.tags["alignloop.stage"] == "iteration"]
    assert sorted(x.data.tags["alignloop.iteration"] for x in parents) == ["0", "1"]
    assert all(x.info.status == "FINISHED" for x in parents)
    assert len(client.search_model_versions("name = 'policy'")) == 3, r.stdout

    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id=secrets["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=secrets["AWS_SECRET_ACCESS_KEY"])
    keys = [o["Key"] for p in s3.get_paginator("list_objects_v2").paginate(Bucket="alignloop")
            for o in p.get("Contents", [])]
    for prefix in ("store/preferences/", "store/policy/", "dvc/", "mlartifacts/"):
        assert any(k.startswith(prefix) for k in keys), f"nothing under s3://alignloop/{prefix}"

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ws / "data"), str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "checkout", "-q", "iter-1"], check=True)
    pulled = subprocess.run([shutil.which("dvc", path=os.path.dirname(EXE)), "pull", "-q"], cwd=clone, env=env,
                            capture_output=True, text=True, timeout=300)
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert (clone / "iterations" / "iter-0001" / "preferences.parquet").stat().st_size > 0

    # No secret in anything the run or the stack wrote, nor in MLflow params/tags, nor in S3 objects' keys.
    haystack = [r.stdout, r.stderr, up_log, *(x.data.params for x in client.search_runs([exp.experiment_id])),
                *(x.data.tags for x in client.search_runs([exp.experiment_id]))]
    files = [p for root in (ws, d / "s") for p in Path(root).rglob("*") if p.is_file() and not p.is_symlink()]
    for name, value in secrets.items():
        if name in stack.NOT_SECRET:
            continue
        assert all(value not in str(h) for h in haystack), f"{name} leaked into output or MLflow"
        leaked = [p for p in files if value.encode() in p.read_bytes()]
        assert not leaked, f"{name} found in {leaked}"
        assert all(value not in k for k in keys)

    # Re-gating a registered version loads it through the store by content hash, from S3 when this machine lacks
    # it (the registry's source is an s3:// URI): remove the local copies and promote the non-champion candidate.
    shutil.rmtree(ws / "store")
    champion = client.get_model_version_by_alias("policy", "champion").version
    other = next(v.version for v in client.search_model_versions("name = 'policy'")
                 if v.version != champion and v.tags.get("alignloop.gate") != "initial")
    r = subprocess.run([EXE, "promote", "--version", str(other), "-w", str(ws)], env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode in (0, 1), r.stdout + r.stderr  # 1: the gate rejected it, which is an answer too
    assert "alignloop.regate" in client.get_model_version("policy", other).tags
    assert (ws / "store" / "policy").is_dir()  # fetched back from the mirror
