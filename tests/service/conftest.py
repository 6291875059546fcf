"""A real Prefect server on 127.0.0.1 for the service tests (random port, PREFECT_HOME in tmp), started by the same
code as `alignloop stack up`; a real Label Studio server for the human-labels test (label_studio_server.py)."""

import os

import pytest


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    from infra import stack

    d = tmp_path_factory.mktemp("prefect-stack")
    url = stack.prefect_server(d, stack.free_port(), dict(os.environ))
    yield url
    stack.stop(d, "prefect")


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    """Label Studio on 127.0.0.1 (random port, SQLite in tmp) from its own cached venv; yields url + access token."""
    from label_studio_server import start, stop

    from infra import stack

    server = start(tmp_path_factory.mktemp("label-studio"), stack.free_port())
    yield server
    stop(server.proc)
