"""`hubbeam pack` and `hubbeam publish` against real storage: local folders, moto S3, the GCS emulator, and an
HTTP hub serving what was published. What is published loads back to the same embeddings; a publish that
dies or fails half-way never leaves a version that looks complete."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

pytest.register_assert_rewrite("tests.servers")

import hubbeam  # noqa: E402
import hubbeam.export  # noqa: E402
from hubbeam.export.publishing import MARKER, published_version  # noqa: E402
from hubbeam.hub.digest import tree_sha256  # noqa: E402
from hubbeam.hub.resolver import resolve_module  # noqa: E402
from tests.cli import hubbeam_cli

pytest_plugins = ["tests.servers"]

SENTENCES = ["the cat sat", "mat , the", "zebra", ""]


def assert_one_line_error(result, message):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr  # exactly one line
    assert result.stderr.startswith("hubbeam: error: ") and message in result.stderr, result.stderr


@pytest.fixture
def module(tiny_wordvec_module) -> Path:
    return tiny_wordvec_module


@pytest.fixture
def reference(module):
    return hubbeam.load(str(module))(SENTENCES)


def assert_same_embeddings(handle: str, reference):
    np.testing.assert_array_equal(hubbeam.load(handle)(SENTENCES), reference)


# --- pack -----------------------------------------------------------------------------------------------------------

def test_pack_is_byte_for_byte_reproducible_and_round_trips(module, reference, tmp_path):
    first = hubbeam.export.pack(module, tmp_path / "a" / "wordvec.tar.gz")
    second = hubbeam.export.pack(module, tmp_path / "b" / "wordvec.tar.gz")
    # The same contents with other timestamps and permissions pack to the same bytes.
    copy = tmp_path / "copy"
    shutil.copytree(module, copy)
    for path in sorted(copy.rglob("*"), reverse=True):
        os.utime(path, (1_700_000_000, 1_700_000_000))
        path.chmod(0o700 if path.is_dir() else 0o600)
    third = hubbeam.export.pack(copy, tmp_path / "c" / "wordvec.tar.gz")
    data = first.path.read_bytes()
    assert data == second.path.read_bytes() == third.path.read_bytes()
    assert first.sha256 == hashlib.sha256(data).hexdigest() == third.sha256
    assert first.tree_sha256 == tree_sha256(module)

    assert data[:3] == b"\x1f\x8b\x08" and data[3] & 0x08 == 0, "gzip header must not carry a file name"
    assert data[4:8] == b"\x00\x00\x00\x00", "gzip header must not carry a timestamp"
    with tarfile.open(first.path) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names) and not any(n.startswith(("/", "./")) or ".." in n for n in names)
    assert "saved_model.pb" in names, "the SavedModel must sit at the tarball's root"
    for m in members:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", ""), m.name
        assert (m.isdir() and m.mode == 0o755) or (m.isfile() and m.mode == 0o644), m.name

    sidecar = first.path.with_name("wordvec.tar.gz.sha256")
    assert sidecar.read_text() == f"{first.sha256}  wordvec.tar.gz\n"
    check = subprocess.run(["sha256sum", "-c", sidecar.name], cwd=sidecar.parent, capture_output=True, text=True)
    assert check.returncode == 0 and "wordvec.tar.gz: OK" in check.stdout

    resolved = resolve_module(str(first.path))
    assert resolved.archive_sha256 == first.sha256 and resolved.sha256 == tree_sha256(module)
    assert_same_embeddings(str(first.path), reference)


def test_pack_cli_matches_python_and_refuses_what_is_not_a_plain_module(module, tmp_path):
    result = hubbeam_cli("pack", module, "--out", tmp_path / "cli.tar.gz", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    python = hubbeam.export.pack(module, tmp_path / "py.tar.gz")
    assert (tmp_path / "cli.tar.gz").read_bytes() == python.path.read_bytes()
    assert info["sha256"] == hashlib.sha256((tmp_path / "cli.tar.gz").read_bytes()).hexdigest()

    assert_one_line_error(hubbeam_cli("pack", tmp_path, "--out", tmp_path / "x.tar.gz"), "is not a SavedModel folder")
    linked = tmp_path / "linked"
    shutil.copytree(module, linked)
    (linked / "assets" / "extra.txt").symlink_to("/etc/hostname")
    assert_one_line_error(hubbeam_cli("pack", linked, "--out", tmp_path / "y.tar.gz"), "is a symbolic link")
    assert not (tmp_path / "x.tar.gz").exists() and not (tmp_path / "y.tar.gz").exists()


# --- publish: round trips through real storage ---------------------------------------------------------------------

def test_publish_to_s3_and_load_back(module, reference, s3_bucket, tmp_path):
    result = hubbeam.export.publish(module, f"s3://{s3_bucket}/published/text")
    assert (result.name, result.version) == ("wordvec", "1")
    assert result.folder_handle == f"s3://{s3_bucket}/published/text/wordvec/1/saved_model"
    assert result.archive_handle == f"s3://{s3_bucket}/published/text/wordvec/1/wordvec.tar.gz"
    marker = published_version(f"s3://{s3_bucket}/published/text", "wordvec", "1")
    assert marker["archive_sha256"] == result.archive_sha256 and marker["tree_sha256"] == tree_sha256(module)

    assert_same_embeddings(result.folder_handle, reference)
    assert_same_embeddings(f"{result.archive_handle}#sha256={result.archive_sha256}", reference)
    assert resolve_module(result.folder_handle).sha256 == tree_sha256(module)  # exactly the module's files

    with pytest.raises(hubbeam.HubbeamError, match="already published"):
        hubbeam.export.publish(module, f"s3://{s3_bucket}/published/text")
    again = hubbeam.export.publish(module, f"s3://{s3_bucket}/published/text", force=True)
    assert again.replaced and again.archive_sha256 == result.archive_sha256


def test_publish_tarball_to_gcs_and_load_back(module, reference, gcs_bucket, tmp_path):
    packed = hubbeam.export.pack(module, tmp_path / "wordvec.tar.gz")
    result = hubbeam.export.publish(packed.path, f"gs://{gcs_bucket}/published", name="words", version="2024.1")
    assert result.archive_sha256 == packed.sha256, "a tarball is published as it is, byte for byte"
    assert result.folder_handle == f"gs://{gcs_bucket}/published/words/2024.1/saved_model"
    marker = published_version(f"gs://{gcs_bucket}/published", "words", "2024.1")
    assert marker["name"] == "words" and marker["files"]["words.tar.gz"] == packed.size
    assert_same_embeddings(result.folder_handle, reference)
    assert_same_embeddings(f"{result.archive_handle}#sha256={packed.sha256}", reference)
    assert_same_embeddings(f"{result.folder_handle}#sha256={packed.tree_sha256}", reference)


def test_published_tarball_served_over_http_loads(module, reference, hub_http, tmp_path):
    result = hubbeam.export.publish(module, f"file://{tmp_path / 'registry'}")
    assert result.archive_handle == f"file://{tmp_path}/registry/wordvec/1/wordvec.tar.gz"
    published = (tmp_path / "registry" / "wordvec" / "1" / "wordvec.tar.gz").read_bytes()
    hub_http.add("/models/wordvec/1?tf-hub-format=compressed", body=published)
    assert_same_embeddings(hub_http.url("/models/wordvec/1?tf-hub-format=compressed"), reference)
    assert_same_embeddings(hub_http.url(f"/models/wordvec/1#sha256={result.archive_sha256}"), reference)
    assert_same_embeddings(result.folder_handle, reference)
    assert_same_embeddings(result.archive_handle, reference)


def test_publishing_over_a_version_is_refused_unless_forced(module, tmp_path):
    registry = tmp_path / "registry"
    first = hubbeam_cli("publish", module, registry, "--json")
    assert first.returncode == 0, first.stderr
    info = json.loads(first.stdout)
    assert info["folder_handle"] == str(registry / "wordvec" / "1" / "saved_model")
    marker = registry / "wordvec" / "1" / MARKER
    before = marker.read_bytes()

    assert_one_line_error(hubbeam_cli("publish", module, registry),
                          "wordvec 1 is already published at")
    assert marker.read_bytes() == before

    forced = hubbeam_cli("publish", module, registry, "--force")
    assert forced.returncode == 0 and "(replaced)" in forced.stdout, forced.stderr
    other = hubbeam_cli("publish", module, registry, "--version", "2")
    assert other.returncode == 0, other.stderr
    assert sorted(p.name for p in (registry / "wordvec").iterdir()) == ["1", "2"]


# --- publish: interrupted and refused publishes --------------------------------------------------------------------

# Runs `hubbeam publish` with the local filesystem's put_file interrupted at the Nth upload: "kill" ends the
# process there (os._exit: no cleanup runs, as with SIGKILL), "torn" writes half the file first, "enospc"
# raises the error a full disk gives. Everything else is the real publish.
INTERRUPTED_PUBLISH = r"""
import errno, os, sys
import fsspec.implementations.local as local
from hubbeam.cli import main

