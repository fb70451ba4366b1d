"""README promises about the network that had no test of their own (issue 17), each against a real local server:

- https handles over real TLS: a server with a certificate from a test CA is trusted through
  REQUESTS_CA_BUNDLE; one whose certificate does not verify is refused at once with a one-line error.
- HTTP 429 is a transient failure (3 attempts with back-off, a Retry-After of a few seconds waited out).
- HUBBEAM_LOCK_TIMEOUT bounds waiting on a live process that holds the cache entry's lock.
- HUBBEAM_CONNECT_TIMEOUT bounds connecting to a host that never answers (HTTP and S3).
- botocore's AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL reach moto without HUBBEAM_S3_ENDPOINT_URL.
- HUBBEAM_GCS_TOKEN (a service-account JSON file or its text) is the token the GCS client uses, even with an
  emulator; and a `google_cloud_platform` Airflow connection (AIRFLOW_CONN_… JSON) is used for its block only.

Certificates and the service-account key are made with `cryptography` (already in the pinned stack). The
OAuth token endpoint of the key is a local server too, so "the token was used" is checked by its being asked
for one.
"""
from __future__ import annotations

import datetime as dt
import http.server
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import hubbeam
from hubbeam.errors import FetchError, HubbeamError
from tests.servers import WAITING_LOG

pytest_plugins = ["tests.servers"]


# --- certificates -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pki:
    ca: Path  # the test CA's certificate (PEM): what the client is told to trust
    cert: Path  # 127.0.0.1/localhost, signed by that CA
    key: Path
    rogue_cert: Path  # 127.0.0.1/localhost, signed by another CA nobody trusts
    rogue_key: Path


def _name(text: str):
    from cryptography.x509.oid import NameOID
    from cryptography import x509

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _ca_cert(key, name: str):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    now = dt.datetime.now(dt.timezone.utc)
    return (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))


def _server_cert(key, ca_key, ca_cert):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    now = dt.datetime.now(dt.timezone.utc)
    return (x509.CertificateBuilder().subject_name(_name("127.0.0.1")).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))


def _write_pem(path: Path, cert=None, key=None) -> Path:
    from cryptography.hazmat.primitives import serialization

    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return path


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    out = {}
    for prefix, ca_name in (("", "hubbeam test CA"), ("rogue_", "someone else's CA")):
        ca_key, key = _key(), _key()
        ca = _ca_cert(ca_key, ca_name)
        if not prefix:
            out["ca"] = _write_pem(base / "ca.pem", cert=ca)
        out[f"{prefix}cert"] = _write_pem(base / f"{prefix}server.pem", cert=_server_cert(key, ca_key, ca))
        out[f"{prefix}key"] = _write_pem(base / f"{prefix}server.key", key=key)
    return Pki(**out)


# --- a scripted HTTP(S) server ------------------------------------------------------------------------------------

@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class ScriptedServer(http.server.ThreadingHTTPServer):
    """Answers each path from a script: the n-th request gets the n-th Reply, the last one repeats. Records
    every request as (monotonic time, method, path, headers, body). With a certificate, it speaks TLS."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, cert: Path | None = None, key: Path | None = None):
        super().__init__(("127.0.0.1", 0), _ScriptedHandler)
        self.scheme = "http"
        if cert is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(cert), str(key))
            self.socket = context.wrap_socket(self.socket, server_side=True)
            self.scheme = "https"
        self.scripts: dict[str, list[Reply]] = {}
        self.requests: list[tuple[float, str, str, dict, bytes]] = []
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server_address[1]}{path}"

    def hits(self, path: str) -> list[tuple[float, str, str, dict, bytes]]:
        with self._lock:
            return [r for r in self.requests if r[2] == path]

    def reply(self, method: str, path: str, headers: dict, body: bytes) -> Reply:
        with self._lock:
            self.requests.append((time.monotonic(), method, path, headers, body))
            n = sum(1 for r in self.requests if r[2] == path)
        script = self.scripts.get(path)
        if not script:
            return Reply(404, b"not found\n")
        return script[min(n, len(script)) - 1]

    def handle_error(self, request, client_address):  # a client that refuses our certificate: expected
        pass

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _ScriptedHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ScriptedServer

    def log_message(self, format, *args):
        pass

    def _answer(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        reply = self.server.reply(self.command, self.path, dict(self.headers.items()), body)
        self.send_response(reply.status)
        for name, value in {"Content-Type": "application/octet-stream", **reply.headers,
                            "Content-Length": str(len(reply.body))}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)

    do_GET = do_HEAD = do_POST = _answer


@pytest.fixture
def served(request):
    """Start ScriptedServers (plain, or TLS with a cert and key); all stopped after the test."""
    started = []

    def start(cert=None, key=None) -> ScriptedServer:
        server = ScriptedServer(cert, key)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# --- https over real TLS ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"])
def test_https_handle_from_a_server_whose_ca_is_trusted_through_a_ca_file_variable(variable, pki, served, hub_module,
                                                                                    monkeypatch):
    """A private CA is trusted the way README says (REQUESTS_CA_BUNDLE, or OpenSSL's SSL_CERT_FILE, which
    requests alone ignores), over a real TLS handshake."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.delenv(name, raising=False)
    server = served(pki.cert, pki.key)
    server.scripts["/m/wordvec.tar.gz"] = [Reply(body=hub_module.tar_bytes)]
    url = server.url("/m/wordvec.tar.gz")
    monkeypatch.setenv(variable, str(pki.ca))
    path = hubbeam.resolve(f"{url}#sha256={hub_module.archive_sha256}")
    assert (Path(path) / "saved_model.pb").read_bytes() == (hub_module.folder / "saved_model.pb").read_bytes()
    assert len(server.hits("/m/wordvec.tar.gz")) == 1


