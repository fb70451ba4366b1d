"""Real servers on 127.0.0.1 for the resolver tests, and the tiny module they serve.

Registered by test files with `pytest_plugins = ["tests.servers"]`, so its session fixtures are built once
for the whole run:

- hub_module: a real wordvec SavedModel (built once, ~3 s), its folder, its tarball and their digests.
- hub_http: a ThreadingHTTPServer serving the tarball in the shapes a hub serves it (plain, slowed down,
  held after its first chunk, truncated, 404), counting GET requests per path.
- s3_bucket: moto's ThreadedMotoServer holding the module as a folder and as a tarball.
- gcs_bucket: gcp-storage-emulator (in memory) holding the same.
- s3_proxy, gcs_proxy: a FaultProxy in front of those servers (500s, connection resets, held requests, on a
  policy the test sets), the environment pointed at the proxy.

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
    mode: str = "ok"  # ok | truncated | slow | stall | status | redirect (302 to location)
    status: int = 200
    chunks: int = 20  # slow: number of chunks
    delay: float = 0.2  # slow: seconds between chunks; stall: seconds of silence after half the body
    hold_first: threading.Event | None = None  # slow: the first GET pauses after its first chunk until set
    started: threading.Event = field(default_factory=threading.Event)  # set once body bytes went out
    location: str = ""  # redirect: where to
    headers: dict[str, str] = field(default_factory=dict)  # sent too (replacing a default of the same name)


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
            elif route.mode == "redirect":
                self.send_response(route.status if 300 <= route.status < 400 else 302)
                self._send_headers({"Location": route.location, "Content-Length": "0"}, route)
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
                self._send_headers({"Content-Type": "application/gzip", "Content-Length": str(len(route.body))},
                                   route)
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

    def _send_headers(self, defaults: dict[str, str], route: Route):
        for name, value in {**defaults, **route.headers}.items():
            self.send_header(name, value)
        self.end_headers()

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
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no credentials: fail, never ask 169.254.169.254
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


# --- a fault-injecting proxy in front of S3 / GCS -----------------------------------------------------------------

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
               "expect", "content-length"}


class FaultProxy(http.server.ThreadingHTTPServer):
    """A ThreadingHTTPServer on 127.0.0.1 that forwards every request to an upstream server (moto, the GCS
    emulator) unless `fault` says otherwise.

    fault(n, method, path) is asked for the n-th request (1-based) and returns None (forward it), an HTTP status
    to answer with instead (e.g. 500), "reset" (drop the connection without an answer: what a store that is
    down or restarting does) or "hold" (park the request until `release` is set, then drop it). The helpers
    first(), always(), every() and from_nth() build the usual policies. Counters: requests, faults, and
    `log` of (n, method, path, what happened).
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, upstream: str, flavour: str):
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        import urllib.parse

        parts = urllib.parse.urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.flavour = flavour  # "s3" (XML errors) or "gcs" (JSON errors)
        self.fault = lambda n, method, path: None
        self.release = threading.Event()
        self.held = threading.Event()  # set once a request is parked by "hold"
        self.log: list[tuple[int, str, str, str]] = []
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, name="fault-proxy",
                                       daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    @property
    def requests(self) -> int:
        return len(self.log)

    @property
    def faults(self) -> int:
        return sum(1 for *_, what in self.log if what != "forwarded")

    def decide(self, method: str, path: str):
        with self._lock:
            n = len(self.log) + 1
            what = self.fault(n, method, path)
            self.log.append((n, method, path, "forwarded" if what is None else str(what)))
            return what

    def error_body(self, status: int) -> tuple[str, bytes]:
        if self.flavour == "s3":
            return "application/xml", (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>InternalError</Code>"
                                       f"<Message>injected fault (HTTP {status})</Message></Error>").encode()
        return "application/json", (f'{{"error": {{"code": {status}, "message": "injected fault (HTTP {status})"}}}}'
                                    ).encode()

    def stop(self) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()


def first(count: int, what=500):
    """The first `count` requests fail, then the store recovers."""
    return lambda n, method, path: what if n <= count else None


def always(what=500, match=None):
    """Every request (or every one whose path contains `match`) fails."""
    return lambda n, method, path: what if match is None or match in path else None


def every(k: int, what=500):
    """Every k-th request fails (a flaky store)."""
    return lambda n, method, path: what if n % k == 0 else None


def from_nth(start: int, what=500, method_only: str | None = None, counter=None):
    """Requests from the start-th on (counting only `method_only` requests, if given) fail."""
    seen = counter if counter is not None else [0]

    def fault(n, method, path):
        if method_only is None or method == method_only:
            seen[0] += 1
            if seen[0] >= start:
                return what
        return None

    return fault


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FaultProxy

    def log_message(self, format, *args):
        pass

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reset(self) -> None:
        import struct

        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()  # RST: the client sees "connection reset by peer"

    def _forward(self):
        import http.client

        body = self._body()
        what = self.server.decide(self.command, self.path)
        if what == "hold":
            self.server.held.set()
            self.server.release.wait(120)
            what = "reset"
        if what == "reset":
            self._reset()
            return
        if what is not None:
            content_type, payload = self.server.error_body(int(what))
            self.send_response(int(what))
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        if body or self.command in ("PUT", "POST", "PATCH"):
            headers["Content-Length"] = str(len(body))
        upstream = http.client.HTTPConnection(*self.server.upstream, timeout=60)
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
            self.send_response(response.status, response.reason)
            for key, value in response.getheaders():
                if key.lower() not in _HOP_BY_HOP:
                    self.send_header(key, value)
            length = response.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
            if length is not None:
                self.send_header("Content-Length", length)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        finally:
            upstream.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _forward


def _start_proxy(upstream: str, flavour: str) -> FaultProxy:
    proxy = FaultProxy(upstream, flavour)
    proxy.thread.start()
    return proxy


@pytest.fixture
def s3_proxy(_hub_moto, s3_bucket, monkeypatch):
    """A FaultProxy in front of the moto server, the environment pointed at it (bucket: S3_BUCKET). The moto
    server itself stays reachable at `proxy.upstream_url` for checks that must not go through the faults."""
    proxy = _start_proxy(_hub_moto, "s3")
    proxy.upstream_url = _hub_moto
    monkeypatch.setenv("HUBBEAM_S3_ENDPOINT_URL", proxy.url)
    yield proxy
    proxy.stop()


@pytest.fixture
def gcs_proxy(_hub_gcs, gcs_bucket, monkeypatch):
    """A FaultProxy in front of the GCS emulator, STORAGE_EMULATOR_HOST pointed at it (bucket: GCS_BUCKET)."""
    proxy = _start_proxy(_hub_gcs, "gcs")
    proxy.upstream_url = _hub_gcs
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
    yield proxy
    proxy.stop()


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
