"""Faults: the embedding job killed with SIGKILL and run again, storage that fails (S3 and GCS servers behind a
proxy that answers 500s or resets connections), and a publish killed half-way on S3.

Already covered elsewhere, and not repeated here: hostile archives (test_archive.py), a damaged cache entry,
a wrong pin, 8 processes resolving one handle while the downloader is killed (test_resolve.py), and a local
publish killed or failing at every step (test_publish.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.register_assert_rewrite("tests.servers")

import hubbeam  # noqa: E402
from hubbeam.errors import FetchError, HubbeamError  # noqa: E402
from hubbeam.hub.resolver import resolve_module  # noqa: E402
from hubbeam.pipeline import read_embeddings  # noqa: E402
from hubbeam.pipeline.job import EmbedJob, run_embed  # noqa: E402
from tests.servers import (GCS_BUCKET, S3_BUCKET, always, cache_state, every, first, from_nth,  # noqa: E402
                           wait_until)

pytest_plugins = ["tests.servers"]

REPO_ROOT = Path(__file__).resolve().parents[1]
WORDS = "the a cat dog sat on mat river bank money tree house blue green runs jumps over under beam hub".split()


def child_env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


# --- kill -9 the embedding job ------------------------------------------------------------------------------------

ROWS = 200_000  # ~6 s of embedding with the tiny module: long enough to be killed in the middle


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory) -> str:
    import random

    root = tmp_path_factory.mktemp("kill-corpus")
    rng = random.Random(7)
    per_file = ROWS // 4
    for part in range(4):
        with open(root / f"part-{part}.jsonl", "w") as f:
            for i in range(part * per_file, (part + 1) * per_file):
                words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12)))
                f.write(json.dumps({"id": f"r{i}", "text": f"{words} {i}"}) + "\n")
    return f"{root}/*.jsonl"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_problem(out: Path, manifest: dict) -> str | None:
    """Why this manifest does not describe the folder's shards exactly (None if it does)."""
    for kind in ("embeddings", "rejected"):
        for entry in manifest["outputs"][kind]:
            path = out / entry["file"]
            if not path.is_file():
                return f"{entry['file']} is listed but missing"
            if sha256_file(path) != entry["sha256"]:
                return f"{entry['file']} does not match its sha256"
            if pq.ParquetFile(path).metadata.num_rows != entry["rows"]:
                return f"{entry['file']} does not hold {entry['rows']} rows"
    if sum(e["rows"] for e in manifest["outputs"]["embeddings"]) != manifest["rows_embedded"]:
        return "embedding shards do not add up to rows_embedded"
    if manifest["rows_read"] != manifest["rows_embedded"] + manifest["rows_rejected"]:
        return "rows_read != rows_embedded + rows_rejected"
    return None


class OutputWatcher(threading.Thread):
    """Samples an output folder every few ms while runs come and go, and records any moment where
    _SUCCESS sits next to a staging folder or next to a manifest that does not match the shards."""

    def __init__(self, out: Path):
        super().__init__(daemon=True)
        self.out = out
        self.halt = threading.Event()
        self.violations: list[str] = []
        self.verified: set[str] = set()  # run ids whose finished output was checked
        self.running_without_success = 0  # samples of a run in progress with _SUCCESS withdrawn

    def staging(self) -> bool:
        return any(p.name.startswith(".staging-") for p in self.out.iterdir()) if self.out.exists() else False

    def success(self) -> bool:
        return (self.out / "_SUCCESS").exists()

    def sample(self):
        if self.staging():
            if not self.success():
                self.running_without_success += 1
            elif self.staging():  # staging, _SUCCESS, staging: all at once
                self.violations.append("_SUCCESS while a run's staging folder exists")
        if self.success():
            try:
                manifest = json.loads((self.out / "manifest.json").read_text())
                if manifest["run_id"] in self.verified:
                    return
                problem = manifest_problem(self.out, manifest)
            except (OSError, ValueError, KeyError) as exc:
                problem = f"manifest unreadable next to _SUCCESS: {exc!r}"
            if problem is None:
                self.verified.add(manifest["run_id"])
            elif self.success():  # not just withdrawn by a new run while we looked
                self.violations.append(problem)

    def run(self):
        while not self.halt.is_set():
            self.sample()
            time.sleep(0.01)

    def stop(self):
        self.halt.set()
        self.join(10)


