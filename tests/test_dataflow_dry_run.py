"""Dataflow submission without Dataflow: `hubbeam embed --runner=DataflowRunner --dry_run=True` against the GCS
emulator translates the job and stages it offline (hubbeam.pipeline.dataflow); the staged hubbeam wheel installs
into a clean virtualenv and runs `python -m hubbeam embed` there, as a Dataflow worker would; the embed_corpus
DAG's plan task turns its runner / beam_options Params into the same command, and that command stages a job too.

Everything runs for real: the CLI and the DAG's command in subprocesses, Beam's own DataflowRunner and stager,
the emulator. Only the one request to the Dataflow service is never made (that is what a dry run is)."""
import base64
import bz2
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import uuid
from pathlib import Path

import numpy as np
import pytest

from hubbeam import storage
from tests.cli import hubbeam_cli
from tests.servers import SENTENCES

pytest_plugins = ["tests.servers"]

ROOT = Path(__file__).resolve().parents[1]
STABLE_STEPS = {"Match", "Open", "Read", "EmbedRows", "Finalize"}  # the job's spine (shard writers may change)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """hubbeam's wheel, built offline from a copy of what the Docker image copies (pyproject.toml, README.md,
    hubbeam/), so that the build leaves nothing in the working tree."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "hubbeam", source / "hubbeam", ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "--no-index", str(source), "-w", str(base / "dist")],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (path,) = (base / "dist").glob("hubbeam-*.whl")
    return path


@pytest.fixture
def lake(gcs_bucket, hub_module) -> dict:
    """A fresh prefix in the emulator's bucket: SENTENCES as JSONL input, the module as a pinned gs:// tarball."""
    base = f"gs://{gcs_bucket}/dataflow-{uuid.uuid4().hex[:8]}"
    storage.write_text(storage.join(base, "in", "part-0.jsonl"),
                       "".join(json.dumps({"id": f"s{i}", "text": t}) + "\n" for i, t in enumerate(SENTENCES)))
    return {"base": base, "input": f"{base}/in/*.jsonl", "output": f"{base}/out",
            "module": f"gs://{gcs_bucket}/wordvec.tar.gz#sha256={hub_module.archive_sha256}",
            "project": "hubbeam-test", "region": "europe-west4", "temp": f"{base}/tmp", "job_file": f"{base}/job.json"}


def dataflow_options(lake: dict, wheel: Path) -> dict:
    """The Beam options of a Dataflow dry run, as a DAG's beam_options would hold them."""
    return {"project": lake["project"], "region": lake["region"], "temp_location": lake["temp"], "dry_run": True,
            "extra_package": str(wheel), "dataflow_job_file": lake["job_file"]}


def gs_url(location: str) -> str:
    """A Dataflow package location (`storage.googleapis.com/BUCKET/OBJECT`) as a gs:// URL."""
    prefix = "storage.googleapis.com/"
    assert location.startswith(prefix), location
    return "gs://" + location[len(prefix):]


