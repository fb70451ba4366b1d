"""The job the way Flink and Spark (on Kubernetes) run Python: Beam's job service and an SDK worker pool as separate
processes (`--environment_type=EXTERNAL`), two SDK workers that see only the pipeline options and the module
handle — an s3:// tarball pinned by sha256 that the workers resolve themselves — reading and writing s3://
(moto). The output must equal the in-process run's, and the manifest must show one load per worker process."""
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from hubbeam import storage
from tests.cli import hubbeam_cli
from tests.servers import S3_BUCKET, closed_port

pytest_plugins = ["tests.servers"]

TEXTS = ["A man is eating food.", "A man is riding a horse.", "", "Two dogs play in the snow.",
         "The new movie is awesome.", "Un homme mange de la nourriture."] * 40


def _started(args: list[str], env: dict, ready) -> subprocess.Popen:
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True, cwd=Path(__file__).parents[1])
    deadline = time.monotonic() + 90
    while not ready():
        assert process.poll() is None, f"{args[2]} exited with {process.returncode}"
        assert time.monotonic() < deadline, f"{args[2]} did not start in 90 s"
        time.sleep(0.2)
    return process


def _stop(process: subprocess.Popen) -> None:
    import signal

    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class BeamServices:
    """Beam's job service and an SDK worker pool, started as a deployment would: the pool with the environment's
    own python first on PATH (it starts SDK workers with `python`) and the same storage settings as the launcher.
    The job service is tests/job_service.py: Beam's, honouring --sdk_worker_parallelism as Flink's does."""

    def __init__(self, tmp_path: Path):
        self.env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                    "HUBBEAM_CACHE_DIR": str(tmp_path / "pool-cache")}
        self.cache = tmp_path / "pool-cache"
        port_file = tmp_path / "job-service.port"
        self.job_service = _started([sys.executable, "-m", "tests.job_service", "--port", "0", "--port_file",
                                     str(port_file)], self.env, lambda: port_file.exists() and port_file.read_text().strip())
        self.job_endpoint = f"localhost:{port_file.read_text().strip()}"
        self.pool_port = closed_port()
        self.pool = None
        self.start_pool()

    @property
    def options(self) -> list[str]:
        return ["--runner=PortableRunner", f"--job_endpoint={self.job_endpoint}", "--environment_type=EXTERNAL",
                f"--environment_config=localhost:{self.pool_port}", "--sdk_worker_parallelism=2"]

    def start_pool(self) -> None:
        self.pool = _started([sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                              f"--service_port={self.pool_port}"], self.env, lambda: _listening(self.pool_port))

    def kill_pool(self) -> None:
        """SIGKILL to the pool's process group: the pool and every SDK worker it started, as a lost node."""
        import signal

        os.killpg(self.pool.pid, signal.SIGKILL)
        self.pool.wait(timeout=30)

    def stop(self) -> None:
        _stop(self.pool)
        _stop(self.job_service)


@pytest.fixture
def beam_services(s3_bucket, tmp_path):
    services = BeamServices(tmp_path)
    try:
        yield services
    finally:
        services.stop()


def _stage_job(minilm_module, tmp_path, rows: list[str]) -> tuple[str, str]:
    """The module as a pinned s3:// tarball and the rows as two s3:// JSONL files (and a local copy of them);
    returns (base url, module handle)."""
    from hubbeam.export import pack

    base = f"s3://{S3_BUCKET}/pool-{uuid.uuid4().hex[:8]}"
    packed = pack(minilm_module, tmp_path / "minilm.tar.gz")
    storage.put_file(packed.path, f"{base}/modules/minilm.tar.gz")
    lines = "".join(f'{{"id": "row-{i}", "text": "{t}"}}\n' for i, t in enumerate(rows))
    (tmp_path / "in").mkdir(exist_ok=True)
    for part in range(2):
        storage.write_text(f"{base}/in/part-{part}.jsonl", "".join(lines.splitlines(True)[part::2]))
        (tmp_path / "in" / f"part-{part}.jsonl").write_text("".join(lines.splitlines(True)[part::2]))
    return base, f"{base}/modules/minilm.tar.gz#sha256={packed.sha256}"


