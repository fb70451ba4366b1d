"""Real servers on 127.0.0.1 for the resolver tests, and the tiny module they serve.

Registered by test files with `pytest_plugins = ["tests.servers"]`, so its session fixtures are built once
for the whole run:

- hub_module: a real wordvec SavedModel (built once, ~3 s), its folder, its tarball and their digests.
- hub_http: a ThreadingHTTPServer serving the tarball in the shapes a hub serves it (plain, slowed down,
  held after its first chunk, truncated, 404), counting GET requests per path.
- s3_bucket: moto's ThreadedMotoServer holding the module as a folder and as a tarball.
- gcs_bucket: gcp-storage-emulator (in memory) holding the same.

The function-scoped fixtures (hub_http, s3_bucket, gcs_bucket) point the environment at their server through
monkeypatch and reset the per-test counters.
"""
from __future__ import annotations

import collections
import hashlib
import http.server
import io
import os
import socket
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SENTENCES = ["the cat", "a dog", "the dog sat", "zebra unknown words", ""]
VECTORS = """\
the 0.1 0.2 0.3
cat 1 0 0
dog 0 1 0
sat 0 0 1
a 0.5 0.5 0.5
"""
S3_BUCKET = "hub-modules"
GCS_BUCKET = "hub-modules"
WAITING_LOG = "waiting for another process"  # what hubbeam.hub.cache logs while another process fetches


# --- the module ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModuleFiles:
    folder: Path  # the SavedModel folder
    tarball: Path  # the folder's contents packed at the tarball's root
    tar_bytes: bytes
    archive_sha256: str  # sha256 of tar_bytes
    tree_sha256: str  # hubbeam's tree digest of the folder

    def files(self) -> dict[str, Path]:
        """Relative POSIX path -> file, for every file of the module."""
        return {p.relative_to(self.folder).as_posix(): p for p in sorted(self.folder.rglob("*")) if p.is_file()}


def pack_folder(folder: Path, tarball: Path) -> bytes:
    """Pack folder's contents at the tarball's root, in sorted order, with fixed metadata."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(folder.rglob("*")):
            info = tar.gettarinfo(str(path), arcname=path.relative_to(folder).as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            if path.is_file():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    data = buffer.getvalue()
    tarball.write_bytes(data)
    return data


@pytest.fixture(scope="session")
def hub_module(tmp_path_factory) -> ModuleFiles:
    import hubbeam
    from hubbeam.hub.digest import tree_sha256

    base = tmp_path_factory.mktemp("wordvec")
    vectors = base / "vectors.txt"
    vectors.write_text(VECTORS)
    folder = base / "wordvec"
    hubbeam.build_module("wordvec", folder, embeddings=vectors, oov_buckets=2)
    assert (folder / "saved_model.pb").is_file()
    assert (folder / "variables" / "variables.index").is_file()
    tarball = base / "wordvec.tar.gz"
    data = pack_folder(folder, tarball)
    return ModuleFiles(folder, tarball, data, hashlib.sha256(data).hexdigest(), tree_sha256(folder))


@pytest.fixture(scope="session")
def hub_reference(hub_module):
    """What the module, loaded from its local folder, gives for SENTENCES."""
    import hubbeam

    out = hubbeam.load(str(hub_module.folder))(SENTENCES)
    assert out.shape == (len(SENTENCES), 3) and str(out.dtype) == "float32"
    return out


def embed(handle: str, **kwargs):
    import hubbeam

    return hubbeam.load(handle, **kwargs)(SENTENCES)


# --- HTTP ---------------------------------------------------------------------------------------------------------

@dataclass
class Route:
    body: bytes = b""
    mode: str = "ok"  # ok | truncated | slow | stall | status
    status: int = 200
    chunks: int = 20  # slow: number of chunks
    delay: float = 0.2  # slow: seconds between chunks; stall: seconds of silence after half the body
    hold_first: threading.Event | None = None  # slow: the first GET pauses after its first chunk until set
    started: threading.Event = field(default_factory=threading.Event)  # set once body bytes went out


class HubHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _HubHandler)
        self.routes: dict[str, Route] = {}
        self._counts: collections.Counter = collections.Counter()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, name="hub-http", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def add(self, path: str, **kwargs) -> Route:
        route = Route(**kwargs)
        self.routes[path] = route
        return route

    def count(self, path: str) -> int:
        with self._lock:
            return self._counts[path]

    def _record(self, path: str) -> int:
        with self._lock:
            self._counts[path] += 1
            return self._counts[path]

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()
        for route in self.routes.values():
            if route.hold_first is not None:
                route.hold_first.set()  # never leave a handler thread parked past its test


class _HubHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HubHTTPServer

    def log_message(self, format, *args):  # keep test output quiet
        pass

    def do_GET(self):
        nth = self.server._record(self.path)
        route = self.server.routes.get(self.path)
        try:
            if route is None:
                self._send_status(404, b"not found\n")
            elif route.mode == "status":
                self._send_status(route.status, b"error\n")
            elif route.mode == "truncated":
                self.send_response(200)
                self.send_header("Content-Type", "application/gzip")
                self.send_header("Content-Length", str(len(route.body) + 4096))
                self.end_headers()
                self.wfile.write(route.body[: len(route.body) // 2])
                self.wfile.flush()
                route.started.set()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
            else:
                self.send_response(200)
                self.send_header("Content-Type", "application/gzip")
                self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                if route.mode == "stall":
                    self.wfile.write(route.body[: len(route.body) // 2])
                    self.wfile.flush()
                    route.started.set()
                    time.sleep(route.delay)
                    self.wfile.write(route.body[len(route.body) // 2:])
                elif route.mode == "slow":
                    size = -(-len(route.body) // route.chunks)
                    for i in range(0, len(route.body), size):
                        self.wfile.write(route.body[i:i + size])
                        self.wfile.flush()
                        route.started.set()
                        if i == 0 and nth == 1 and route.hold_first is not None:
                            route.hold_first.wait(60)
                        time.sleep(route.delay)
                else:
                    self.wfile.write(route.body)
                    route.started.set()
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True  # the client went away (killed, or gave up): nothing to do

    def _send_status(self, status: int, body: bytes):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="session")
def _hub_http_session(hub_module):
    server = HubHTTPServer()
    server.thread.start()
    yield server
    server.reset()
    server.shutdown()
    server.server_close()


@pytest.fixture
def hub_http(_hub_http_session, hub_module) -> HubHTTPServer:
    """The HTTP hub with the standard routes and fresh counters.

    /m/wordvec.tar.gz and /m/wordvec?tf-hub-format=compressed: the tarball; /m/truncated.tar.gz: a body cut
    short of its Content-Length; /m/stalled.tar.gz: half the body, then 3 s of silence; /m/broken.tar.gz:
    HTTP 500; anything unknown: 404. Tests add more routes.
    """
    server = _hub_http_session
    server.reset()
    server.routes.clear()
    data = hub_module.tar_bytes
    server.add("/m/wordvec.tar.gz", body=data)
    server.add("/m/wordvec?tf-hub-format=compressed", body=data)
    server.add("/m/truncated.tar.gz", body=data, mode="truncated")
    server.add("/m/broken.tar.gz", mode="status", status=500)
    server.add("/m/stalled.tar.gz", body=data, mode="stall", delay=3)
    yield server
    server.reset()


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- S3 (moto server mode) ----------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def _hub_moto(hub_module):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"

    import boto3

    client = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )
    client.create_bucket(Bucket=S3_BUCKET)
    # The folder and the tarball side by side: wordvec/ must not pick up wordvec.tar.gz as a member.
    for rel, path in hub_module.files().items():
        client.upload_file(str(path), S3_BUCKET, f"wordvec/{rel}")
        client.upload_file(str(path), S3_BUCKET, f"nested/deeper/wordvec/{rel}")
    client.put_object(Bucket=S3_BUCKET, Key="wordvec.tar.gz", Body=hub_module.tar_bytes)
    client.put_object(Bucket=S3_BUCKET, Key="not-a-module/readme.txt", Body=b"hello")
    yield endpoint
    server.stop()


@pytest.fixture
def s3_bucket(_hub_moto, monkeypatch, tmp_path) -> str:
    """Environment pointed at the moto server (as a user would set it); returns the bucket name."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("HUBBEAM_S3_ENDPOINT_URL", _hub_moto)
    return S3_BUCKET


