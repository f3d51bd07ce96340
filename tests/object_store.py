"""A real S3-compatible server for tests: moto's server mode on 127.0.0.1, reached by
s3fs / boto3 over HTTP exactly as a cloud bucket is (no mocked calls).

The client finds it through the standard environment (``AWS_ENDPOINT_URL``, keys,
region), as a real job finds its credentials; processes started later (DataLoader
workers, Ray workers) inherit it. Import the fixture in a test module::

    from object_store import s3_server  # noqa: F401
"""
from __future__ import annotations

import uuid

import pytest

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
          "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_server():
    """A function that makes a new empty bucket on the session's server and returns its
    ``s3://`` URL."""
    pytest.importorskip("s3fs")
    server_module = pytest.importorskip("moto.server")
    import fsspec

    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {**S3_ENV, "AWS_ENDPOINT_URL": f"http://{host}:{port}"}.items():
            patch.setenv(key, value)

        def bucket(prefix: str = "test") -> str:
            name = f"{prefix}-{uuid.uuid4().hex[:8]}"
            fsspec.filesystem("s3").mkdir(name)
            return f"s3://{name}"

        yield bucket
    server.stop()
