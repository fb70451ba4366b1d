"""hubbeam.resolve against real servers on 127.0.0.1: HTTP, S3 (moto), GCS (emulator), pins, the cache.

Nothing here is mocked: the module is a real SavedModel, served by real servers, fetched by the real clients
(requests, s3fs, gcsfs) and loaded by TensorFlow; the concurrency tests run real processes sharing one cache.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.register_assert_rewrite("tests.servers")

import hubbeam  # noqa: E402
from hubbeam.errors import FetchError, HandleError, IntegrityError, ModuleFormatError
from hubbeam.hub.cache import MARKER  # noqa: E402
from hubbeam.hub.resolver import resolve_module  # noqa: E402
from tests.servers import SENTENCES, WAITING_LOG, cache_state, closed_port, embed, wait_until  # noqa: E402

pytest_plugins = ["tests.servers"]

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch) -> Path:
    """A fresh, empty module cache for every test."""
    path = tmp_path / "cache"
    monkeypatch.setenv("HUBBEAM_CACHE_DIR", str(path))
    return path


def assert_nothing_installed(cache_dir: Path):
    state = cache_state(cache_dir)
    assert state["entries"] == [], f"a cache entry was installed: {state}"
    assert state["staging"] == [], f"staging was not cleaned up: {state}"


def assert_same_embeddings(handle: str, reference, **kwargs):
    got = embed(handle, **kwargs)
    assert got.dtype == np.float32 and got.shape == (len(SENTENCES), 3)
    np.testing.assert_array_equal(got, reference)


# --- handles ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("handle", ["ftp://x", "ftp://example.com/m.tar.gz", "hdfs://nn/models/m"])
def test_unsupported_scheme_is_a_handle_error(handle):
    with pytest.raises(HandleError, match="unsupported handle scheme"):
        hubbeam.resolve(handle)


@pytest.mark.parametrize(
    "handle, kwargs",
    [
        ("https://h.example/m.tar.gz#sha256=abc", {}),
        ("https://h.example/m.tar.gz#sha256=" + "g" * 64, {}),
        ("https://h.example/m.tar.gz#md5=" + "0" * 32, {}),
        ("https://h.example/m.tar.gz", {"sha256": "not-hex"}),
        ("https://h.example/m.tar.gz#sha256=" + "a" * 64, {"sha256": "b" * 64}),  # conflicting pins
    ],
)
def test_malformed_or_conflicting_pin_is_a_handle_error(handle, kwargs):
    with pytest.raises(HandleError):
        hubbeam.resolve(handle, **kwargs)


def test_missing_local_path_is_a_handle_error(tmp_path):
    for handle in (str(tmp_path / "nope"), str(tmp_path / "nope.tar.gz"), f"file://{tmp_path}/nope"):
        with pytest.raises(HandleError, match="no such module folder or archive"):
            hubbeam.resolve(handle)


def test_local_folder_is_used_in_place(hub_module):
    resolved = resolve_module(str(hub_module.folder))
    assert resolved.path == hub_module.folder.resolve()
    assert resolved.sha256 == hub_module.tree_sha256
    assert hubbeam.resolve(f"file://{hub_module.folder}") == str(hub_module.folder.resolve())


def test_a_pinned_cache_entry_changed_in_place_is_fetched_again(hub_module):
    """The cache marker's file sizes catch a truncated entry, not a byte changed in place; a pin does: a pinned
    handle's entry is re-hashed once per process (here: each CLI process) and fetched again if it changed."""
    from tests.cli import hubbeam_cli

    handle = f"{hub_module.tarball}#sha256={hub_module.archive_sha256}"
    resolved = resolve_module(handle)
    weights = next(p for p in sorted((resolved.path / "variables").iterdir()) if p.name.startswith("variables.data"))
    original = weights.read_bytes()
    weights.write_bytes(bytes([original[0] ^ 0xFF]) + original[1:])  # same size, other content

    unpinned = hubbeam_cli("resolve", str(hub_module.tarball))
    assert unpinned.returncode == 0 and weights.read_bytes() != original, "without a pin, sizes are all that is checked"
    pinned = hubbeam_cli("resolve", handle)
    assert pinned.returncode == 0, pinned.stderr[-2000:]
    assert "(or changed on disk); fetching it again" in pinned.stderr
    assert weights.read_bytes() == original
    assert resolve_module(f"{hub_module.tarball}#sha256={hub_module.tree_sha256}").sha256 == hub_module.tree_sha256


