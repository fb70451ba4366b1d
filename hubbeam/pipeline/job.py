"""hubbeam's main job: a glob of shards -> embeddings Parquet, dead letters, manifest, _SUCCESS.

Run it as `hubbeam embed …` or `python -m hubbeam embed …` (what the embed_corpus DAG runs; hubbeam.cli owns
the flags). Unknown flags are Beam pipeline options and pass straight through, so the same command runs
in-process (the default: FnApiRunner, which never downloads anything), on `--direct_running_mode=
multi_processing --direct_num_workers=N`, or on Dataflow, Flink and Spark.
"""
from __future__ import annotations

import datetime as dt
import logging
import uuid

from hubbeam import __version__
from hubbeam.errors import HubbeamError, JobFailedError
from hubbeam.pipeline.dataflow import StagedJob
from hubbeam.pipeline.inputs import INPUT_KINDS
from hubbeam.pipeline.options import EmbedJob
from hubbeam.pipeline.output import JobMetrics, Manifest
from hubbeam.pipeline.sources import InputSpec, file_format_error, match_inputs

log = logging.getLogger(__name__)

DEFAULT_RUNNER = "FnApiRunner"
STATE_SAMPLING_MS = 20  # Beam's own is 200 (see quicker_bundle_ends)
EMBEDDED = ""  # the outcome tally's key for embedded rows; every other key is a rejection reason
_PARQUET_TYPE_ALIASES = {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float", "double",
                         "float32", "float64", "bool", "string", "large_string", "date32", "binary"}


def pipeline_options(beam_args: list[str]):
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
    # Runner-specific option classes register their flags on import (--flink_master, --spark_master_url, …).
    from apache_beam.runners.portability import flink_runner, spark_runner  # noqa: F401

    from hubbeam import storage
    from hubbeam.pipeline.dataflow import dry_run_arguments

    args = dry_run_arguments(list(beam_args))
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        args.append(f"--runner={DEFAULT_RUNNER}")
    args += storage.beam_arguments(args)
    try:
        options = PipelineOptions(args)
        runner = options.view_as(StandardOptions).runner
    except SystemExit:
        raise HubbeamError(f"invalid Beam pipeline options: {' '.join(beam_args)}") from None
    unknown = options.get_all_options(retain_unknown_options=True).keys() - options.get_all_options().keys()
    if unknown:
        raise HubbeamError(f"unknown option(s): {', '.join('--' + u for u in sorted(unknown))} "
                           "(see `hubbeam embed --help`; Beam's own options pass through)")
    return options, runner


def quicker_bundle_ends(period_ms: int = STATE_SAMPLING_MS) -> bool:
    """Shorten the sleep of Beam's state sampler in this process; returns whether it is period_ms now.

    Beam's SDK worker times each bundle's steps with a sampler thread that sleeps up to 200 ms between samples
    (DEFAULT_SAMPLING_PERIOD_MS), and the end of every bundle joins that thread: a bundle that ran for more
    than a second or so ends up to 200 ms after its last element (100 ms on average). An in-process runner
    runs its bundles in this process, so a local job waited that long at the end of its main stage. At 20 ms
    the sampler wakes 50 times a second (a C thread, without the GIL) and the wait is at most 20 ms. Beam
    takes the period as the constructor's default only, hence the default is changed; a Beam whose sampler
    no longer has that default is left as it is. Workers of other runners are other processes: untouched.
    """
    from apache_beam.runners.worker import statesampler

    init = statesampler.StateSampler.__init__
    if init.__defaults__ == (getattr(statesampler, "DEFAULT_SAMPLING_PERIOD_MS", None),):
        init.__defaults__ = (period_ms,)
    return init.__defaults__ == (period_ms,)


def spreads_work(options) -> bool:
    """Whether rows should be reshuffled across workers after reading.

    One in-process worker gains nothing from it and would hold the whole corpus in memory for the shuffle;
    without it, reading, embedding and writing fuse into one stage that streams in bounded memory. With
    several workers (or any distributed runner) the shuffle spreads the rows of a few big files over all
    of them.
    """
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    runner = options.view_as(StandardOptions).runner or DEFAULT_RUNNER
    direct = options.view_as(DirectOptions)
    in_process = runner in ("FnApiRunner", "DirectRunner", "BundleBasedDirectRunner")
    return not (in_process and (direct.direct_num_workers or 1) <= 1)


