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
                               start_new_session=True)
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


@pytest.fixture
def beam_services(s3_bucket, tmp_path):
    """(job endpoint, worker pool endpoint): started as a deployment would, the pool with the environment's own
    python first on PATH (it starts SDK workers with `python`) and the same storage settings as the launcher."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "HUBBEAM_CACHE_DIR": str(tmp_path / "pool-cache")}
    port_file = tmp_path / "job-service.port"
    job_service = _started([sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                            "--port", "0", "--port_file", str(port_file)], env,
                           lambda: port_file.exists() and port_file.read_text().strip())
    pool_port = closed_port()
    pool = _started([sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                     f"--service_port={pool_port}"], env, lambda: _listening(pool_port))
    try:
        yield f"localhost:{port_file.read_text().strip()}", f"localhost:{pool_port}"
    finally:
        _stop(pool)
        _stop(job_service)


def test_two_sdk_workers_from_a_pool_match_the_in_process_run(beam_services, minilm_module, tmp_path):
    from hubbeam.export import pack
    from hubbeam.pipeline.output import read_embeddings

    job_endpoint, pool = beam_services
    base = f"s3://{S3_BUCKET}/pool-{uuid.uuid4().hex[:8]}"
    packed = pack(minilm_module, tmp_path / "minilm.tar.gz")
    storage.put_file(packed.path, f"{base}/modules/minilm.tar.gz")
    handle = f"{base}/modules/minilm.tar.gz#sha256={packed.sha256}"
    lines = "".join(f'{{"id": "row-{i}", "text": "{t}"}}\n' for i, t in enumerate(TEXTS))
    for part in range(2):
        storage.write_text(f"{base}/in/part-{part}.jsonl", "".join(lines.splitlines(True)[part::2]))
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / f"part-{part}.jsonl").write_text("".join(lines.splitlines(True)[part::2]))

    local = hubbeam_cli("embed", "--input", tmp_path / "in" / "*.jsonl", "--output", tmp_path / "local",
                        "--module", minilm_module)
    assert local.returncode == 0, local.stderr[-3000:]
    pooled = hubbeam_cli("embed", "--input", f"{base}/in/*.jsonl", "--output", f"{base}/out", "--module", handle,
                         "--runner=PortableRunner", f"--job_endpoint={job_endpoint}", "--environment_type=EXTERNAL",
                         f"--environment_config={pool}", "--sdk_worker_parallelism=2", "--batch-size", "8",
                         "--chunk-rows", "16")  # small chunks: enough elements for both workers to get some
    assert pooled.returncode == 0, pooled.stderr[-3000:]

    from hubbeam.pipeline.output import read_manifest

    manifest = read_manifest(f"{base}/out")
    reference = read_manifest(str(tmp_path / "local"))
    assert manifest["runner"] == "PortableRunner"
    for key in ("rows_read", "rows_embedded", "rows_rejected", "rejected_by_reason"):
        assert manifest[key] == reference[key], key
    # Each SDK worker process that embedded rows loaded the module once. (Beam's local job service gave this
    # small job one bundle, so one of the two workers did all of it: the count is not forced to 2 here.)
    metrics = manifest["metrics"]
    assert metrics["module_loads"] == metrics["worker_processes"] >= 1 and metrics["batches"] > 1, metrics
    assert manifest["module"]["sha256"] == reference["module"]["sha256"]
    ids, vectors = read_embeddings(f"{base}/out")
    ref_ids, ref_vectors = read_embeddings(str(tmp_path / "local"))
    order, ref_order = np.argsort(ids), np.argsort(ref_ids)
    assert [ids[i] for i in order] == [ref_ids[i] for i in ref_order]
    np.testing.assert_allclose(vectors[order], ref_vectors[ref_order], atol=1e-6)
    assert any((tmp_path / "pool-cache").rglob("saved_model.pb")), "the workers resolve the s3:// handle themselves"