# --- HTTP ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "path, served",
    [
        ("/m/wordvec.tar.gz", "/m/wordvec.tar.gz"),
        ("/m/wordvec?tf-hub-format=compressed", "/m/wordvec?tf-hub-format=compressed"),
        ("/m/wordvec", "/m/wordvec?tf-hub-format=compressed"),  # the query is appended, TF Hub style
    ],
)
def test_http_handles_resolve_and_load(hub_http, hub_module, hub_reference, cache_dir, path, served):
    url = hub_http.url(path)
    resolved = resolve_module(url)
    assert resolved.path.is_relative_to(cache_dir)
    assert (resolved.path / "saved_model.pb").is_file()
    assert resolved.archive_sha256 == hub_module.archive_sha256
    assert resolved.sha256 == hub_module.tree_sha256
    assert hub_http.count(served) == 1
    # Loading resolves again: served from the cache, not downloaded a second time.
    assert_same_embeddings(url, hub_reference)
    assert hubbeam.resolve(url) == str(resolved.path)
    assert hub_http.count(served) == 1
    assert cache_state(cache_dir)["staging"] == []


def test_http_404_fails_at_once(hub_http, cache_dir):
    start = time.monotonic()
    with pytest.raises(FetchError, match="404"):
        hubbeam.resolve(hub_http.url("/m/missing.tar.gz"))
    assert time.monotonic() - start < 5
    assert hub_http.count("/m/missing.tar.gz") == 1  # a 4xx is not retried
    assert_nothing_installed(cache_dir)


def test_http_5xx_is_retried_then_fails(hub_http, cache_dir):
    start = time.monotonic()
    with pytest.raises(FetchError, match="500"):
        hubbeam.resolve(hub_http.url("/m/broken.tar.gz"))
    assert time.monotonic() - start < 10
    assert hub_http.count("/m/broken.tar.gz") == 3
    assert_nothing_installed(cache_dir)


def test_http_truncated_body_is_a_fetch_error_and_leaves_nothing(hub_http, cache_dir):
    with pytest.raises(FetchError) as info:
        hubbeam.resolve(hub_http.url("/m/truncated.tar.gz"))
    assert "truncated" in str(info.value) or "interrupted" in str(info.value)
    assert hub_http.count("/m/truncated.tar.gz") >= 1
    assert_nothing_installed(cache_dir)


def test_http_stalled_body_times_out(hub_http, cache_dir, monkeypatch):
    monkeypatch.setenv("HUBBEAM_READ_TIMEOUT", "0.5")
    start = time.monotonic()
    with pytest.raises(FetchError, match="timed out"):
        hubbeam.resolve(hub_http.url("/m/stalled.tar.gz"))
    assert time.monotonic() - start < 10
    assert hub_http.count("/m/stalled.tar.gz") == 3
    assert_nothing_installed(cache_dir)


def test_http_unreachable_host_fails_fast(cache_dir):
    url = f"http://127.0.0.1:{closed_port()}/m/wordvec.tar.gz"
    start = time.monotonic()
    with pytest.raises(FetchError, match="could not download"):
        hubbeam.resolve(url)
    assert time.monotonic() - start < 10
    assert_nothing_installed(cache_dir)


def test_http_credentials_are_not_recorded(hub_http, hub_module, cache_dir):
    url = hub_http.url("/m/wordvec.tar.gz").replace("http://", "http://user:secret@")
    resolved = resolve_module(url)
    assert "secret" not in resolved.handle
    assert "secret" not in (resolved.path / MARKER).read_text()
    assert resolved.sha256 == hub_module.tree_sha256


# --- pins ---------------------------------------------------------------------------------------------------------

