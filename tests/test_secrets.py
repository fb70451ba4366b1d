"""Credentials come only from the URL a user gives (HTTP basic auth), the standard provider environment (AWS_*)
or an Airflow connection; a secret given any of those ways never appears in logs, stdout/stderr, error
messages, manifests, Parquet data or metadata, cache folders and markers, or published objects.

The secret is a random string, so finding it anywhere is a leak.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytest.register_assert_rewrite("tests.servers")

import hubbeam  # noqa: E402
from hubbeam.errors import HubbeamError  # noqa: E402
from hubbeam.hub.resolver import resolve_module  # noqa: E402
from hubbeam.pipeline.job import EmbedJob, run_embed  # noqa: E402
from tests.servers import S3_BUCKET, closed_port  # noqa: E402

pytest_plugins = ["tests.servers"]

SECRET = f"hb-secret-{uuid.uuid4().hex}"
REPO_ROOT = Path(__file__).resolve().parents[1]


def leaks_in_tree(root: Path) -> list[str]:
    """Every file or folder under root whose name or bytes hold the secret; Parquet files are also decoded
    (values and key-value metadata), since their data pages are compressed."""
    found = []
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if SECRET in rel:
            found.append(f"name: {rel}")
        if not path.is_file() or path.is_symlink():
            continue
        if SECRET.encode() in path.read_bytes():
            found.append(f"bytes: {rel}")
        if path.suffix == ".parquet":
            parquet = pq.ParquetFile(path)
            metadata = {**(parquet.schema_arrow.metadata or {}), **(parquet.metadata.metadata or {})}
            if any(SECRET.encode() in k or SECRET.encode() in v for k, v in metadata.items()):
                found.append(f"parquet metadata: {rel}")
            if SECRET in json.dumps(parquet.read().to_pylist(), default=str):
                found.append(f"parquet values: {rel}")
    return found


def corpus(tmp_path: Path) -> str:
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "rows.jsonl").write_text(
        "".join(json.dumps({"id": f"r{i}", "text": t}) + "\n" for i, t in enumerate(["the cat", "a dog", "", None])))
    return str(tmp_path / "corpus" / "*.jsonl")


@pytest.fixture
def secret_http(hub_http, hub_module):
    """Module handles on the local HTTP hub with the secret as the basic-auth password, with and without a path."""
    hub_http.add("/?tf-hub-format=compressed", body=hub_module.tar_bytes)
    base = hub_http.base_url.replace("http://", f"http://hubuser:{SECRET}@")
    return [f"{base}/m/wordvec.tar.gz", base]


@pytest.fixture
def secret_aws(s3_bucket, monkeypatch):
    """The AWS secret key in the standard environment variable."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    return s3_bucket


def s3_objects(prefix: str) -> dict[str, bytes]:
    import boto3

    client = boto3.client("s3", endpoint_url=os.environ["HUBBEAM_S3_ENDPOINT_URL"], region_name="us-east-1")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=S3_BUCKET, Prefix=prefix).get("Contents", [])]
    return {k: client.get_object(Bucket=S3_BUCKET, Key=k)["Body"].read() for k in keys}


def test_resolve_embed_publish_with_secrets_leak_nothing(secret_http, secret_aws, tmp_path, caplog, capfd):
    from hubbeam.export import publish

    caplog.set_level(logging.DEBUG)
    cache = Path(os.environ["HUBBEAM_CACHE_DIR"])
    outputs = []
    for n, handle in enumerate(secret_http):
        resolved = resolve_module(handle)
        assert SECRET not in resolved.handle and SECRET not in str(resolved.path)
        out = tmp_path / f"out-{n}"
        manifest = run_embed(EmbedJob(input=corpus(tmp_path) if n == 0 else str(tmp_path / "corpus" / "*.jsonl"),
                                      output=str(out), module=handle))
        assert manifest["rows_embedded"] == 2 and manifest["rows_rejected"] == 2
        outputs.append(out)
        result = publish(resolved.path, f"s3://{S3_BUCKET}/secret-{n}")
        assert hubbeam.load(result.archive_handle).module_sha256 == resolved.sha256
        run_embed(EmbedJob(input=str(tmp_path / "corpus" / "*.jsonl"), output=str(out) + "-s3",
                           module=result.folder_handle))
        outputs.append(Path(str(out) + "-s3"))

    captured = capfd.readouterr()
    assert SECRET not in caplog.text and SECRET not in captured.out and SECRET not in captured.err
    assert "hubuser" not in caplog.text  # the user name goes the same way
    for out in outputs:
        assert (out / "_SUCCESS").exists() and leaks_in_tree(out) == [], out
    assert leaks_in_tree(cache) == []
    markers = list(cache.rglob(".hubbeam-cache.json"))
    assert len(markers) >= 2
    published = {**s3_objects("secret-0/"), **s3_objects("secret-1/")}
    assert "secret-0/wordvec/1/_PUBLISHED.json" in published
    assert [k for k, body in published.items() if SECRET in k or SECRET.encode() in body] == []