@pytest.mark.parametrize("case", ["untrusted CA", "CA not configured"])
def test_https_certificate_that_does_not_verify_is_refused_at_once(pki, served, hub_module, monkeypatch, case):
    """Not retried (a certificate does not get better), nothing downloaded, one line naming the certificate."""
    if case == "untrusted CA":
        server = served(pki.rogue_cert, pki.rogue_key)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pki.ca))  # trusts the test CA, not the rogue one
    else:
        server = served(pki.cert, pki.key)
        monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
        monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    server.scripts["/m/wordvec.tar.gz"] = [Reply(body=hub_module.tar_bytes)]
    url = server.url("/m/wordvec.tar.gz")
    with pytest.raises(FetchError) as info:
        hubbeam.resolve(url)
    message = str(info.value)
    assert "\n" not in message and url in message, message
    assert "TLS certificate does not verify (unable to get local issuer certificate)" in message, message
    assert "REQUESTS_CA_BUNDLE" in message, message
    assert server.hits("/m/wordvec.tar.gz") == []  # the handshake failed: no request was ever sent
    modules = Path(os.environ["HUBBEAM_CACHE_DIR"]) / "modules"
    assert not [p for p in modules.iterdir() if p.is_dir() and p.name != ".staging"]


# --- HTTP 429 -----------------------------------------------------------------------------------------------------

def test_http_429_is_retried_and_retry_after_is_waited_out(served, hub_module):
    """429 is transient (README): retried; the server's Retry-After is waited out, not hammered."""
    server = served()
    too_many = Reply(429, b"slow down\n", {"Retry-After": "2"})
    server.scripts["/m/wordvec.tar.gz"] = [too_many, too_many, Reply(body=hub_module.tar_bytes)]
    path = hubbeam.resolve(server.url("/m/wordvec.tar.gz"))
    assert (Path(path) / "saved_model.pb").is_file()
    times = [t for t, *_ in server.hits("/m/wordvec.tar.gz")]
    assert len(times) == 3
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(gap >= 1.9 for gap in gaps), gaps  # the server asked for 2 s; the plain back-off is < 1 s


def test_http_429_that_persists_is_one_line_after_three_attempts(served):
    """A host that keeps saying 429 ends in one line after README's 3 attempts, not an endless wait."""
    server = served()
    server.scripts["/m/busy.tar.gz"] = [Reply(429, b"slow down\n", {"Retry-After": "1"})]
    url = server.url("/m/busy.tar.gz")
    with pytest.raises(FetchError) as info:
        hubbeam.resolve(url)
    assert str(info.value) == f"could not download {url}: HTTP 429 Too Many Requests after 3 attempts"
    assert len(server.hits("/m/busy.tar.gz")) == 3


# --- HUBBEAM_LOCK_TIMEOUT ------------------------------------------------------------------------------------------