def _extra_types(job: EmbedJob, files: list[str]) -> dict:
    """Pass-through column types: kept from Parquet inputs when every input is Parquet, else strings."""
    if not job.keep_columns:
        return {}
    spec = InputSpec(kind="text", format=job.input_format)
    if all(spec.format_of(f) == "parquet" for f in files):
        import pyarrow.parquet as pq
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.open(files[0]) as f:
            schema = pq.ParquetFile(f).schema_arrow
        types = {}
        for column in job.keep_columns:
            if column not in schema.names:
                raise HubbeamError(f"--keep-columns: no column {column!r} in {files[0]} (columns: {', '.join(schema.names)})")
            alias = str(schema.field(column).type)
            types[column] = alias if alias in _PARQUET_TYPE_ALIASES else "string"
        return types
    return {column: "string" for column in job.keep_columns}


def build_pipeline(pipeline, job: EmbedJob, model, files: list[str], run_id: str, runner: str):
    """Add the whole job to pipeline: read -> embed -> write shards -> one final step (manifest, _SUCCESS).

    model is the launcher's ModelHandle, already loaded: in-process runners reuse that very model.
    """
    import apache_beam as beam
    from apache_beam.io import fileio

    from hubbeam.pipeline import output as out
    from hubbeam.pipeline.transforms import EMBED, INPUT_COUNTS, REJECTED, ReadRows

    described = model.acquire().description
    spec = InputSpec(kind=described.input_kind, format=job.input_format, id_column=job.id_column,
                     text_column=job.text_column, image_column=job.image_column, keep_columns=tuple(job.keep_columns),
                     chunk_rows=job.chunk_rows, max_text_chars=job.max_text_chars, tensors=job_feeds(job, described))
    schema = _embeddings_schema(job, described, files, run_id)
    staging = out.join(job.output, f"{out.STAGING_PREFIX}{run_id}")
    transform = EMBED[described.input_kind](
        model.pinned_to(described), schema=schema, batch_size=job.batch_size, chunk_rows=job.chunk_rows,
        image_size=job_image_size(job, described), reshuffle=spreads_work(pipeline.options))

    start = pipeline | "Match" >> beam.Create([job.input])  # what fileio.MatchFiles is; also the summary's start
    read = (start
            | "MatchAll" >> fileio.MatchAll()
            | "Open" >> fileio.ReadMatches()
            | "Read" >> beam.ParDo(ReadRows(spec)).with_outputs(REJECTED, INPUT_COUNTS, main="rows"))
    embedded = read.rows | "EmbedRows" >> transform
    rejected = (read[REJECTED], embedded[REJECTED]) | "AllRejected" >> beam.Flatten()
    summary = _write_outputs(embedded.embeddings, rejected, read[INPUT_COUNTS], start, staging, schema, job)

    manifest_base = _manifest_base(job, described, run_id, runner)

    def finalize(summary):
        reasons = {reason: n for reason, n in summary.outcomes.items() if reason != EMBEDDED}
        out.finalize(job.output, staging, list(summary.shards), list(summary.input_counts),
                     summary.outcomes.get(EMBEDDED, 0), sum(reasons.values()), reasons, summary.duplicates,
                     manifest_base)

    summary | "Finalize" >> beam.Map(finalize)


