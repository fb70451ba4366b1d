"""Publishing decisions and storage connections of the fine-tune DAG, against real files and a real S3 server."""
import json

import pytest

import hubbeam
from hubbeam.errors import HubbeamError
from hubbeam.orchestration.airflow_support import connection_credentials
from hubbeam.orchestration.release import decide, published_versions

pytest_plugins = ["tests.servers"]


def fake_published(store, name, version, metric, complete=True):
    folder = store / name / version
    metadata = folder / "saved_model" / "assets.extra" / "hubbeam_module.json"
    metadata.parent.mkdir(parents=True)
    metadata.write_text(json.dumps({"name": name, "finetune": {"finetuned": metric}}))
    if complete:
        (folder / "_PUBLISHED.json").write_text("{}")


def report(metric, version="20261201"):
    return {"metric": "accuracy", "finetuned": metric, "baseline": 0.5, "name": "m", "version": version}


def test_decide_compares_with_the_latest_earlier_complete_version(tmp_path):
    store = tmp_path / "store"
    assert decide(report(0.1), str(store), "m", "20261201")["publish"] is True  # nothing published yet
    fake_published(store, "m", "20261101", 0.80)
    fake_published(store, "m", "20261115", 0.90)
    fake_published(store, "m", "20261120", 0.99, complete=False)  # an interrupted publish does not count
    fake_published(store, "m", "20261210", 0.99)  # a later version is not "the current one" for 20261201
    assert published_versions(str(store), "m") == ["20261101", "20261115", "20261210"]
    better = decide(report(0.95), str(store), "m", "20261201")
    assert (better["publish"], better["current_version"], better["current_metric"]) == (True, "20261115", 0.90)
    assert decide(report(0.90), str(store), "m", "20261201")["publish"] is False
    assert "0.9000 vs 0.9 of version 20261115" in decide(report(0.90), str(store), "m", "20261201")["reason"]


def test_publish_uses_the_airflow_connections_credentials(s3_bucket, monkeypatch, hub_module):
    from hubbeam.export import publish

    endpoint = __import__("os").environ["HUBBEAM_S3_ENDPOINT_URL"]
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "HUBBEAM_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name)
    dest = f"s3://{s3_bucket}/released"
    with pytest.raises(HubbeamError, match="credentials"):
        publish(str(hub_module.folder), dest, name="conn-test", version="1")
    conn = {"conn_type": "aws", "login": "testing", "password": "testing",
            "extra": json.dumps({"endpoint_url": endpoint, "region_name": "us-east-1"})}
    with connection_credentials(conn):
        result = publish(str(hub_module.folder), dest, name="conn-test", version="1")
        loaded = hubbeam.load(result.archive_handle)
        assert loaded.module_sha256 == result.tree_sha256
    import os

    assert "AWS_ACCESS_KEY_ID" not in os.environ and "HUBBEAM_S3_ENDPOINT_URL" not in os.environ


def test_unsupported_connection_type_is_refused():
    with pytest.raises(HubbeamError, match="not supported"):
        with connection_credentials({"conn_type": "ftp", "extra": {}}):
            pass
