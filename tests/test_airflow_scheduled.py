"""The scheduled path for real, in the deployed configuration: api-server, scheduler and dag-processor on
127.0.0.1 (LocalExecutor, SQLite for Airflow's own metadata), the data root on S3 (moto) and the corpus in a real
PostgreSQL 15, set as the docker stack sets them (HUBBEAM_DATA_ROOT=s3://…, AIRFLOW_CONN_HUBBEAM_CORPUS_DB=
postgresql://…).

corpus_extraction is triggered through the REST API; embed_corpus must then run because of the
`hubbeam_corpus` asset event (run_type asset_triggered), embed the new snapshot with a tiny real module and
emit `hubbeam_embeddings`. Everything lives in a throw-away AIRFLOW_HOME, database and bucket prefix; the
Airflow processes (and whatever they started) are always stopped at teardown, and the tails of their logs are
printed when something fails.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hubbeam import storage
from tests.servers import S3_BUCKET

pytest_plugins = ["tests.servers", "tests.postgres"]

ROOT = Path(__file__).resolve().parents[1]
DAGS = ROOT / "dags"
CORPUS_ROWS = 40
IMAGES = 4
RUN_ID = "scheduled-path-test"
DEADLINE_S = 360  # triggering corpus_extraction -> embed_corpus finished
COMPONENTS = {
    "api-server": ["api-server"],  # host and port come from the environment
    "scheduler": ["scheduler", "--skip-serve-logs"],  # no log server on 0.0.0.0:8793: logs are local files
    "dag-processor": ["dag-processor"],
}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"<{exc}>"


class AirflowStack:
    """The running Airflow processes, their logs and a tiny REST client (all-admins simple auth manager)."""

    def __init__(self, home: Path, data_root: str, port: int, env: dict):
        import httpx

        self.home, self.data_root, self.env = home, data_root, env
        self.base_url = f"http://127.0.0.1:{port}"
        self.client = httpx.Client(base_url=self.base_url, timeout=30)
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}

    def start(self, name: str, args: list[str]) -> None:
        self.logs[name] = self.home / f"{name}.log"
        with open(self.logs[name], "wb") as log:
            self.procs[name] = subprocess.Popen([sys.executable, "-m", "airflow", *args], env=self.env,
                                                cwd=self.home, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, start_new_session=True)

    def credentials(self):
        """This process's storage calls, pointed where the stack's are (without touching os.environ)."""
        return storage.use_credentials(storage.Credentials.from_connection(
            "aws", self.env["AWS_ACCESS_KEY_ID"], self.env["AWS_SECRET_ACCESS_KEY"],
            {"endpoint_url": self.env["HUBBEAM_S3_ENDPOINT_URL"], "region_name": "us-east-1"}))

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise AssertionError(f"airflow {name} exited with {proc.returncode}")

    def api(self, method: str, path: str, expect: int | None = 200, **kwargs):
        response = self.client.request(method, f"/api/v2/{path.lstrip('/')}", **kwargs)
        if expect is not None:
            assert response.status_code == expect, f"{method} {path}: {response.status_code} {response.text[:2000]}"
        return response

    def report(self) -> str:
        parts = [f"--- airflow {name} ({path}) ---\n{_tail(path)}" for name, path in self.logs.items()]
        task_logs = sorted((self.home / "logs").glob("dag_id=*/**/*.log"), key=lambda p: p.stat().st_mtime)[-4:]
        parts += [f"--- task log {p.relative_to(self.home)} ---\n{_tail(p, 40)}" for p in task_logs]
        return "\n".join(parts)

    def stop(self) -> None:
        """SIGTERM each component's process group and every descendant (task supervisors start their own
        groups), give them 20 s, then SIGKILL whatever is left. Only processes this fixture started."""
        import psutil

        self.client.close()
        family = []
        for proc in self.procs.values():
            with contextlib.suppress(psutil.Error):
                family.extend(psutil.Process(proc.pid).children(recursive=True))
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for child in family:
            with contextlib.suppress(psutil.Error):
                child.terminate()
        deadline = time.monotonic() + 20
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        _, alive = psutil.wait_procs(family, timeout=max(0.1, deadline - time.monotonic()))
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for child in alive:
            with contextlib.suppress(psutil.Error):
                child.kill()


def _environment(home: Path, data_root: str, port: int, module: Path, db_url: str, s3_endpoint: str) -> dict:
    base_url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "HUBBEAM_"))}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base_url}/execution/",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": base_url,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__SECRET_KEY": secrets.token_hex(32),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),  # the scheduler signs, the api-server checks
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "HUBBEAM_DATA_ROOT": data_root,
        "HUBBEAM_S3_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "HUBBEAM_EMBED_MODULE": str(module),  # embed_corpus's default `module` Param, read at parse time
        "HUBBEAM_CACHE_DIR": str(home / "hubbeam-cache"),
        "AIRFLOW_CONN_HUBBEAM_CORPUS_DB": db_url,
        "TF_USE_LEGACY_KERAS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONUNBUFFERED": "1",
    })
    return env


@pytest.fixture(scope="module")
def airflow_stack(tmp_path_factory, tiny_wordvec_module, _hub_moto, postgres_server):
    from hubbeam.orchestration.corpus import create_sample_database
    from hubbeam.samples import write_digit_images

    home = tmp_path_factory.mktemp("airflow-scheduled")
    data_root = f"s3://{S3_BUCKET}/scheduled-{secrets.token_hex(4)}"
    db_url = postgres_server.create_database().url(driver="")  # postgresql://…, as users write it
    create_sample_database(db_url, rows=CORPUS_ROWS, updated_at="2026-01-01 00:00:00")
    port = _free_port()
    stack = AirflowStack(home, data_root, port,
                         _environment(home, data_root, port, tiny_wordvec_module, db_url, _hub_moto))
    with storage.use_credentials(storage.Credentials.from_connection(
            "aws", "testing", "testing", {"endpoint_url": _hub_moto, "region_name": "us-east-1"})):
        # The default image_source. On a store an image's modification time is its upload: now, after the
        # interval the test triggers, so these wait for the next interval.
        for path in write_digit_images(home / "images", count=IMAGES):
            storage.put_file(path, storage.join(data_root, "incoming", "images", path.name))
    migrate = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=stack.env, cwd=home,
                             capture_output=True, text=True, timeout=300)
    assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]
    try:
        for name, args in COMPONENTS.items():
            stack.start(name, args)
        deadline = time.monotonic() + 180
        while True:
            stack.check_alive()
            with contextlib.suppress(Exception):
                if stack.client.get("/api/v2/monitor/health").status_code == 200:
                    break
            assert time.monotonic() < deadline, "the api-server did not answer /api/v2/monitor/health in 180 s"
            time.sleep(1)
        yield stack
    except BaseException:
        print(stack.report())
        raise
    finally:
        stack.stop()


def _wait(stack: AirflowStack, what: str, deadline: float, probe):
    """probe() until it returns something truthy; fails at the deadline or when a component died."""
    while True:
        stack.check_alive()
        result = probe()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(2)


def _runs(stack: AirflowStack, dag_id: str) -> list[dict]:
    return stack.api("GET", f"dags/{dag_id}/dagRuns", params={"order_by": "run_after"}).json()["dag_runs"]


def _finished(run: dict | None, what: str) -> bool:
    if run is None:
        return False
    assert run["state"] != "failed", f"{what} {run['dag_run_id']} failed"
    return run["state"] == "success"


@pytest.mark.timeout(600)
def test_trigger_extraction_and_the_asset_schedules_embedding(airflow_stack):
    stack = airflow_stack
    try:
        _scheduled_path(stack)
    except BaseException:
        print(stack.report())
        raise


def _scheduled_path(stack: AirflowStack) -> None:
    deadline = time.monotonic() + 120
    _wait(stack, "both DAGs parsed", deadline, lambda: all(
        stack.api("GET", f"dags/{d}", expect=None).status_code == 200 for d in ("corpus_extraction", "embed_corpus")))
    assert stack.api("GET", "importErrors").json()["total_entries"] == 0

    # The consumer first, so that the asset event finds it unpaused.
    assert stack.api("PATCH", "dags/embed_corpus", json={"is_paused": False}).json()["is_paused"] is False
    extraction = stack.api("GET", "dags/corpus_extraction").json()
    assert extraction["is_paused"] is True
    # Trigger exactly the interval the scheduler would create on unpausing (catchup=False: the latest one),
    # so that no second, scheduled run of the same interval appears and the test stays deterministic.
    logical_date = extraction["next_dagrun_logical_date"]
    assert logical_date, extraction
    run = stack.api("POST", "dags/corpus_extraction/dagRuns", expect=200, json={
        "dag_run_id": RUN_ID, "logical_date": logical_date,
        "data_interval_start": extraction["next_dagrun_data_interval_start"],
        "data_interval_end": extraction["next_dagrun_data_interval_end"],
    }).json()
    assert run["run_type"] == "manual"
    assert stack.api("PATCH", "dags/corpus_extraction", json={"is_paused": False}).json()["is_paused"] is False

    deadline = time.monotonic() + DEADLINE_S
    _wait(stack, "corpus_extraction to succeed", deadline, lambda: _finished(
        stack.api("GET", f"dags/corpus_extraction/dagRuns/{RUN_ID}").json(), "corpus_extraction"))

    def embed_run():
        runs = [r for r in _runs(stack, "embed_corpus") if r["run_type"] == "asset_triggered"]
        return runs[0] if _finished(runs[0] if runs else None, "embed_corpus") else None

    embed = _wait(stack, "an asset-triggered embed_corpus run to succeed", deadline, embed_run)
    assert embed["triggered_by"] == "asset"
    assert all(r["run_type"] == "asset_triggered" for r in _runs(stack, "embed_corpus"))

    with stack.credentials():
        _check_outputs(stack, extraction, embed)


def _check_outputs(stack: AirflowStack, extraction: dict, embed: dict) -> None:
    # The corpus snapshot the triggered run wrote, on S3, from PostgreSQL.
    corpus = storage.join(stack.data_root, "corpus")
    [snapshot_name] = storage.list_dirs(corpus)
    assert storage.exists(storage.join(corpus, snapshot_name, "_SUCCESS"))
    snapshot = storage.read_json(storage.join(corpus, snapshot_name, "manifest.json"))
    end = dt.datetime.fromisoformat(extraction["next_dagrun_data_interval_end"].replace("Z", "+00:00"))
    assert snapshot["snapshot"] == snapshot_name == f"beginning_{end:%Y%m%dT%H%M%SZ}"
    assert snapshot["rows"]["images"] == 0  # uploaded after the interval's end: left for the next one
    assert 0 < snapshot["rows"]["text"] <= CORPUS_ROWS
    assert snapshot["rows"]["text"] + snapshot["parts"]["text"]["duplicates_dropped"] == CORPUS_ROWS

    # What embed_corpus made of it, keyed by the module's digest (a text module: text only).
    embeddings = storage.join(stack.data_root, "embeddings")
    [folder] = [f for f in storage.list_dirs(embeddings) if f.startswith("wordvec-")]
    output = storage.join(embeddings, folder, snapshot_name, "text")
    assert storage.exists(storage.join(output, "_SUCCESS"))
    manifest = storage.read_json(storage.join(output, "manifest.json"))
    assert manifest["rows_read"] == manifest["rows_embedded"] + manifest["rows_rejected"]
    assert manifest["rows_embedded"] == snapshot["rows"]["text"] and manifest["rows_rejected"] == 0
    from hubbeam.pipeline.output import read_embeddings

    ids, vectors = read_embeddings(output)
    assert len(ids) == vectors.shape[0] == manifest["rows_embedded"] and vectors.shape[1] == 4

    # The asset events: the corpus event came from our run and created the embed run; embed emitted its own.
    [corpus_event] = stack.api("GET", "assets/events", params={"source_dag_id": "corpus_extraction"}).json()[
        "asset_events"]
    assert corpus_event["name"] == "hubbeam_corpus" and corpus_event["source_run_id"] == RUN_ID
    assert corpus_event["source_task_id"] == "finish_snapshot"
    assert corpus_event["extra"]["snapshot"] == snapshot_name
    assert embed["dag_run_id"] in [r["run_id"] for r in corpus_event["created_dagruns"]]
    upstream = stack.api("GET", f"dags/embed_corpus/dagRuns/{embed['dag_run_id']}/upstreamAssetEvents").json()
    assert [e["id"] for e in upstream["asset_events"]] == [corpus_event["id"]]
    [embeddings_event] = stack.api("GET", "assets/events", params={"source_dag_id": "embed_corpus"}).json()[
        "asset_events"]
    assert embeddings_event["name"] == "hubbeam_embeddings"
    assert embeddings_event["source_run_id"] == embed["dag_run_id"] and embeddings_event["source_task_id"] == "check"
    assert embeddings_event["extra"] == {"runs": 1, "rows_embedded": manifest["rows_embedded"], "rows_rejected": 0}
