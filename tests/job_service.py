"""Beam's local job service, running each job on as many SDK workers as it asks for (`--sdk_worker_parallelism`),
as Flink's and Spark's job servers do with an EXTERNAL worker pool.

Beam 2.77's own `local_job_service_main` always runs one SDK worker per environment, whatever the job asks:
`BeamJob._invoke_runner` builds its FnApiRunner without the job's options, and `FnApiRunner.run_via_runner_api`
never reads a worker count (only `run_pipeline`, which the job service does not call, reads
`--direct_num_workers`). The Flink and Spark job servers, the real deployments, come only from Maven. This stand-in
changes exactly that one thing: the runner's worker count is the job's `--sdk_worker_parallelism`; the runner
then asks the pool for that many workers and splits each stage's input across them, as it does for
`--direct_num_workers`. Everything else is Beam's job service as shipped.
"""
import logging
import signal
import sys

from apache_beam.options.pipeline_options import PortableOptions
from apache_beam.portability.api import beam_job_api_pb2
from apache_beam.runners.portability import local_job_service, local_job_service_main
from apache_beam.runners.portability.fn_api_runner import fn_runner


def _invoke_runner(self):
    self.set_state(beam_job_api_pb2.JobState.RUNNING)
    options = self.pipeline_options()
    runner = fn_runner.FnApiRunner(provision_info=self._provision_info)
    runner._num_workers = max(1, int(options.view_as(PortableOptions).sdk_worker_parallelism or 1))  # a string here
    return runner.run_via_runner_api(self._pipeline_proto, options)


if __name__ == "__main__":
    local_job_service.BeamJob._invoke_runner = _invoke_runner
    signal.signal(signal.SIGTERM, lambda *args: sys.exit(0))
    logging.basicConfig(level=logging.INFO)
    local_job_service_main.run(sys.argv[1:])
