"""A real Prefect server on 127.0.0.1 for the service tests (random port, PREFECT_HOME in tmp), started by the same
code as `alignloop stack up`."""

import os

import pytest


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    from infra import stack

    d = tmp_path_factory.mktemp("prefect-stack")
    url = stack.prefect_server(d, stack.free_port(), dict(os.environ))
    yield url
    stack.stop(d, "prefect")