def strings(value, key=""):
    """(key, string) for every string in a JSON document; a display data item's value is under its own key."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from strings(v, value["key"] if k == "value" and isinstance(value.get("key"), str) else k)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v, key)
    elif isinstance(value, str):
        yield key, value


def local_paths(text: str, roots: list[str]) -> list[str]:
    return [root for root in roots if root in text]


def staged_job(lake: dict):
    """The job description the dry run wrote, and the pipeline proto it points at (Runner v2 keeps the steps
    there, not in the job's JSON)."""
    from apache_beam.portability.api import beam_runner_api_pb2

    job = json.loads(storage.read_text(lake["job_file"]))
    options = job["environment"]["sdkPipelineOptions"]["options"]
    pipeline = beam_runner_api_pb2.Pipeline.FromString(storage.read_bytes(options["pipelineUrl"]))
    return job, options, pipeline


def expected_steps(lake: dict, hub_module) -> set[str]:
    """The top-level steps of hubbeam's job, built here by build_pipeline (so that steps added to the job later
    are expected without editing this test)."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from hubbeam.pipeline.job import EmbedJob, build_pipeline
    from hubbeam.pipeline.model import ModelHandle, ModuleSpec

    job = EmbedJob(input=lake["input"], output=lake["output"], module=str(hub_module.folder))
    pipeline = beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"]))
    build_pipeline(pipeline, job, ModelHandle(ModuleSpec(job.module)), [], "run", "FnApiRunner")
    proto = pipeline.to_runner_api()
    transforms = proto.components.transforms
    roots = list(proto.root_transform_ids)
    while len(roots) == 1 and transforms[roots[0]].subtransforms:
        roots = list(transforms[roots[0]].subtransforms)  # Beam's one root transform holds the job's steps
    return {transforms[t].unique_name for t in roots}


def test_dry_run_translates_and_stages_the_job_offline(lake, wheel, hub_module, tmp_path_factory):
    """The job description Dataflow would get: every step, hubbeam as the staged wheel, the module as its gs://
    handle, no local path; and a finished earlier output left valid (a dry run writes no output)."""
    from apache_beam.portability.api import beam_runner_api_pb2

    storage.write_text(storage.join(lake["output"], "_SUCCESS"), "")
    storage.write_text(storage.join(lake["output"], "manifest.json"), "{}")

    run = hubbeam_cli("embed", "--input", lake["input"], "--output", lake["output"], "--module", lake["module"],
                      "--runner=DataflowRunner", *[f"--{k}={v}" for k, v in dataflow_options(lake, wheel).items()])
    assert run.returncode == 0, run.stderr[-3000:]
    assert "dry run: DataflowRunner job" in run.stdout and lake["job_file"] in run.stdout, run.stdout
    assert set(storage.find(lake["output"])) == {"_SUCCESS", "manifest.json"}

    job, options, pipeline = staged_job(lake)
    assert job["type"] == "JOB_TYPE_BATCH" and job["name"] == options["job_name"]
    assert (options["runner"], options["project"], options["region"]) == ("DataflowRunner", lake["project"],
                                                                           lake["region"])
    staging = options["staging_location"]
    assert staging.startswith(lake["temp"] + "/") and options["temp_location"] == staging

    # every step of hubbeam's job, by name
    names = {t.unique_name for t in pipeline.components.transforms.values()}
    steps = expected_steps(lake, hub_module)
    assert STABLE_STEPS <= steps and steps <= names, steps - names

    # the module as the gs:// handle (the launcher's pin replaced by the tree digest it checked), in the step
    # that embeds
    display = {}
    for transform in pipeline.components.transforms.values():
        if transform.unique_name.startswith("EmbedRows/"):
            for item in transform.display_data:
                labelled = beam_runner_api_pb2.LabelledPayload.FromString(item.payload)
                display[labelled.key] = labelled.string_value
    assert display["module"] == lake["module"].split("#")[0]
    assert display["module_sha256"] == hub_module.tree_sha256

    # hubbeam staged as the --extra_package wheel, every package really in the staging folder
    (pool,) = job["environment"]["workerPools"]
    packages = {p["name"]: gs_url(p["location"]) for p in pool["packages"]}
    assert wheel.name in packages and "extra_packages.txt" in packages, packages
    assert all(url.startswith(staging + "/") and storage.exists(url) for url in packages.values()), packages
    assert storage.read_bytes(packages[wheel.name]) == wheel.read_bytes()
    assert storage.read_text(packages["extra_packages.txt"]).split() == [wheel.name]
    assert pool["workerHarnessContainerImage"].endswith(":2.77.0")

    # no local path in the job: not in its JSON (but for --extra_package, which Beam records as given; workers
    # get the staged copy), not in what the steps carry (the launcher's module cache is under the base temp
    # folder), not in the staged main session
    roots = [str(tmp_path_factory.getbasetemp()), str(ROOT), str(Path.home()) + "/", "file:"]
    leaks = [(key, s) for key, s in strings(job) if key != "extra_packages" and
             (s.startswith(("/", "./", "~")) or local_paths(s, roots))]
    assert leaks == []
    assert options["extra_packages"] == [str(wheel)]
    base_temp = str(tmp_path_factory.getbasetemp()).encode()
    for transform in pipeline.components.transforms.values():
        for item in transform.display_data:
            assert base_temp not in item.payload, transform.unique_name
        if transform.spec.urn == "beam:transform:pardo:v1":  # the pickled DoFns (they do name the source files
            # of their code, under ROOT and the venv: only data taken from the launcher's temp folders would leak)
            fn = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload).do_fn.payload
            assert base_temp not in bz2.decompress(base64.b64decode(fn)), transform.unique_name
    if "pickled_main_session" in packages:
        assert base_temp not in storage.read_bytes(packages["pickled_main_session"])


def test_the_staged_wheel_runs_the_job_in_a_clean_venv(lake, wheel, hub_reference, tmp_path):
    """What a Dataflow worker does with the staged package: install it (no index, no dependencies: the worker
    image has them) and run hubbeam from it. The clean venv sees this venv's site-packages as a plain path (as an
    image's pre-installed packages), but not hubbeam itself: its editable install is a .pth file there, and
    .pth files are only read in a site directory."""
    run = hubbeam_cli("embed", "--input", lake["input"], "--output", lake["output"], "--module", lake["module"],
                      "--runner=DataflowRunner", *[f"--{k}={v}" for k, v in dataflow_options(lake, wheel).items()])
    assert run.returncode == 0, run.stderr[-3000:]
    job, _, _ = staged_job(lake)
    (pool,) = job["environment"]["workerPools"]
    staged = tmp_path / "staged" / wheel.name
    storage.get_file(next(gs_url(p["location"]) for p in pool["packages"] if p["name"] == wheel.name), staged)

    venv = tmp_path / "worker-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "worker-image.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    where = tmp_path / "elsewhere"  # outside the repository: `python -m hubbeam` must not find ./hubbeam
    where.mkdir()

    def in_venv(*args, timeout=300):
        return subprocess.run([str(python), *map(str, args)], capture_output=True, text=True, cwd=where, env=env,
                              timeout=timeout)

    before = in_venv("-c", "import numpy, apache_beam; import hubbeam")
    assert before.returncode != 0 and "No module named 'hubbeam'" in before.stderr, before.stderr[-2000:]
    # pip from the image's packages; --ignore-installed: never look at (or uninstall) the editable install there
    installed = in_venv("-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", staged)
    assert installed.returncode == 0, installed.stderr[-3000:]
    found = in_venv("-c", "import hubbeam; print(hubbeam.__file__)")
    assert found.returncode == 0, found.stderr[-2000:]
    assert Path(found.stdout.strip()).is_relative_to(purelib), found.stdout

    output = f"{lake['base']}/worker-out"
    embedded = in_venv("-m", "hubbeam", "embed", "--input", lake["input"], "--output", output,
                       "--module", lake["module"])
    assert embedded.returncode == 0, embedded.stderr[-3000:]
    from hubbeam.pipeline.output import read_embeddings, read_manifest

    manifest = read_manifest(output)
    assert (manifest["rows_read"], manifest["rows_embedded"], manifest["rows_rejected"]) == (5, 4, 1)
    ids, vectors = read_embeddings(output)
    expected = {f"s{i}": hub_reference[i] for i, text in enumerate(SENTENCES) if text}
    assert sorted(ids) == sorted(expected)
    np.testing.assert_allclose(vectors, np.stack([expected[i] for i in ids]), rtol=1e-6)


def test_the_dag_passes_runner_and_beam_options_through(lake, wheel, tmp_path):
    """embed_corpus's plan task (its real callable, with the Params a user would set over the DAG's defaults) gives the command its
    embed task runs (support.beam_command); that command stages a Dataflow job like the CLI invocation, and the
    check task skips. The tasks' callables run without the scheduler: dag.test() would add a metadata database
    and a minute, and the BashOperator would only run the same command."""
    params = {"module": lake["module"], "signature": None, "output_key": None, "input_kind": "auto",
              "input": lake["input"], "output": lake["output"], "corpus_root": str(tmp_path / "corpus"),
              "embeddings_root": str(tmp_path / "embeddings"), "runner": "DataflowRunner", "batch_size": 32,
              "allow_unsafe_ops": False, "beam_options": dataflow_options(lake, wheel)}
    code = f"""