def test_archive_and_tree_pins_are_accepted(hub_http, hub_module, cache_dir):
    url = hub_http.url("/m/wordvec.tar.gz")
    by_archive = resolve_module(f"{url}#sha256={hub_module.archive_sha256}")
    assert by_archive.sha256 == hub_module.tree_sha256
    by_tree = resolve_module(url, sha256=hub_module.tree_sha256)
    assert by_tree.path == by_archive.path
    by_prefixed = resolve_module(f"{url}#sha256=sha256:{hub_module.tree_sha256.upper()}")
    assert by_prefixed.path == by_archive.path
    assert hub_http.count("/m/wordvec.tar.gz") == 1  # the pinned lookups were served by the cache


def test_tree_pin_on_the_compressed_url_form(hub_http, hub_module, hub_reference):
    url = hub_http.url("/m/wordvec") + f"#sha256={hub_module.tree_sha256}"
    assert_same_embeddings(url, hub_reference)


def test_wrong_pin_installs_nothing(hub_http, hub_module, cache_dir):
    wrong = "0" * 64
    with pytest.raises(IntegrityError, match="sha256 mismatch") as info:
        hubbeam.resolve(hub_http.url(f"/m/wordvec.tar.gz#sha256={wrong}"))
    assert hub_module.archive_sha256 in str(info.value)  # says what was found
    assert_nothing_installed(cache_dir)

    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        hubbeam.resolve(str(hub_module.tarball), sha256=wrong)
    assert_nothing_installed(cache_dir)


def test_wrong_pin_against_a_cached_entry(hub_http, hub_module, cache_dir):
    url = hub_http.url("/m/wordvec.tar.gz")
    path = hubbeam.resolve(url)
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        hubbeam.resolve(url, sha256="f" * 64)
    assert hub_http.count("/m/wordvec.tar.gz") == 2  # a mismatching pin makes it check the source again
    # The good entry is still there and still served without a download.
    assert hubbeam.resolve(url, sha256=hub_module.archive_sha256) == path
    assert hub_http.count("/m/wordvec.tar.gz") == 2
    assert cache_state(cache_dir)["staging"] == []


def test_local_folder_pin(hub_module):
    folder = str(hub_module.folder)
    assert hubbeam.resolve(folder, sha256=hub_module.tree_sha256) == str(hub_module.folder.resolve())
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        hubbeam.resolve(folder, sha256="1" * 64)
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        # The archive digest names the tarball, not the folder: it is not a valid pin for the folder.
        hubbeam.resolve(f"{folder}#sha256={hub_module.archive_sha256}")


def test_local_tarball_resolves_with_both_pins(hub_module, hub_reference, cache_dir):
    resolved = resolve_module(str(hub_module.tarball), sha256=hub_module.archive_sha256)
    assert resolved.path.is_relative_to(cache_dir)
    assert resolved.sha256 == hub_module.tree_sha256
    assert resolve_module(f"{hub_module.tarball}#sha256={hub_module.tree_sha256}").path == resolved.path
    assert_same_embeddings(str(hub_module.tarball), hub_reference)


# --- cache integrity ----------------------------------------------------------------------------------------------

def _delete_index(entry: Path):
    (entry / "variables" / "variables.index").unlink()


def _truncate_variables(entry: Path):
    data_file = next((entry / "variables").glob("variables.data-*"))
    data_file.write_bytes(data_file.read_bytes()[:-1])


def _delete_marker(entry: Path):
    (entry / MARKER).unlink()


@pytest.mark.parametrize("damage", [_delete_index, _truncate_variables, _delete_marker])
def test_damaged_cache_entry_is_fetched_again(hub_http, hub_module, hub_reference, cache_dir, damage, caplog):
    url = hub_http.url("/m/wordvec.tar.gz")
    entry = Path(hubbeam.resolve(url))
    assert hub_http.count("/m/wordvec.tar.gz") == 1
    damage(entry)
    with caplog.at_level("WARNING", logger="hubbeam"):
        again = resolve_module(url)
    assert again.path == entry
    assert hub_http.count("/m/wordvec.tar.gz") == 2
    assert "incomplete or stale" in caplog.text
    assert again.sha256 == hub_module.tree_sha256
    assert (entry / "variables" / "variables.index").is_file()
    assert_same_embeddings(url, hub_reference)
    assert hub_http.count("/m/wordvec.tar.gz") == 2
    state = cache_state(cache_dir)
    assert state["entries"] == [entry.name] and state["staging"] == []


