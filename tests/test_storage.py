"""hubbeam.storage, the one storage layer: the same operations on a local folder, moto S3 and the GCS emulator;
credentials that stay in their block; and a guard that no other module reaches storage on its own."""
import ast
import json
import os
import threading
import uuid
from pathlib import Path

import pytest

from hubbeam import storage
from hubbeam.errors import HubbeamError, StorageError

pytest_plugins = ["tests.servers"]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["local", "s3", "gs"])
def base(request, tmp_path):
    """An empty place on each kind of store."""
    if request.param == "local":
        return str(tmp_path / "store")
    bucket = request.getfixturevalue("s3_bucket" if request.param == "s3" else "gcs_bucket")
    return f"{request.param}://{bucket}/storage-test-{uuid.uuid4().hex[:8]}"


def test_the_same_operations_work_on_every_store(base, tmp_path):
    doc = storage.join(base, "a", "doc.json")
    assert not storage.exists(doc) and storage.read_json(doc) is None
    storage.write_json(doc, {"x": 1})
    assert storage.exists(doc) and storage.read_json(doc) == {"x": 1}
    storage.write_bytes(storage.join(base, "b", "c", "blob.bin"), b"\x00" * 5)
    with storage.open(storage.join(base, "b", "stream.txt"), "wb") as f:
        f.write(b"streamed")
    assert storage.read_text(storage.join(base, "b", "stream.txt")) == "streamed"
    assert storage.list_dirs(base) == ["a", "b"]
    assert storage.find(base) == {"a/doc.json": 13, "b/c/blob.bin": 5, "b/stream.txt": 8}
    assert list(storage.list_files(storage.join(base, "b"))) == [storage.join(base, "b", "c", "blob.bin"),
                                                                  storage.join(base, "b", "stream.txt")]
    storage.move(storage.join(base, "b", "stream.txt"), storage.join(base, "moved.txt"))
    assert storage.find(base) == {"a/doc.json": 13, "b/c/blob.bin": 5, "moved.txt": 8}
    with storage.local_file(storage.join(base, "moved.txt")) as local:
        assert local.read_bytes() == b"streamed"

    # A folder built locally replaces the target only when the block succeeds.
    target = storage.join(base, "built")
    with storage.staged_folder(target) as staging:
        (staging / "sub").mkdir()
        (staging / "sub" / "f.txt").write_text("one")
    assert storage.find(target) == {"sub/f.txt": 3}
    with pytest.raises(RuntimeError), storage.staged_folder(target) as staging:
        (staging / "other.txt").write_text("half")
        raise RuntimeError("the build failed")
    assert storage.find(target) == {"sub/f.txt": 3}
    with storage.local_folder(target) as folder:
        assert (folder / "sub" / "f.txt").read_text() == "one"
    downloaded = tmp_path / "down"
    assert storage.download_folder(target, downloaded) == {"sub/f.txt": 3}

    storage.remove(storage.join(base, "b"))
    storage.remove(storage.join(base, "b"))  # nothing there: fine
    assert storage.find(base) == {"a/doc.json": 13, "built/sub/f.txt": 3, "moved.txt": 8}
    with pytest.raises(StorageError, match="not found"):
        storage.read_bytes(storage.join(base, "missing.bin"))


@pytest.mark.parametrize("url, message", [
    ("", "empty path"),
    ("ftp://host/x", "unsupported storage URL"),
    ("s3://", "expected s3://BUCKET/PREFIX"),
    ("s3://key:secret@bucket/x", "expected s3://BUCKET/PREFIX"),
    ("file://otherhost/x", "file:///ABSOLUTE/PATH"),
])
def test_bad_locations_are_refused_with_one_line(url, message):
    with pytest.raises(HubbeamError, match=message) as info:
        storage.location(url)
    assert "\n" not in str(info.value) and "secret" not in str(info.value)