def test_lock_timeout_bounds_waiting_on_a_live_lock_holder(hub_http, monkeypatch, caplog):
    """Another live process holds the entry's kernel lock (as one that is fetching does): the resolve waits
    about HUBBEAM_LOCK_TIMEOUT, then gives up with one line naming the setting, having fetched nothing."""
    from hubbeam.hub.cache import CacheEntry
    from hubbeam.hub.kinds import parse_handle

    url = hub_http.url("/m/wordvec.tar.gz")
    entry = CacheEntry.for_location(parse_handle(url, None).location)
    entry.root.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time\n"
         "f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(120)",
         str(entry.lock_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setenv("HUBBEAM_LOCK_TIMEOUT", "3")
        start = time.monotonic()
        with caplog.at_level("WARNING"), pytest.raises(HubbeamError) as info:
            hubbeam.resolve(url)
        waited = time.monotonic() - start
    finally:
        holder.kill()
        holder.wait(30)
    message = str(info.value)
    assert message.startswith("gave up after 3s waiting for another process fetching") and "\n" not in message
    assert "HUBBEAM_LOCK_TIMEOUT" in message, message
    assert 3 <= waited < 30, waited  # the 1 s notice, then the 3 s timeout
    assert WAITING_LOG in caplog.text
    assert hub_http.count("/m/wordvec.tar.gz") == 0
    # The holder gone, the kernel freed its lock: the same resolve now goes through.
    assert (Path(hubbeam.resolve(url)) / "saved_model.pb").is_file()


# --- HUBBEAM_CONNECT_TIMEOUT ---------------------------------------------------------------------------------------

@pytest.fixture
def unanswered_port():
    """A port whose listen queue is full: the kernel drops new SYNs, so a connect hangs until its timeout
    (what a firewalled or overloaded host does), unlike a closed port, which is refused at once."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        try:
            filler.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(filler)
    time.sleep(0.2)
    probe = socket.socket()
    probe.settimeout(0.5)
    try:
        with pytest.raises(socket.timeout):
            probe.connect(("127.0.0.1", port))
    finally:
        probe.close()
    yield port
    for sock in fillers + [server]:
        sock.close()


def test_connect_timeout_bounds_an_http_host_that_never_answers(unanswered_port, monkeypatch):
    """HUBBEAM_CONNECT_TIMEOUT, not the read timeout, bounds a connect that never completes."""
    monkeypatch.setenv("HUBBEAM_CONNECT_TIMEOUT", "1")
    monkeypatch.setenv("HUBBEAM_READ_TIMEOUT", "60")
    url = f"http://127.0.0.1:{unanswered_port}/m/wordvec.tar.gz"
    start = time.monotonic()
    with pytest.raises(FetchError) as info:
        hubbeam.resolve(url)
    took = time.monotonic() - start
    message = str(info.value)
    assert message.startswith(f"could not download {url}: ") and "timed out" in message, message
    assert message.endswith("after 3 attempts") and "\n" not in message
    assert 3 <= took < 25, took  # 3 connects of 1 s and the back-off; with the default 10 s it would be 30+ s


def test_connect_timeout_bounds_an_s3_endpoint_that_never_answers(unanswered_port, s3_bucket, monkeypatch):
    """README: the connect timeout is that of every storage client, botocore's too."""
    monkeypatch.setenv("HUBBEAM_CONNECT_TIMEOUT", "1")
    monkeypatch.setenv("HUBBEAM_S3_ENDPOINT_URL", f"http://127.0.0.1:{unanswered_port}")
    start = time.monotonic()
    with pytest.raises(FetchError) as info:
        hubbeam.resolve(f"s3://{s3_bucket}/wordvec.tar.gz")
    took = time.monotonic() - start
    assert "\n" not in str(info.value) and "timeout" in str(info.value).lower(), info.value
    assert took < 25, took  # botocore's 3 attempts of 1 s each, and its back-off


# --- AWS_ENDPOINT_URL[_S3] -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("variable", ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"])
def test_botocores_own_endpoint_variables_reach_moto(s3_bucket, served, hub_module, monkeypatch, variable):
    """README: botocore's own endpoint variables work without HUBBEAM_S3_ENDPOINT_URL, also when they change
    in a process that already made an S3 client (settings are read at call time)."""
    endpoint = os.environ["HUBBEAM_S3_ENDPOINT_URL"]
    monkeypatch.delenv("HUBBEAM_S3_ENDPOINT_URL")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    # First a server that has nothing: the client made for it must not be reused once the variable says moto.
    empty = served()
    monkeypatch.setenv(variable, empty.url(""))
    with pytest.raises(FetchError, match="not found"):
        hubbeam.resolve(f"s3://{s3_bucket}/wordvec.tar.gz")
    assert empty.requests  # it was asked: the variable is honoured
    monkeypatch.setenv(variable, endpoint)
    path = hubbeam.resolve(f"s3://{s3_bucket}/wordvec.tar.gz#sha256={hub_module.archive_sha256}")
    assert (Path(path) / "saved_model.pb").is_file()
    from hubbeam import storage

    assert sorted(storage.find(f"s3://{s3_bucket}/wordvec")) == sorted(hub_module.files())


# --- GCS tokens: HUBBEAM_GCS_TOKEN and a google_cloud_platform connection ------------------------------------------

@pytest.fixture(scope="session")
def _rsa_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


@pytest.fixture
def token_server(served, _rsa_pem):
    """A local OAuth token endpoint and a service-account key whose token_uri is it: a GCS client that uses
    the key asks it for an access token (a signed JWT grant), which is how the test sees the key was used."""
    server = served()
    server.scripts["/token"] = [Reply(200, json.dumps({"access_token": "ya29.test-token", "expires_in": 3600,
                                                       "token_type": "Bearer"}).encode(),
                                      {"Content-Type": "application/json"})]
    server.key = {"type": "service_account", "project_id": "test", "private_key_id": "k1", "private_key": _rsa_pem,
                  "client_email": "hubbeam-test@test.iam.gserviceaccount.com", "client_id": "1",
                  "token_uri": server.url("/token")}
    return server


def _asked_for_token(server) -> bool:
    for _, method, _, _, body in server.hits("/token"):
        form = urllib.parse.parse_qs(body.decode())
        if method == "POST" and form.get("grant_type") == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]:
            return True
    return False