# --- S3 (moto) and GCS (emulator) ---------------------------------------------------------------------------------

STORES = ["s3", "gs"]


@pytest.fixture
def store(request):
    """The bucket of the object store named by the test's `scheme` parameter, environment pointed at it."""
    scheme = request.param
    bucket = request.getfixturevalue("s3_bucket" if scheme == "s3" else "gcs_bucket")
    return f"{scheme}://{bucket}"


@pytest.mark.parametrize("store", STORES, indirect=True)
def test_object_store_folder_and_tarball(store, hub_module, hub_reference, cache_dir):
    folder = resolve_module(f"{store}/wordvec")
    tarball = resolve_module(f"{store}/wordvec.tar.gz")
    assert folder.path != tarball.path
    for resolved in (folder, tarball):
        assert resolved.path.is_relative_to(cache_dir)
        assert (resolved.path / "variables" / "variables.index").is_file()
    # Same module shipped two ways: one tree digest, equal to the local folder's.
    assert folder.sha256 == tarball.sha256 == hub_module.tree_sha256
    assert tarball.archive_sha256 == hub_module.archive_sha256
    assert folder.archive_sha256 is None
    # The folder fetch took exactly the folder: not the sibling wordvec.tar.gz, not the marker of another entry.
    assert sorted(p.relative_to(folder.path).as_posix() for p in folder.path.rglob("*") if p.is_file()) == sorted(
        [*hub_module.files(), MARKER]
    )
    assert_same_embeddings(f"{store}/wordvec", hub_reference)
    assert_same_embeddings(f"{store}/wordvec.tar.gz#sha256={hub_module.archive_sha256}", hub_reference)
    assert cache_state(cache_dir)["staging"] == []


@pytest.mark.parametrize("store", STORES, indirect=True)
def test_object_store_folder_with_trailing_slash_and_tree_pin(store, hub_module, cache_dir):
    plain = resolve_module(f"{store}/wordvec")
    slashed = resolve_module(f"{store}/wordvec/", sha256=hub_module.tree_sha256)
    assert slashed.path == plain.path  # one cache entry for both spellings
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        resolve_module(f"{store}/wordvec.tar.gz", sha256="2" * 64)
    assert cache_state(cache_dir)["entries"] == [plain.path.name]


def test_s3_nested_prefix(s3_bucket, hub_module):
    assert resolve_module(f"s3://{s3_bucket}/nested/deeper/wordvec").sha256 == hub_module.tree_sha256


@pytest.mark.parametrize("store", STORES, indirect=True)
@pytest.mark.parametrize(
    "path",
    ["missing.tar.gz", "missing-folder", "wordvec/missing.tar.gz"],
)
def test_object_store_missing_object(store, path, cache_dir):
    start = time.monotonic()
    with pytest.raises(FetchError, match="not found"):
        hubbeam.resolve(f"{store}/{path}")
    assert time.monotonic() - start < 10
    assert_nothing_installed(cache_dir)


@pytest.mark.parametrize("scheme, fixture", [("s3", "s3_bucket"), ("gs", "gcs_bucket")])
@pytest.mark.parametrize("path", ["wordvec.tar.gz", "wordvec"])
def test_object_store_missing_bucket(request, scheme, fixture, path, cache_dir):
    request.getfixturevalue(fixture)
    start = time.monotonic()
    with pytest.raises(FetchError, match="not found"):
        hubbeam.resolve(f"{scheme}://no-such-bucket-here/{path}")
    assert time.monotonic() - start < 10
    assert_nothing_installed(cache_dir)


@pytest.mark.parametrize("store", STORES, indirect=True)
def test_object_store_folder_that_is_not_a_module(store, cache_dir):
    with pytest.raises(ModuleFormatError, match="not a SavedModel"):
        hubbeam.resolve(f"{store}/not-a-module")
    assert_nothing_installed(cache_dir)


# --- several processes, one cache ---------------------------------------------------------------------------------

CHILD = r"""
import json, logging, sys
logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s", stream=sys.stderr)
import hubbeam
path = hubbeam.resolve(sys.argv[1])
print(json.dumps({"path": path, "tensorflow": "tensorflow" in sys.modules}), flush=True)
"""


