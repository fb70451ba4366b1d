"""The scheduled path for real: api-server, scheduler and dag-processor on 127.0.0.1 (LocalExecutor, SQLite).

corpus_extraction is triggered through the REST API; embed_corpus must then run because of the
`hubbeam_corpus` asset event (run_type asset_triggered), embed the new snapshot with a tiny real module and
emit `hubbeam_embeddings`. Everything lives in a throw-away AIRFLOW_HOME and data root; the Airflow processes
(and whatever they started) are always stopped at teardown, and the tails of their logs are printed when
something fails.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

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

    def __init__(self, home: Path, data_root: Path, port: int, env: dict):
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


def _environment(home: Path, data_root: Path, port: int, module: Path, db: Path) -> dict:
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
        "HUBBEAM_DATA_ROOT": str(data_root),
        "HUBBEAM_EMBED_MODULE": str(module),  # embed_corpus's default `module` Param, read at parse time
        "HUBBEAM_CACHE_DIR": str(home / "hubbeam-cache"),
        "AIRFLOW_CONN_HUBBEAM_CORPUS_DB": json.dumps({"conn_type": "sqlite", "host": str(db)}),
        "TF_USE_LEGACY_KERAS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONUNBUFFERED": "1",
    })
    return env


@pytest.fixture(scope="module")
def airflow_stack(tmp_path_factory, tiny_wordvec_module):
    from hubbeam.orchestration.corpus import create_sample_database
    from hubbeam.samples import write_digit_images

    home = tmp_path_factory.mktemp("airflow-scheduled")
    data_root = home / "data"
    db = data_root / "corpus.db"
    create_sample_database(str(db), rows=CORPUS_ROWS, updated_at="2026-01-01 00:00:00")
    old = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc).timestamp()
    for path in write_digit_images(data_root / "incoming" / "images", count=IMAGES):  # the default image_source
        os.utime(path, (old, old))

    port = _free_port()
    stack = AirflowStack(home, data_root, port, _environment(home, data_root, port, tiny_wordvec_module, db))
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

    # The corpus snapshot the triggered run wrote.
    [snapshot_dir] = [p for p in (stack.data_root / "corpus").iterdir() if p.is_dir()]
    assert (snapshot_dir / "_SUCCESS").exists()
    snapshot = json.loads((snapshot_dir / "manifest.json").read_text())
    end = dt.datetime.fromisoformat(extraction["next_dagrun_data_interval_end"].replace("Z", "+00:00"))
    assert snapshot["snapshot"] == snapshot_dir.name == f"beginning_{end:%Y%m%dT%H%M%SZ}"
    assert snapshot["rows"]["images"] == IMAGES
    assert 0 < snapshot["rows"]["text"] <= CORPUS_ROWS
    assert snapshot["rows"]["text"] + snapshot["parts"]["text"]["duplicates_dropped"] == CORPUS_ROWS

    # What embed_corpus made of it, keyed by the module's digest (a text module: text only).
    [output] = list((stack.data_root / "embeddings").glob(f"wordvec-*/{snapshot_dir.name}/text"))
    assert (output / "_SUCCESS").exists()
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["rows_read"] == manifest["rows_embedded"] + manifest["rows_rejected"]
    assert manifest["rows_embedded"] == snapshot["rows"]["text"] and manifest["rows_rejected"] == 0
    from hubbeam.pipeline.output import read_embeddings

    ids, vectors = read_embeddings(str(output))
    assert len(ids) == vectors.shape[0] == manifest["rows_embedded"] and vectors.shape[1] == 4

    # The asset events: the corpus event came from our run and created the embed run; embed emitted its own.
    [corpus_event] = stack.api("GET", "assets/events", params={"source_dag_id": "corpus_extraction"}).json()[
        "asset_events"]
    assert corpus_event["name"] == "hubbeam_corpus" and corpus_event["source_run_id"] == RUN_ID
    assert corpus_event["source_task_id"] == "finish_snapshot"
    assert corpus_event["extra"]["snapshot"] == snapshot_dir.name
    assert embed["dag_run_id"] in [r["run_id"] for r in corpus_event["created_dagruns"]]
    upstream = stack.api("GET", f"dags/embed_corpus/dagRuns/{embed['dag_run_id']}/upstreamAssetEvents").json()
    assert [e["id"] for e in upstream["asset_events"]] == [corpus_event["id"]]
    [embeddings_event] = stack.api("GET", "assets/events", params={"source_dag_id": "embed_corpus"}).json()[
        "asset_events"]
    assert embeddings_event["name"] == "hubbeam_embeddings"
    assert embeddings_event["source_run_id"] == embed["dag_run_id"] and embeddings_event["source_task_id"] == "check"
    assert embeddings_event["extra"] == {"runs": 1, "rows_embedded": manifest["rows_embedded"], "rows_rejected": 0}
