"""Whether an index may answer for some output folders: never silently for the wrong vectors.

An index answers only if it holds the same module's vectors (digest, signature, output, preprocessor) and
covers exactly the shards the outputs' manifests list now (name, sha256, rows), output by output. Outputs
are matched by their shards' digests, not by path, so a folder that moved (with its DIR/index) still
matches, and one embedded again (new shards) does not.
"""
from __future__ import annotations

from dataclasses import dataclass

from hubbeam.errors import HubbeamError
from hubbeam.index.layout import CoveredOutput, IndexManifest


@dataclass(frozen=True)
class Output:
    """A finished run's folder and manifest (hubbeam.pipeline.output.read_manifest)."""

    directory: str
    manifest: dict

    @property
    def module(self) -> dict:
        return self.manifest["module"]


def read_outputs(directories: list[str]) -> list[Output]:
    from hubbeam.pipeline.output import read_manifest

    return [Output(d, read_manifest(d)) for d in directories]


def _identity(module: dict) -> tuple:
    return (module["sha256"], module["signature"], module["output_key"], module.get("preprocessor_sha256"))


def check_same_module(outputs: list[Output]) -> None:
    """Vectors of different modules (or signatures, outputs, preprocessors) do not share one space."""
    first = outputs[0]
    for other in outputs[1:]:
        if _identity(other.module) != _identity(first.module):
            raise HubbeamError(f"{first.directory} and {other.directory} were embedded with different modules "
                               f"({first.module['handle']} sha256 {first.module['sha256']}, {other.module['handle']} "
                               f"sha256 {other.module['sha256']}, or another signature/output): index them apart")


def covered_output(output: Output) -> CoveredOutput:
    return {"directory": output.directory, "run_id": output.manifest.get("run_id", ""),
            "shards": [{"file": e["file"], "sha256": e["sha256"], "rows": int(e["rows"])}
                       for e in output.manifest["outputs"]["embeddings"]]}


def match(index: IndexManifest, outputs: list[Output]) -> list[int]:
    """For each output the index covers, the position of the given output it is; raises if any differ."""
    reason = stale_reason(index, outputs)
    if reason:
        raise HubbeamError(reason)
    return _pairing(index, outputs)


def _pairing(index: IndexManifest, outputs: list[Output]) -> list[int] | None:
    wanted = [covered_output(o)["shards"] for o in outputs]
    free = list(range(len(outputs)))
    pairing = []
    for covered in index["outputs"]:
        found = next((i for i in free if wanted[i] == covered["shards"]), None)
        if found is None:
            return None
        free.remove(found)
        pairing.append(found)
    return pairing if not free else None


def stale_reason(index: IndexManifest, outputs: list[Output]) -> str | None:
    """None if the index answers for exactly these outputs; else why not, as one line."""
    module = outputs[0].module
    if index["module"]["sha256"] != module["sha256"]:
        return (f"module mismatch: the index was built from vectors of module sha256 {index['module']['sha256']}, "
                f"but {outputs[0].directory} holds module sha256 {module['sha256']}: rebuild it (hubbeam index) "
                f"or search with --exact")
    if _identity({**index["module"]}) != _identity(module) or index["dim"] != int(module["dim"]):
        return (f"the index holds another signature, output or preprocessor than {outputs[0].directory}: rebuild "
                f"it (hubbeam index) or search with --exact")
    if _pairing(index, outputs) is None:
        runs = ", ".join(o["run_id"] or o["directory"] for o in index["outputs"])
        return (f"stale index: it covers run(s) {runs}, not the current shards of "
                f"{', '.join(o.directory for o in outputs)} (embedded again since?): rebuild it (hubbeam index) "
                f"or search with --exact")
    return None