# --- GCS (gcp-storage-emulator) -----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def _hub_gcs(hub_module):
    import urllib.parse

    import requests
    from gcp_storage_emulator.server import create_server

    server = create_server("127.0.0.1", 0, in_memory=True)
    server.start()
    port = server._api._httpd.server_address[1]
    host = f"http://127.0.0.1:{port}"

    # Set it up with plain JSON-API calls, independent of gcsfs (which is what the tests exercise).
    r = requests.post(f"{host}/storage/v1/b", params={"project": "test"}, json={"name": GCS_BUCKET}, timeout=10)
    r.raise_for_status()

    def upload(name: str, data: bytes):
        url = f"{host}/upload/storage/v1/b/{GCS_BUCKET}/o?uploadType=media&name={urllib.parse.quote(name, safe='')}"
        r = requests.post(url, data=data, headers={"Content-Type": "application/octet-stream"}, timeout=10)
        r.raise_for_status()

    for rel, path in hub_module.files().items():
        upload(f"wordvec/{rel}", path.read_bytes())
    upload("wordvec.tar.gz", hub_module.tar_bytes)
    upload("not-a-module/readme.txt", b"hello")
    yield host
    server.stop()


@pytest.fixture
def gcs_bucket(_hub_gcs, monkeypatch) -> str:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", _hub_gcs)
    monkeypatch.delenv("HUBBEAM_GCS_TOKEN", raising=False)
    return GCS_BUCKET


# --- helpers ------------------------------------------------------------------------------------------------------

def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def cache_state(cache_dir: Path) -> dict:
    """What the cache holds: installed entry folders, staging leftovers, lock files."""
    modules = cache_dir / "modules"
    if not modules.exists():
        return {"entries": [], "staging": [], "locks": []}
    staging = modules / ".staging"
    return {
        "entries": sorted(p.name for p in modules.iterdir() if p.is_dir() and p.name != ".staging"),
        "staging": sorted(p.name for p in staging.iterdir()) if staging.exists() else [],
        "locks": sorted(p.name for p in modules.glob("*.lock")),
    }


def snapshot(root: Path, exclude: Path | None = None) -> dict[str, int]:
    """Every path under root (but not under exclude) -> size, for 'nothing else was written' checks."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if exclude is not None and Path(dirpath).resolve().is_relative_to(exclude.resolve()):
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if exclude is not None and p.resolve() == exclude.resolve():
                continue
            out[str(p.relative_to(root))] = p.lstat().st_size if not p.is_dir() else -1
    return out