def _embeddings_schema(job: EmbedJob, described, files: list[str], run_id: str):
    from hubbeam.pipeline import output as out

    provenance = {**described.provenance(), "dtype": _dtype(job), "version": __version__,
                  "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "run_id": run_id}
    return out.embeddings_schema(described.dim, described.input_kind, _extra_types(job, files), provenance,
                                 job.float16)


def _dtype(job: EmbedJob) -> str:
    return "float16" if job.float16 else "float32"


def _write_outputs(embeddings, rejected, input_counts, start, staging: str, schema, job: EmbedJob):
    """Embedding tables and dead letters -> staged shards; returns what finalize needs to know of them and of
    the inputs, as one RunSummary (hubbeam.pipeline.shards): ShardFile records, rows read per input file, rows
    per outcome, the duplicate ids. start is a one-element PCollection: there is a summary even of nothing."""
    import apache_beam as beam

    from hubbeam.pipeline import output as out
    from hubbeam.pipeline import shards as S
    from hubbeam.pipeline.transforms import CoalesceTables

    tables = embeddings | "RowGroups" >> beam.ParDo(CoalesceTables())
    rejected_tables = rejected | "RejectedTables" >> beam.ParDo(S.RowsToTables(out.rejected_schema()))
    shards = (tables | "WriteEmbeddings" >> S.WriteShards(out.EMBEDDINGS_PREFIX, staging, schema, job.parquet_codec,
                                                          job.num_shards),
              rejected_tables | "WriteRejected" >> S.WriteShards(out.REJECTED_PREFIX, staging, out.rejected_schema(),
                                                                 job.parquet_codec, job.num_shards))
    repeated = (tables, rejected_tables) | "DuplicateIds" >> S.RepeatedIds()
    # Outcomes: rows embedded under EMBEDDED, rejected rows under their reason.
    outcomes = (tables | "TableRows" >> beam.Map(lambda t: (S.OUTCOME, (EMBEDDED, t.num_rows))),
                rejected | "Reasons" >> beam.Map(lambda r: (S.OUTCOME, (r.reason, 1))))
    return ((start | "Start" >> beam.Map(lambda _: (S.START, None)),
             input_counts | "InputCounts" >> beam.Map(lambda count: (S.INPUT_COUNT, count)),
             *shards, *outcomes, repeated)
            | "Summary" >> S.SummariseRun())


def _manifest_base(job: EmbedJob, described, run_id: str, runner: str):
    from hubbeam.pipeline.output import ManifestBase

    image_size = job_image_size(job, described)  # what the run resized to, whichever gave it
    base: ManifestBase = {
        "hubbeam_version": __version__,
        "run_id": run_id,
        "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
        "runner": runner,
        "input": job.input,
        "module": {"handle": described.handle, "sha256": described.sha256, "signature": described.signature,
                   "output_key": described.output_key, "dim": described.dim, "input_kind": described.input_kind,
                   "image_size": list(image_size) if image_size else None,
                   **({"input_map": {f.name: f.expression() for f in job_feeds(job, described)}}
                      if described.input_kind == "tensors" else {}),
                   "allow_unsafe_ops": job.allow_unsafe_ops, "unsafe_ops": _unsafe_ops(described),
                   **({"precision": _precision(described), "precision_asked_for": job.precision,
                       "precision_build_of": job.module} if job.precision else {}),
                   **({"preprocessor_handle": described.preprocessor_handle,
                       "preprocessor_sha256": described.preprocessor_sha256, "seq_length": described.seq_length}
                      if described.preprocessor_sha256 else {})},
        "dtype": _dtype(job),
        "batch_size": job.batch_size,
    }
    return base


def _precision(described) -> str | None:
    from hubbeam.hub.metadata import read_metadata

    return (read_metadata(described.path) or {}).get("precision", "fp32") if described.path else None


def job_image_size(job: EmbedJob, described) -> tuple[int, int] | None:
    """(height, width) the job resizes images to: a module's fixed size, else --image-size, else the size its
    metadata declares. None for text modules. A user error when there is none, or when --image-size asks a
    fixed-size module for another size (it could not take it)."""
    if described.input_kind != "image":
        return None
    asked = job.image_hw
    if described.image_size_fixed:
        if asked is not None and asked != described.image_size:
            raise HubbeamError(f"--image-size {asked[0]},{asked[1]}: {described.handle} takes images of exactly "
                               f"{described.image_size[0]},{described.image_size[1]}")
        return described.image_size
    size = asked or described.image_size
    if size is None:
        raise HubbeamError(f"{described.handle} takes images of any size and its metadata declares none: give "
                           "--image-size HEIGHT,WIDTH (e.g. --image-size 224,224)")
    return tuple(size)


def _refuse_an_encoder_without_its_preprocessor(described) -> None:
    """An encoder fine-tuned as a pair records its preprocessor: given alone (and no --input-map to feed its
    inputs from columns), the user surely meant the pair, so say which preprocessor instead of dead-lettering
    every row for a missing input_word_ids."""
    from hubbeam.hub.metadata import read_metadata
    from hubbeam.hub.pair import preprocessor_hint

    hint = preprocessor_hint(read_metadata(described.path) or {})
    if hint:
        raise HubbeamError(f"signature {described.signature!r} of {described.handle} takes several inputs "
                           f"({', '.join(described.input_names)}){hint} (or feed them from columns with --input-map)")


def job_feeds(job: EmbedJob, described) -> tuple:
    """The TensorFeed of each input for a multi-input signature (--input-map, or column = input name); ()
    for text and image modules, where --input-map is a user error."""
    from hubbeam.pipeline.inputs import plan_feeds
    from hubbeam.pipeline.options import parse_input_map

    if described.input_kind != "tensors":
        if job.input_map is not None:
            raise HubbeamError(f"--input-map is for a signature with several inputs; signature "
                               f"{described.signature!r} of {described.handle} takes {described.input_kind}")
        return ()
    input_map = parse_input_map(job.input_map) if job.input_map is not None else None
    return plan_feeds(described.input_tensors, input_map, f"signature {described.signature!r} of {described.handle}")


def _unsafe_ops(described) -> dict[str, list[str]]:
    """What the audit found and --allow-unsafe-ops let through, per serving function (provenance); a pair's
    preprocessor's functions are named preprocessor/NAME."""
    from hubbeam.hub.audit import audit_module

    found = {name: list(ops) for name, ops in sorted(audit_module(described.path).unsafe.items())}
    if described.preprocessor_path:
        found.update({f"preprocessor/{name}": list(ops)
                      for name, ops in sorted(audit_module(described.preprocessor_path).unsafe.items())})
    return found


def run_embed(job: EmbedJob, beam_args: list[str] = (), model=None) -> Manifest | StagedJob:
    """Run the job to completion; returns the manifest. Raises HubbeamError for anything the user can fix.

    With --runner=DataflowRunner --dry_run=True the job is translated and staged but not submitted
    (hubbeam.pipeline.dataflow); what was staged is returned instead of a manifest (its "dry_run" is True), and
    the output folder is left as it is: a dry run writes no output, so a finished earlier run stays valid.

    model: an already loaded ModelHandle for job.module (the benchmark passes one so load time stays apart).
    """
    import apache_beam as beam

    from hubbeam.pipeline import output as out
    from hubbeam.pipeline.model import ModelHandle, ModuleSpec, PairSpec

    from apache_beam.io.filesystems import FileSystems

    from hubbeam import storage
    from hubbeam.pipeline import dataflow

    options, runner = pipeline_options(list(beam_args))
    quicker_bundle_ends()
    dry_run = dataflow.check_dry_run(options, runner)
    FileSystems.set_options(options)  # the launcher lists inputs and prepares the output with them too
    storage.configure_beam_gcs()
    files = match_inputs(job.input)
    from hubbeam.modules.precision import module_for

    module, sha256 = module_for(job.module, job.precision, job.sha256) if model is None else (job.module, job.sha256)
    encoder = ModuleSpec(module, job.signature, job.output_key, sha256, job.allow_unsafe_ops)
    if model is None and job.preprocessor:
        model = ModelHandle(PairSpec(ModuleSpec(job.preprocessor, allow_unsafe_ops=job.allow_unsafe_ops), encoder,
                                     job.seq_length))
    model = model or ModelHandle(encoder)
    loaded = model.acquire()  # held until the run ends, so an in-process runner never loads it again
    described = loaded.description
    kind = described.input_kind
    if kind not in INPUT_KINDS:
        raise HubbeamError(f"signature {described.signature!r} of {described.handle} takes {kind} input "
                           f"({', '.join(described.input_names)}); hubbeam embed feeds {', '.join(INPUT_KINDS)}")
    if kind == "tensors" and job.input_map is None and described.path:
        _refuse_an_encoder_without_its_preprocessor(described)
    job_image_size(job, described)  # a dynamic-size module without --image-size fails here, before any work
    job_feeds(job, described)  # and a signature hubbeam cannot feed, or a wrong --input-map
    spec = InputSpec(kind=kind, format=job.input_format)
    usable = [f for f in files if file_format_error(spec, spec.format_of(f)) is None]
    if not usable:
        problem = file_format_error(spec, spec.format_of(files[0]))
        raise HubbeamError(f"none of the {len(files)} input files can feed this module: {files[0]} is {problem}")
    run_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
    if not dry_run:
        out.prepare_output_dir(job.output)
    try:
        pipeline = beam.Pipeline(options=options)
    except ValueError as exc:  # Beam's own validation: a Dataflow job without --project or a gs:// temp_location …
        problems = [line.strip() for line in str(exc).splitlines() if line.strip() and not line.strip().endswith(":")]
        raise HubbeamError(f"invalid Beam pipeline options: {' '.join(problems)}") from None
    build_pipeline(pipeline, job, model, files, run_id, runner)
    result = pipeline.run()
    if dry_run:
        return dataflow.stage(result.job, runner)
    try:
        result.wait_until_finish()
    except Exception as exc:  # noqa: BLE001 - each runner raises its own types; the message is what matters
        raise JobFailedError(f"the {runner} job failed: {_last_line(exc)}; {job.output} is left unfinished (no "
                             f"{out.SUCCESS}): re-run to replace it") from exc
    del loaded
    return out.add_metrics(job.output, job_metrics(result))


def _last_line(exc: Exception) -> str:
    """A remote runner's error is a whole worker traceback; its last line says what happened."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1][:500] if lines else type(exc).__name__


def job_metrics(result) -> JobMetrics | None:
    """The job's own Beam counters as the runner reports them (summed over steps): module_loads, bundles,
    batches, padded_chars, rows read/embedded/rejected, and worker_processes (processes that embedded rows).
    None when the runner reports no metrics."""
    try:
        counters = result.metrics().query()["counters"]
    except Exception:  # noqa: BLE001 - runners without metrics support raise their own types
        return None
    totals: dict[str, int] = {}
    workers = set()
    for counter in counters:
        namespace, name = counter.key.metric.namespace, counter.key.metric.name
        value = counter.committed if counter.committed is not None else counter.attempted
        if namespace == "hubbeam":
            totals[name] = totals.get(name, 0) + int(value or 0)
        elif namespace == "hubbeam.workers":
            workers.add(name)
    return {**dict(sorted(totals.items())), "worker_processes": len(workers)} if totals else None


def summary(manifest: Manifest | StagedJob, output: str) -> str:
    if manifest.get("dry_run"):
        from hubbeam.pipeline.dataflow import summary as dry_run_summary

        return dry_run_summary(manifest)
    reasons = ", ".join(f"{n} {r}" for r, n in manifest["rejected_by_reason"].items())
    module = manifest["module"]
    return "\n".join([
        f"embedded {manifest['rows_embedded']:,} of {manifest['rows_read']:,} rows"
        f" ({manifest['rows_rejected']:,} rejected{': ' + reasons if reasons else ''})"
        f" from {len(manifest['inputs'])} files in {manifest['seconds']:.1f} s ({manifest['rows_per_second']:,.0f} rows/s)",
        f"module    {module['handle']}  sha256 {module['sha256'][:16]}…  signature {module['signature']}  "
        f"output {module['output_key']}  dim {module['dim']}  runner {manifest['runner']}",
    ] + ([f"preprocessor {module['preprocessor_handle']}  sha256 {module['preprocessor_sha256'][:16]}…  "
          + (f"seq_length ≤ {module['seq_length']}" if module.get("seq_length") else "")]
         if module.get("preprocessor_sha256") else []) + [
        f"output    {output}: {len(manifest['outputs']['embeddings'])} embedding shard(s), "
        f"{len(manifest['outputs']['rejected'])} rejected shard(s), manifest.json, _SUCCESS",
    ] + ([f"duplicate ids: {manifest['duplicate_ids']:,} ids occur on more than one row (all kept; e.g. "
          f"{', '.join(map(repr, manifest['duplicate_id_examples'][:3]))})"] if manifest.get("duplicate_ids") else []))