@pytest.mark.long  # make test-long (CI runs it): two SDK worker processes, each loading minilm (~40 s)
@pytest.mark.timeout(600)
def test_two_sdk_workers_from_a_pool_match_the_in_process_run(beam_services, minilm_module, tmp_path):
    from hubbeam.pipeline.output import read_embeddings

    base, handle = _stage_job(minilm_module, tmp_path, TEXTS)

    local = hubbeam_cli("embed", "--input", tmp_path / "in" / "*.jsonl", "--output", tmp_path / "local",
                        "--module", minilm_module)
    assert local.returncode == 0, local.stderr[-3000:]
    pooled = hubbeam_cli("embed", "--input", f"{base}/in/*.jsonl", "--output", f"{base}/out", "--module", handle,
                         *beam_services.options, "--batch-size", "8", "--chunk-rows", "16")
    assert pooled.returncode == 0, pooled.stderr[-3000:]

    from hubbeam.pipeline.output import read_manifest

    manifest = read_manifest(f"{base}/out")
    reference = read_manifest(str(tmp_path / "local"))
    assert manifest["runner"] == "PortableRunner"
    for key in ("rows_read", "rows_embedded", "rows_rejected", "rejected_by_reason"):
        assert manifest[key] == reference[key], key
    # Two SDK worker processes shared the rows, and each loaded the module exactly once.
    metrics = manifest["metrics"]
    assert metrics["module_loads"] == metrics["worker_processes"] == 2 and metrics["batches"] > 1, metrics
    assert manifest["module"]["sha256"] == reference["module"]["sha256"]
    ids, vectors = read_embeddings(f"{base}/out")
    ref_ids, ref_vectors = read_embeddings(str(tmp_path / "local"))
    order, ref_order = np.argsort(ids), np.argsort(ref_ids)
    assert [ids[i] for i in order] == [ref_ids[i] for i in ref_order]
    np.testing.assert_allclose(vectors[order], ref_vectors[ref_order], atol=1e-6)
    assert _rejected_rows(f"{base}/out") == _rejected_rows(str(tmp_path / "local")) != []
    assert any((tmp_path / "pool-cache").rglob("saved_model.pb")), "the workers resolve the s3:// handle themselves"


def _rejected_rows(out: str) -> list[tuple]:
    """(id, reason) of every dead letter of a finished run (sources differ: s3:// vs a local folder)."""
    import pyarrow.parquet as pq

    from hubbeam.pipeline.output import read_manifest

    rows = []
    for entry in read_manifest(out)["outputs"]["rejected"]:
        with storage.open(storage.join(out, entry["file"])) as f:
            rows += [(r["id"], r["reason"]) for r in pq.read_table(f, columns=["id", "reason"]).to_pylist()]
    return sorted(rows)


@pytest.mark.long  # make test-long (CI runs it): a pool killed mid-run, then a rerun
@pytest.mark.timeout(600)
def test_a_pool_killed_mid_run_fails_the_job_in_one_line_and_a_rerun_completes(beam_services, minilm_module, tmp_path):
    from hubbeam.errors import HubbeamError
    from hubbeam.pipeline.output import read_embeddings, read_manifest

    texts = [f"{t} (variant {i})" for i, t in enumerate(TEXTS * 5)]
    base, handle = _stage_job(minilm_module, tmp_path, texts)
    command = [sys.executable, "-m", "hubbeam", "embed", "--input", f"{base}/in/*.jsonl", "--output", f"{base}/out",
               "--module", handle, *beam_services.options, "--batch-size", "8", "--chunk-rows", "16"]
    with open(tmp_path / "killed.log", "w") as log:
        launcher = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        # Mid-run: the SDK workers have resolved the module into their cache (loading or embedding with it).
        while not any(beam_services.cache.rglob("saved_model.pb")) and launcher.poll() is None:
            assert time.monotonic() < deadline, "the workers never resolved the module"
            time.sleep(0.2)
        assert launcher.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        beam_services.kill_pool()
        assert launcher.wait(timeout=180) == 1, (tmp_path / "killed.log").read_text()[-3000:]
    finally:
        if launcher.poll() is None:
            launcher.kill()
    last = (tmp_path / "killed.log").read_text().strip().splitlines()[-1]
    assert last.startswith("hubbeam: error: the PortableRunner job failed: ") and "left unfinished" in last, last
    with pytest.raises(HubbeamError, match="no finished hubbeam run"):
        read_manifest(f"{base}/out")

    beam_services.start_pool()
    rerun = hubbeam_cli(*command[3:])
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    manifest = read_manifest(f"{base}/out")
    assert manifest["rows_read"] == len(texts) and manifest["rows_embedded"] + manifest["rows_rejected"] == len(texts)
    ids, vectors = read_embeddings(f"{base}/out")
    assert sorted(ids) == sorted(f"row-{i}" for i, t in enumerate(texts) if t.strip())
    assert not [name for name in storage.list_dirs(f"{base}/out") if name.startswith(".staging-")]