source, dest, mode, nth = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
calls = [0]
put_file = local.LocalFileSystem.put_file

def interrupted(self, lpath, rpath, *args, **kwargs):
    calls[0] += 1
    if calls[0] == nth:
        if mode == "torn":
            data = open(lpath, "rb").read()
            os.makedirs(os.path.dirname(rpath), exist_ok=True)
            with open(rpath, "wb") as f:
                f.write(data[: len(data) // 2])
        if mode in ("kill", "torn"):
            os._exit(137)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), rpath)
    return put_file(self, lpath, rpath, *args, **kwargs)

local.LocalFileSystem.put_file = interrupted
sys.exit(main(["publish", source, dest]))
"""

# Uploads of the tiny module: 6 module files (saved_model.pb last), the tarball, the sidecar, the marker.
UPLOADS = 9


@pytest.mark.parametrize("mode, nth", [
    ("kill", 1), ("kill", 4), ("torn", 4),  # inside the folder
    ("kill", 6),  # just before saved_model.pb
    ("torn", 7),  # the tarball half written
    ("kill", 9),  # everything but the marker
    ("enospc", 5), ("enospc", 9),  # failures the publish sees: it removes what it wrote
])
def test_interrupted_publish_never_looks_complete(module, reference, tmp_path, mode, nth):
    registry = tmp_path / "registry"
    version_dir = registry / "wordvec" / "1"
    run = subprocess.run([sys.executable, "-c", INTERRUPTED_PUBLISH, str(module), str(registry), mode, str(nth)],
                         capture_output=True, text=True, env=os.environ.copy(), timeout=120)
    if mode == "enospc":
        assert_one_line_error(run, "No space left on device")
        assert not version_dir.exists() or not any(version_dir.rglob("*")), "a failed publish must clean up"
    else:
        assert run.returncode == 137, run.stderr
    assert not (version_dir / MARKER).exists()
    assert published_version(registry, "wordvec", "1") is None
    # Whatever was left is either not a module at all, or the complete module: never a torn one.
    for handle in (version_dir / "saved_model", version_dir / "wordvec.tar.gz"):
        try:
            resolved = resolve_module(str(handle))
        except hubbeam.HubbeamError:
            continue
        assert resolved.sha256 == tree_sha256(module), f"{handle} loads but is not the module"
        assert nth == UPLOADS or (handle.name == "saved_model" and nth > 6)

    retry = hubbeam.export.publish(module, registry)  # no force needed: the version was never published
    killed_after_writing = mode in ("kill", "torn") and nth > 1
    assert retry.cleaned == killed_after_writing  # leftovers of a killed publish are removed first
    assert (version_dir / MARKER).is_file()
    assert sorted(p.name for p in version_dir.iterdir()) == [MARKER, "saved_model", "wordvec.tar.gz",
                                                             "wordvec.tar.gz.sha256"]
    assert_same_embeddings(retry.folder_handle, reference)
    assert_same_embeddings(retry.archive_handle, reference)


def test_publish_without_credentials_is_a_one_line_error_and_writes_nothing(module, s3_bucket, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_EC2_METADATA_DISABLED="true", AWS_DEFAULT_REGION="us-east-1")
    result = hubbeam_cli("publish", module, f"s3://{s3_bucket}/no-credentials", env=env)
    assert_one_line_error(result, "cannot publish to s3://hub-modules/no-credentials/wordvec/1: no usable credentials")

    import boto3

    client = boto3.client("s3", endpoint_url=os.environ["HUBBEAM_S3_ENDPOINT_URL"], region_name="us-east-1")
    assert client.list_objects_v2(Bucket=s3_bucket, Prefix="no-credentials/").get("KeyCount") == 0


def test_publish_needs_a_name_and_version(tf1_module, tmp_path):
    """A module without hubbeam metadata (here a TF1 Hub module) is published under the name given."""
    assert_one_line_error(hubbeam_cli("publish", tf1_module, tmp_path / "registry"),
                          "has no name and version in its metadata; give them (--name, --version)")
    assert_one_line_error(hubbeam_cli("publish", tf1_module, tmp_path / "registry", "--name", "x/y", "--version", "1"),
                          "invalid module name 'x/y'")
    assert not (tmp_path / "registry").exists()
    result = hubbeam.export.publish(tf1_module, tmp_path / "registry", name="legacy", version="1")
    assert resolve_module(result.folder_handle).sha256 == tree_sha256(tf1_module)