class Child:
    """One `python -c CHILD handle` process, stdout/stderr to files so the test can watch them live."""

    def __init__(self, handle: str, workdir: Path, name: str):
        self.out = workdir / f"{name}.out"
        self.err = workdir / f"{name}.err"
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-c", CHILD, handle], stdout=out, stderr=err,
                                         env=env, cwd=str(workdir))

    def is_waiting_for_lock(self) -> bool:
        return WAITING_LOG in self.err.read_text(errors="replace")

    def result(self, timeout: float) -> dict:
        rc = self.proc.wait(timeout=timeout)
        assert rc == 0, f"child exited {rc}: {self.err.read_text(errors='replace')[-2000:]}"
        return json.loads(self.out.read_text().strip().splitlines()[-1])

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def children(tmp_path):
    made: list[Child] = []
    workdir = tmp_path / "children"
    workdir.mkdir()

    def start(handle: str, name: str) -> Child:
        child = Child(handle, workdir, name)
        made.append(child)
        return child

    yield start
    for child in made:
        child.kill()


@pytest.mark.timeout(120)
def test_eight_processes_download_once(hub_http, hub_module, hub_reference, cache_dir, children):
    # The first download is held after its first chunk until the other seven are seen waiting on the lock,
    # so all eight really overlap.
    path = "/m/held/wordvec.tar.gz"
    route = hub_http.add(path, body=hub_module.tar_bytes, mode="slow", chunks=10, delay=0.02,
                         hold_first=threading.Event())
    url = hub_http.url(path)
    procs = [children(url, f"p{i}") for i in range(8)]
    wait_until(route.started.is_set, 60, "the first download to start")
    wait_until(lambda: sum(c.is_waiting_for_lock() for c in procs) == 7, 60, "seven processes waiting on the lock")
    assert hub_http.count(path) == 1
    route.hold_first.set()

    results = [c.result(timeout=60) for c in procs]
    paths = {r["path"] for r in results}
    assert len(paths) == 1, paths
    assert not any(r["tensorflow"] for r in results), "resolving imported TensorFlow"
    assert hub_http.count(path) == 1
    (entry,) = paths
    assert Path(entry).is_relative_to(cache_dir)
    assert hubbeam.resolve(url) == entry
    assert_same_embeddings(url, hub_reference)
    assert hub_http.count(path) == 1
    assert cache_state(cache_dir)["staging"] == []


@pytest.mark.timeout(120)
def test_killed_downloader_is_taken_over(hub_http, hub_module, hub_reference, cache_dir, children):
    path = "/m/slow/wordvec.tar.gz"
    route = hub_http.add(path, body=hub_module.tar_bytes, mode="slow", chunks=20, delay=0.2,
                         hold_first=threading.Event())
    url = hub_http.url(path)
    a = children(url, "a")
    wait_until(route.started.is_set, 60, "the server to start sending to process A")
    others = [children(url, f"w{i}") for i in range(7)]
    wait_until(lambda: all(c.is_waiting_for_lock() for c in others), 60, "seven processes waiting on A's lock")
    assert a.proc.poll() is None, "A finished before it could be killed"
    staging = cache_dir / "modules" / ".staging"
    assert any(staging.iterdir()), "A left no download in progress to clean up"

    a.proc.send_signal(signal.SIGKILL)
    assert a.proc.wait(timeout=10) == -signal.SIGKILL
    killed_at = time.monotonic()
    route.hold_first.set()  # let the server thread notice that A is gone

    results = [c.result(timeout=max(1.0, 30 - (time.monotonic() - killed_at))) for c in others]
    assert time.monotonic() - killed_at < 30
    paths = {r["path"] for r in results}
    assert len(paths) == 1, paths
    assert not any(r["tensorflow"] for r in results), "resolving imported TensorFlow"
    assert hub_http.count(path) == 2  # A's, cut off, and one by whoever took over
    (entry,) = paths
    resolved = resolve_module(url)
    assert str(resolved.path) == entry
    assert resolved.sha256 == hub_module.tree_sha256
    assert_same_embeddings(url, hub_reference)
    assert hub_http.count(path) == 2
    state = cache_state(cache_dir)
    assert state["entries"] == [Path(entry).name]
    assert state["staging"] == [], "A's partial download was not swept"