@pytest.mark.parametrize("form", ["file", "json text"])
def test_hubbeam_gcs_token_is_the_token_used_even_with_an_emulator(gcs_bucket, token_server, hub_module, tmp_path,
                                                                   monkeypatch, form):
    """With an emulator the default is anonymous access; HUBBEAM_GCS_TOKEN must still win (README)."""
    key_file = tmp_path / "sa.json"
    key_file.write_text(json.dumps(token_server.key))
    monkeypatch.setenv("HUBBEAM_GCS_TOKEN", str(key_file) if form == "file" else json.dumps(token_server.key))
    path = hubbeam.resolve(f"gs://{gcs_bucket}/wordvec.tar.gz#sha256={hub_module.archive_sha256}")
    assert (Path(path) / "saved_model.pb").is_file()
    assert _asked_for_token(token_server)


def test_hubbeam_gcs_token_naming_no_file_is_one_line_without_asking_google(gcs_bucket, tmp_path, monkeypatch):
    """gcsfs takes any other text for an access token and asks Google's tokeninfo endpoint about it (over the
    Internet, from a test or an offline worker): a path that names no file is refused before that."""
    missing = tmp_path / "no-such-key.json"
    monkeypatch.setenv("HUBBEAM_GCS_TOKEN", str(missing))
    with pytest.raises(HubbeamError) as info:
        hubbeam.resolve(f"gs://{gcs_bucket}/wordvec.tar.gz")
    assert str(info.value) == (f"GCS token file {missing} does not exist (HUBBEAM_GCS_TOKEN, or the Airflow "
                               "connection's key_path)")


def test_google_cloud_platform_airflow_connection_is_used_for_its_block_only(gcs_bucket, token_server, hub_module,
                                                                            monkeypatch):
    """README: a connection's credentials reach the storage clients of its block only, never os.environ."""
    from hubbeam import storage
    from hubbeam.orchestration.airflow_support import storage_connection

    monkeypatch.setenv("AIRFLOW_CONN_HUBBEAM_GCS", json.dumps(
        {"conn_type": "google_cloud_platform", "extra": {"keyfile_dict": token_server.key}}))
    before = dict(os.environ)
    url = f"gs://{gcs_bucket}/conn-test/hello.txt"
    with storage_connection("hubbeam_gcs"):
        storage.write_text(url, "hello")
        assert dict(os.environ) == before  # nothing written to the process environment
    assert _asked_for_token(token_server)
    asked = len(token_server.hits("/token"))
    assert storage.read_text(url) == "hello"  # outside the block: the emulator's anonymous access again
    assert len(token_server.hits("/token")) == asked
    path = None
    with storage_connection("hubbeam_gcs"):
        path = hubbeam.resolve(f"gs://{gcs_bucket}/wordvec.tar.gz#sha256={hub_module.archive_sha256}")
    assert (Path(path) / "saved_model.pb").is_file()