import json, sys
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk.exceptions import AirflowSkipException
from hubbeam.orchestration import airflow_support
bag = DagBag(dag_folder={str(ROOT / "dags" / "embed_corpus.py")!r})
assert not bag.import_errors, bag.import_errors
dag = bag.dags["embed_corpus"]
defaults = {{key: dag.params.get_param(key).value for key in dag.params}}  # Params the test does not set
runs = dag.get_task("plan").python_callable(params={{**defaults, **json.loads(sys.argv[1])}})
try:
    dag.get_task("check").python_callable(runs=runs, outlet_events=None)
    skipped = None
except AirflowSkipException as exc:
    skipped = str(exc)
print(json.dumps({{"commands": [airflow_support.beam_command(run) for run in runs], "check": skipped}}))
"""
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    planned = subprocess.run([sys.executable, "-c", code, json.dumps(params)], capture_output=True, text=True,
                             env=env, timeout=300)
    assert planned.returncode == 0, planned.stderr[-3000:]
    result = json.loads(planned.stdout.strip().splitlines()[-1])
    assert "dry run" in result["check"]  # check skips: a dry run leaves no output to check
    (command,) = result["commands"]
    args = shlex.split(command)
    assert args[:4] == [sys.executable, "-m", "hubbeam", "embed"]
    for flag in ["--runner=DataflowRunner", "--dry_run", f"--project={lake['project']}",
                 f"--region={lake['region']}", f"--temp_location={lake['temp']}", f"--extra_package={wheel}",
                 f"--dataflow_job_file={lake['job_file']}", f"--input={lake['input']}",
                 f"--output={lake['output']}", f"--module={lake['module']}", "--batch_size=32"]:
        assert flag in args, (flag, args)

    run = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "dry run: DataflowRunner job" in run.stdout, run.stdout
    job, options, _ = staged_job(lake)
    assert (options["project"], options["region"], options["dry_run"]) == (lake["project"], lake["region"], True)
    assert wheel.name in {p["name"] for p in job["environment"]["workerPools"][0]["packages"]}
    assert not storage.exists(storage.join(lake["output"], "_SUCCESS"))  # nothing ran


@pytest.mark.parametrize("args, message", [
    (["--dry_run=True"], "--dry_run=True needs --runner=DataflowRunner"),
    (["--runner=DataflowRunner", "--dry_run=maybe"], "--dry_run=maybe: expected True or False"),
])
def test_a_dry_run_other_runners_cannot_do_is_refused(args, message, tmp_path):
    """Only DataflowRunner knows --dry_run: any other runner would run the whole job."""
    from hubbeam.errors import HubbeamError
    from hubbeam.pipeline.job import EmbedJob, run_embed

    job = EmbedJob(input=str(tmp_path / "*.jsonl"), output=str(tmp_path / "out"), module=str(tmp_path / "none"))
    with pytest.raises(HubbeamError, match=re.escape(message)):
        run_embed(job, args)


def test_a_dataflow_job_without_its_options_is_refused_in_one_line(hub_module, tmp_path):
    """Beam's own validation of a Dataflow job (project, region, a gs:// temp_location) as one clear error."""
    (tmp_path / "in.jsonl").write_text(json.dumps({"id": "a", "text": "the cat"}) + "\n")
    run = hubbeam_cli("embed", "--input", tmp_path / "in.jsonl", "--output", tmp_path / "out", "--module",
                      hub_module.folder, "--runner=DataflowRunner", "--dry_run=True", f"--temp_location={tmp_path}")
    assert run.returncode == 2, run.stderr[-3000:]
    error = [line for line in run.stderr.splitlines() if line.startswith("hubbeam: error:")]
    assert len(error) == 1 and "Missing required option: project." in error[0], run.stderr[-3000:]
    assert f"Invalid GCS path ({tmp_path})" in error[0] and "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()