def embed_process(pattern: str, out: Path, module: Path, log: Path) -> subprocess.Popen:
    with open(log, "wb") as f:
        return subprocess.Popen([sys.executable, "-m", "hubbeam", "embed", "--input", pattern, "--output", str(out),
                                 "--module", str(module)], stdout=f, stderr=subprocess.STDOUT, env=child_env())


@pytest.mark.timeout(300)
def test_killed_run_then_rerun_leaves_complete_output(tmp_path, big_corpus, tiny_wordvec_module):
    out = tmp_path / "out"
    # A finished earlier run of other rows, in 3 shards: the reruns must withdraw it, then replace it.
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "old.jsonl").write_text("".join(json.dumps({"id": f"old{i}", "text": "the cat"}) + "\n"
                                                        for i in range(300)))
    old = run_embed(EmbedJob(input=str(tmp_path / "old" / "*.jsonl"), output=str(out), module=str(tiny_wordvec_module),
                             num_shards=3))
    old_files = {e["file"] for e in old["outputs"]["embeddings"]}
    assert len(old_files) == 3 and (out / "_SUCCESS").exists()

    watcher = OutputWatcher(out)
    watcher.start()
    try:
        killed = embed_process(big_corpus, out, tiny_wordvec_module, tmp_path / "killed.log")
        try:
            # Mid-run: the first shard of the new run is being written under .staging-RUN/.
            wait_until(lambda: any(p.is_file() for s in out.glob(".staging-*") for p in s.rglob("*"))
                       or killed.poll() is not None, 120, "the run to start writing shards")
            assert killed.poll() is None, f"ended before it could be killed: {(tmp_path / 'killed.log').read_text()}"
            assert not (out / "_SUCCESS").exists(), "a rerun in progress must have withdrawn the old _SUCCESS"
            killed.send_signal(signal.SIGKILL)
            assert killed.wait(30) == -signal.SIGKILL
        finally:
            if killed.poll() is None:
                killed.kill()
        assert not (out / "_SUCCESS").exists() and not (out / "manifest.json").exists()
        assert list(out.glob(".staging-*")), "the dead run should have left a staging folder to sweep"
        with pytest.raises(HubbeamError, match="no finished hubbeam run"):
            read_embeddings(str(out))

        rerun = embed_process(big_corpus, out, tiny_wordvec_module, tmp_path / "rerun.log")
        assert rerun.wait(240) == 0, (tmp_path / "rerun.log").read_text()[-3000:]
        watcher.sample()
    finally:
        watcher.stop()

    assert watcher.violations == []
    assert watcher.running_without_success > 0, "the watcher never saw a run in progress"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["run_id"] in watcher.verified
    assert manifest_problem(out, manifest) is None
    assert manifest["rows_read"] == manifest["rows_embedded"] == ROWS and manifest["rows_rejected"] == 0
    assert manifest["duplicate_ids"] == 0
    ids, matrix = read_embeddings(str(out))
    assert len(ids) == len(set(ids)) == ROWS and set(ids) == {f"r{i}" for i in range(ROWS)}
    assert matrix.shape == (ROWS, 4) and np.isfinite(matrix).all()
    listed = {e["file"] for kind in ("embeddings", "rejected") for e in manifest["outputs"][kind]}
    assert not old_files & listed
    assert {p.name for p in out.iterdir()} == listed | {"manifest.json", "_SUCCESS"}, "leftovers in the output"


# --- storage that fails: S3 (moto) and GCS (emulator) behind a fault-injecting proxy -------------------------------

def assert_nothing_installed(cache_dir: Path):
    state = cache_state(cache_dir)
    assert state["entries"] == [] and state["staging"] == [], state


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("HUBBEAM_CACHE_DIR", str(path))
    return path


@pytest.mark.parametrize("name, what", [("wordvec", 500), ("wordvec", "reset"), ("wordvec.tar.gz", 503),
                                        ("wordvec.tar.gz", "reset")])