CLI_CHILD = r"""
import sys
from hubbeam.cli import main
handle, corpus, out, dest = sys.argv[1:5]
for args in (["-v", "resolve", handle, "--json"], ["-v", "inspect", handle],
             ["-v", "embed", "--input", corpus, "--output", out, "--module", handle],
             ["-v", "publish", sys.argv[5], dest, "--json"]):
    rc = main(args)
    assert rc == 0, (args, rc)
print("done")
"""


def test_cli_with_secrets_in_verbose_mode_prints_none(secret_http, secret_aws, tmp_path):
    """The same through the command line, logging at INFO (-v), in a fresh process."""
    handle = secret_http[1]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    resolved = resolve_module(handle)
    result = subprocess.run([sys.executable, "-c", CLI_CHILD, handle, corpus(tmp_path), str(tmp_path / "out"),
                             f"s3://{S3_BUCKET}/cli-secret", str(resolved.path)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("done")
    assert "hubbeam: " in result.stderr  # -v logged something
    assert SECRET not in result.stdout and SECRET not in result.stderr
    assert leaks_in_tree(tmp_path / "out") == []
    assert [k for k, body in s3_objects("cli-secret/").items() if SECRET.encode() in body] == []


AIRFLOW_CHILD = r"""
import json, logging, os, sys
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
from hubbeam.errors import HubbeamError
from hubbeam.export import publish
from hubbeam.orchestration.airflow_support import storage_connection
from hubbeam.orchestration.release import published_versions

module, dest, conn_id = sys.argv[1:4]
try:
    publish(module, dest, name="conn-secret", version="1")
    raise SystemExit("published without credentials")
except HubbeamError as exc:
    print("without the connection:", exc)
with storage_connection(conn_id):
    result = publish(module, dest, name="conn-secret", version="1")
    assert published_versions(dest, "conn-secret") == ["1"]
left = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")}
print(json.dumps({"result": result.as_dict(), "environment_after": left}))
"""


def test_airflow_connection_credentials_leak_nothing(s3_bucket, hub_module, tmp_path):
    """A storage connection (as the fine-tune DAG uses it) is the only source of the key: it works, and the key is
    neither printed nor logged (at DEBUG), nor left in the environment, nor in what was published."""
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                                             "HUBBEAM_S3_ENDPOINT_URL")}
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    env["AIRFLOW_CONN_HUBBEAM_SECRET_STORE"] = json.dumps(
        {"conn_type": "aws", "login": "AKIDHUBBEAM", "password": SECRET,
         "extra": {"endpoint_url": os.environ["HUBBEAM_S3_ENDPOINT_URL"], "region_name": "us-east-1"}})
    dest = f"s3://{S3_BUCKET}/conn-secret"
    child = subprocess.run([sys.executable, "-c", AIRFLOW_CHILD, str(hub_module.folder), dest, "hubbeam_secret_store"],
                           capture_output=True, text=True, env=env, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]
    assert "without the connection: cannot publish" in child.stdout and "credentials" in child.stdout
    assert "DEBUG" in child.stderr or "debug" in child.stdout  # it did log at DEBUG
    assert SECRET not in child.stdout and SECRET not in child.stderr
    report = json.loads(child.stdout.strip().splitlines()[-1])
    assert "AWS_SECRET_ACCESS_KEY" not in report["environment_after"]
    objects = s3_objects("conn-secret/")
    assert "conn-secret/conn-secret/1/_PUBLISHED.json" in objects
    assert [k for k, body in objects.items() if SECRET.encode() in body] == []
    assert hubbeam.load(report["result"]["folder_handle"]).module_sha256 == hub_module.tree_sha256


@pytest.mark.parametrize("handle, kwargs", [
    ("https://user:{secret}@example.org/m?tf-hub-format=raw", {}),
    ("https://user:{secret}@example.org/m.tar.gz#sha256=" + "a" * 64, {"sha256": "b" * 64}),
    ("ftp://user:{secret}@example.org/m.tar.gz", {}),
    ("http://user:{secret}@127.0.0.1:{closed}/m.tar.gz", {}),
    ("{http}/m/missing.tar.gz", {}),
    ("{http}/m/broken.tar.gz", {}),
    ("{http}/m/wordvec.tar.gz", {"sha256": "c" * 64}),
])
def test_error_messages_hold_no_secret(hub_http, handle, kwargs):
    handle = handle.format(secret=SECRET, closed=closed_port(),
                           http=hub_http.base_url.replace("http://", f"http://user:{SECRET}@"))
    with pytest.raises(HubbeamError) as info:
        resolve_module(handle, **kwargs)
    assert SECRET not in str(info.value), str(info.value)
    assert "user:" not in str(info.value)