def test_local_spellings_are_one_place(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plain, as_url, relative = (storage.location(str(tmp_path / "x")), storage.location(f"file://{tmp_path}/x"),
                               storage.location("x"))
    assert plain.path == as_url.path == relative.path == str(tmp_path / "x")
    assert as_url.url == f"file://{tmp_path}/x" and plain.url == str(tmp_path / "x")
    assert storage.location("s3://bucket/a/b/").url == "s3://bucket/a/b"


def test_connection_credentials_reach_only_their_own_block(s3_bucket, monkeypatch):
    """The credentials go to the filesystem object, not the environment: the block works, the environment never
    holds them, and a thread started inside the block (concurrent code in the same process) does not have them."""
    endpoint = os.environ["HUBBEAM_S3_ENDPOINT_URL"]
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "HUBBEAM_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name)
    url = f"s3://{s3_bucket}/credentials-{uuid.uuid4().hex[:8]}/x.json"
    credentials = storage.Credentials.from_connection(
        "aws", "testing", "testing", json.dumps({"endpoint_url": endpoint, "region_name": "us-east-1"}))
    assert "testing" not in repr(credentials).replace("s3_key_id='testing'", "")
    seen_by_thread = []

    def other_task():
        try:
            storage.write_json(url, {"from": "thread"})
            seen_by_thread.append("wrote")
        except StorageError as exc:
            seen_by_thread.append(str(exc))

    with storage.use_credentials(credentials):
        storage.write_json(url, {"from": "block"})
        assert not any(k in os.environ for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))
        thread = threading.Thread(target=other_task)
        thread.start()
        thread.join(120)
        assert storage.read_json(url) == {"from": "block"}
    assert len(seen_by_thread) == 1 and seen_by_thread[0] != "wrote", seen_by_thread
    with pytest.raises(StorageError):
        storage.read_json(url)  # after the block: no credentials, no endpoint


def test_gcs_connection_with_a_key_dict_is_refused_by_kind_not_crash():
    with pytest.raises(HubbeamError, match="not supported"):
        storage.Credentials.from_connection("ftp", None, None, {})
    token = {"type": "service_account", "client_email": "x@y"}
    for keys in (token, json.dumps(token)):  # Airflow gives keyfile_dict as a dict or as JSON text
        credentials = storage.Credentials.from_connection("google_cloud_platform", None, None, {"keyfile_dict": keys})
        assert json.loads(credentials.gcs_token) == token
        hash(credentials)  # a filesystem cache key


# --- the guard: one storage layer ---------------------------------------------------------------------------------

ALLOWED = {
    # module -> what it may do itself
    "hubbeam/storage.py": {"fsspec", "scheme-branch", "beam-filesystems"},  # it configures Beam's too
    "hubbeam/hub/kinds.py": {"scheme-branch"},  # recognises module handles by scheme (https:// too)
    "hubbeam/hub/allowlist.py": {"scheme-branch"},  # compares handles (https:// too) with the allowed sources
    # SQLAlchemy URLs of the corpus database (sqlite:///…, postgresql://…), not storage locations:
    "hubbeam/orchestration/airflow_support.py": {"scheme-branch"},
    "hubbeam/orchestration/corpus.py": {"scheme-branch"},
}
BEAM_JOB = ("hubbeam/pipeline/",)  # Beam's sinks and the job's workers keep Beam's FileSystems


def _violations(path: Path, rel: str | None = None) -> list[str]:
    rel = rel or path.relative_to(ROOT).as_posix()
    allowed = ALLOWED.get(rel, set())
    found = []
    tree = ast.parse(path.read_text(), filename=rel)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            if any(n and n.split(".")[0] in ("fsspec", "s3fs", "gcsfs", "boto3") for n in names) \
                    and "fsspec" not in allowed:
                found.append(f"{rel}:{node.lineno} imports a storage client")
        if isinstance(node, ast.Name) and node.id == "FileSystems" and not rel.startswith(BEAM_JOB) \
                and "beam-filesystems" not in allowed:
            found.append(f"{rel}:{node.lineno} uses Beam's FileSystems outside the Beam job")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in (
                "://", "s3://", "gs://", "file://") and "scheme-branch" not in allowed:
            found.append(f"{rel}:{node.lineno} branches on a URL scheme itself ({node.value!r})")
    return found


def test_only_the_storage_module_reaches_storage():
    """Every other module takes a URL and calls hubbeam.storage: no fsspec client, no Beam FileSystems outside the
    job, no `"://" in path` branches (the root of a bug where an s3:// URL became a local folder named `s3:`)."""
    violations = [v for path in sorted((ROOT / "hubbeam").rglob("*.py")) for v in _violations(path)]
    violations += [v for path in sorted((ROOT / "dags").glob("*.py")) for v in _violations(path)]
    assert violations == []


def test_the_guard_catches_what_it_is_for(tmp_path):
    bad = tmp_path / "probe.py"
    bad.write_text('import fsspec\nfrom apache_beam.io.filesystems import FileSystems\n'
                   'def f(p):\n    FileSystems.open(p)\n    return "://" in p\n')
    assert len(_violations(bad, "hubbeam/export/probe.py")) == 3
    bad.write_text('from apache_beam.io.filesystems import FileSystems\nFileSystems.open("x")\n')
    assert _violations(bad, "hubbeam/orchestration/x.py") == [
        "hubbeam/orchestration/x.py:2 uses Beam's FileSystems outside the Beam job"]
