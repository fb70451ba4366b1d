"""Dataflow submission without Dataflow: `hubbeam embed --runner=DataflowRunner --dry_run=True`.

Beam's DataflowRunner with --dry_run=True translates the pipeline into a Dataflow job and returns before it
makes a Dataflow client: nothing is staged and --dataflow_job_file is not written. A dry run that only
translated would not show what a worker gets (the hubbeam package, the pipeline proto, the options), so
stage() does the rest of Beam's own `DataflowApplicationClient.create_job` -- create_job_description (the
packages and the pipeline proto to the staging location, the job's environment) and the job file -- and stops
before submit_job_description, the one request to the Dataflow service. With a GCS emulator
(STORAGE_EMULATOR_HOST) the whole dry run is offline and anonymous.
"""
from __future__ import annotations

from typing import TypedDict

from hubbeam.errors import HubbeamError

JOB_FILE = "dataflow_job.json"  # in the job's staging folder when --dataflow_job_file does not say where
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no", "")


def dry_run_arguments(args: list[str]) -> list[str]:
    """A bare `--dry_run` (how the DAG's command writes a true option) as `--dry_run=True`: Beam's --dry_run
    takes a value."""
    return ["--dry_run=True" if a == "--dry_run" else a for a in args]


def is_dry_run(value) -> bool:
    """A --dry_run value (a string from the command line, a bool from a DAG's beam_options, None) as a bool."""
    if isinstance(value, str):
        if value.strip().lower() not in _TRUE + _FALSE:
            raise HubbeamError(f"--dry_run={value}: expected True or False")
        return value.strip().lower() in _TRUE
    return bool(value)


def check_dry_run(options, runner: str) -> bool:
    """Whether this is a dry run; leaves TestOptions.dry_run a real bool.

    Beam keeps --dry_run as the string it was given, and any non-empty string is true to it, so
    `--dry_run=False` would be a dry run. Only DataflowRunner knows dry runs: every other runner would run the
    whole job, so a dry run for one of them is refused.
    """
    from apache_beam.options.pipeline_options import TestOptions

    test = options.view_as(TestOptions)
    test.dry_run = is_dry_run(test.dry_run)
    if test.dry_run and (runner or "").rsplit(".", 1)[-1].lower() not in ("dataflowrunner", "dataflow"):
        raise HubbeamError(f"--dry_run=True needs --runner=DataflowRunner (only it translates a job without "
                           f"running it; {runner} would run the whole job)")
    return test.dry_run


class StagedJob(TypedDict):
    """What a dry run staged (run_embed returns it instead of a manifest)."""

    dry_run: bool  # always True: tells it apart from a Manifest
    runner: str
    job_name: str
    project: str
    region: str
    staging_location: str
    job_file: str
    packages: list[str]


def stage(job, runner: str) -> StagedJob:
    """Stage a dry run's translated job (`result.job` of DataflowRunner) and write its job description.

    Returns what the CLI reports: job name, project, region, staging folder, job file, staged packages.
    """
    import io
    import os

    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import DebugOptions, GoogleCloudOptions
    from apache_beam.runners.dataflow.internal import apiclient

    cloud = job.options.view_as(GoogleCloudOptions)
    job_file = job.options.view_as(DebugOptions).dataflow_job_file or FileSystems.join(cloud.staging_location,
                                                                                        JOB_FILE)
    try:
        client = apiclient.DataflowApplicationClient(job.options, job.root_staging_location)
        client.create_job_description(job)
        folder, name = os.path.split(job_file)
        client.stage_file_with_retry(folder, name, io.BytesIO(job.json().encode("utf-8")))
    except OSError as exc:
        raise HubbeamError(f"Dataflow dry run: staging to {cloud.staging_location} failed: {exc}") from exc
    return {"dry_run": True, "runner": runner, "job_name": cloud.job_name, "project": cloud.project,
            "region": cloud.region, "staging_location": cloud.staging_location, "job_file": job_file,
            "packages": [p.location for pool in job.proto.environment.worker_pools for p in pool.packages]}


def summary(staged: StagedJob) -> str:
    packages = ", ".join(p.rsplit("/", 1)[-1] for p in staged["packages"]) or "none"
    return "\n".join([
        f"dry run: {staged['runner']} job {staged['job_name']} (project {staged['project']}, region "
        f"{staged['region']}) translated and staged, not submitted; the output folder is untouched",
        f"staged    {staged['staging_location']}: {packages}",
        f"job file  {staged['job_file']}",
    ])
