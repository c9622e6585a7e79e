"""A real S3-compatible server for tests: moto's server (from PyPI) on 127.0.0.1, with one bucket.

`uri(prefix)` names a folder in it with the endpoint and keys in the URI's options, so it works in any process
(a Ray worker started before the server, too); processes started with `S3Server.env` (a Ray node) also find it
through AWS_ENDPOINT_URL with plain `s3://bucket/prefix` URIs.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.support.servers import free_port

BUCKET = "arscale-test"


class S3Server:
    def __init__(self, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {"AWS_ENDPOINT_URL": self.url, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
        server = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
        self.process = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                assert self.process.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        self.old_env = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)  # for this process's own pyarrow clients
        from pyarrow import fs

        fs.S3FileSystem(endpoint_override=self.url, allow_bucket_creation=True).create_dir(BUCKET)

    def uri(self, prefix: str, options: bool = True) -> str:
        if not options:
            return f"s3://{BUCKET}/{prefix}"
        return f"s3://test:test@{BUCKET}/{prefix}?endpoint_override=127.0.0.1:{self.port}&scheme=http"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        for k, v in self.old_env.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