def test_s3_failing_for_a_while_is_retried(s3_proxy, hub_module, hub_reference, cache_dir, name, what):
    s3_proxy.fault = first(2, what)
    resolved = resolve_module(f"s3://{S3_BUCKET}/{name}")
    assert s3_proxy.faults == 2 and s3_proxy.requests > 2
    assert s3_proxy.log[0][2] == s3_proxy.log[2][2], "the failed request was not retried"
    assert resolved.sha256 == hub_module.tree_sha256
    np.testing.assert_array_equal(hubbeam.load(str(resolved.path))(["the cat", "a dog"]), hub_reference[:2])


@pytest.mark.parametrize("name, what", [("wordvec", 500), ("wordvec.tar.gz", 500), ("wordvec", "reset")])
def test_s3_failing_for_good_is_a_clear_error(s3_proxy, cache_dir, name, what):
    s3_proxy.fault = always(what)
    started = time.monotonic()
    with pytest.raises(FetchError) as info:
        resolve_module(f"s3://{S3_BUCKET}/{name}")
    assert time.monotonic() - started < 30
    assert f"s3://{S3_BUCKET}/{name}" in str(info.value)
    assert 2 <= s3_proxy.requests <= 20, "retried, but within bounds"
    assert_nothing_installed(cache_dir)


def test_s3_one_object_failing_installs_nothing(s3_proxy, cache_dir):
    """The listing works and most files download, but one object keeps failing: no partial module."""
    s3_proxy.fault = always(500, match="variables.data")
    with pytest.raises(FetchError, match="variables.data"):
        resolve_module(f"s3://{S3_BUCKET}/wordvec")
    assert any(what == "forwarded" and path.endswith("saved_model.pb") for _, _, path, what in s3_proxy.log)
    assert_nothing_installed(cache_dir)


@pytest.mark.parametrize("name", ["wordvec", "wordvec.tar.gz"])
def test_gcs_failing_for_a_while_is_retried(gcs_proxy, hub_module, cache_dir, name):
    gcs_proxy.fault = first(2, 503)
    resolved = resolve_module(f"gs://{GCS_BUCKET}/{name}")
    assert gcs_proxy.faults == 2
    assert resolved.sha256 == hub_module.tree_sha256


@pytest.mark.long
@pytest.mark.parametrize("name", ["wordvec", "wordvec.tar.gz"])
def test_gcs_failing_for_good_is_a_clear_error(gcs_proxy, cache_dir, name):
    """gcsfs retries 6 times with exponential back-off (about 35 s) before giving up: a long test."""
    gcs_proxy.fault = always(500)
    started = time.monotonic()
    with pytest.raises(FetchError) as info:
        resolve_module(f"gs://{GCS_BUCKET}/{name}")
    assert time.monotonic() - started < 120
    assert f"gs://{GCS_BUCKET}/{name}" in str(info.value)
    assert_nothing_installed(cache_dir)


# --- publishing to failing storage ---------------------------------------------------------------------------------

SENTENCES = ["the cat sat", "mat , the", "zebra"]


def s3_client(proxy):
    import boto3

    return boto3.client("s3", endpoint_url=proxy.upstream_url, region_name="us-east-1")


def s3_keys(proxy, prefix: str) -> list[str]:
    """Objects under prefix, asked of moto directly (not through the faults)."""
    listing = s3_client(proxy).list_objects_v2(Bucket=S3_BUCKET, Prefix=prefix)
    return sorted(o["Key"] for o in listing.get("Contents", []))


def assert_published_and_loads(result, module: Path):
    reference = hubbeam.load(str(module))(SENTENCES)
    for handle in (result.folder_handle, f"{result.archive_handle}#sha256={result.archive_sha256}"):
        np.testing.assert_array_equal(hubbeam.load(handle)(SENTENCES), reference)


def test_publish_through_flaky_s3_succeeds(s3_proxy, tiny_wordvec_module, cache_dir):
    from hubbeam.export import publish

    s3_proxy.fault = every(3, 500)
    result = publish(tiny_wordvec_module, f"s3://{S3_BUCKET}/flaky")
    assert s3_proxy.faults >= 3
    s3_proxy.fault = lambda n, method, path: None
    assert "flaky/wordvec/1/_PUBLISHED.json" in s3_keys(s3_proxy, "flaky/")
    assert_published_and_loads(result, tiny_wordvec_module)


def test_publish_through_flaky_gcs_succeeds(gcs_proxy, tiny_wordvec_module, cache_dir):
    from hubbeam.export import publish
    from hubbeam.export.publishing import published_version

    gcs_proxy.fault = every(6, 503)
    result = publish(tiny_wordvec_module, f"gs://{GCS_BUCKET}/flaky")
    assert gcs_proxy.faults >= 2
    gcs_proxy.fault = lambda n, method, path: None
    assert published_version(f"gs://{GCS_BUCKET}/flaky", "wordvec", "1")["tree_sha256"] == result.tree_sha256
    assert_published_and_loads(result, tiny_wordvec_module)


def test_publish_to_s3_going_down_half_way_publishes_nothing_and_the_retry_succeeds(s3_proxy, tiny_wordvec_module,
                                                                                   cache_dir):
    from hubbeam.export import publish
    from hubbeam.export.publishing import published_version

    dest = f"s3://{S3_BUCKET}/down"
    s3_proxy.fault = from_nth(4, 500, method_only="PUT")  # 3 uploads go through, then the store fails for good
    started = time.monotonic()
    with pytest.raises(HubbeamError) as info:
        publish(tiny_wordvec_module, dest)
    assert time.monotonic() - started < 60
    assert f"cannot publish to {dest}/wordvec/1" in str(info.value) and "\n" not in str(info.value)
    keys = s3_keys(s3_proxy, "down/")
    assert "down/wordvec/1/_PUBLISHED.json" not in keys
    s3_proxy.fault = lambda n, method, path: None
    assert published_version(dest, "wordvec", "1") is None
    assert keys == [], f"the failed publish should have removed what it wrote: {keys}"

    retry = publish(tiny_wordvec_module, dest)
    assert not retry.replaced
    assert_published_and_loads(retry, tiny_wordvec_module)


PUBLISH_CHILD = r"""
import sys
from hubbeam.cli import main
sys.exit(main(["publish", sys.argv[1], sys.argv[2]]))
"""


@pytest.mark.timeout(180)
def test_publish_to_s3_killed_half_way_publishes_nothing_and_the_retry_succeeds(s3_proxy, tiny_wordvec_module,
                                                                              cache_dir, tmp_path):
    from hubbeam.export import publish
    from hubbeam.export.publishing import published_version

    dest = f"s3://{S3_BUCKET}/killed"
    s3_proxy.fault = from_nth(5, "hold", method_only="PUT")  # the 5th upload hangs until the process is killed
    log = tmp_path / "publish.log"
    with open(log, "wb") as f:
        child = subprocess.Popen([sys.executable, "-c", PUBLISH_CHILD, str(tiny_wordvec_module), dest],
                                 stdout=f, stderr=subprocess.STDOUT, env=child_env())
    try:
        wait_until(lambda: s3_proxy.held.is_set() or child.poll() is not None, 120, "the publish to reach upload 5")
        assert child.poll() is None, log.read_text()
        written = s3_keys(s3_proxy, "killed/")
        assert len(written) == 4 and not any(k.endswith("_PUBLISHED.json") for k in written), written
        child.send_signal(signal.SIGKILL)
        assert child.wait(30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
        s3_proxy.release.set()
    s3_proxy.fault = lambda n, method, path: None
    assert published_version(dest, "wordvec", "1") is None
    assert s3_keys(s3_proxy, "killed/") == written, "what the dead publish wrote stays, without a marker"
    with pytest.raises(HubbeamError, match="saved_model.pb"):  # the half-written folder is not a module a consumer could load
        resolve_module(f"{dest}/wordvec/1/saved_model")

    retry = publish(tiny_wordvec_module, dest)
    assert retry.cleaned and not retry.replaced
    assert "killed/wordvec/1/_PUBLISHED.json" in s3_keys(s3_proxy, "killed/")
    assert_published_and_loads(retry, tiny_wordvec_module)
