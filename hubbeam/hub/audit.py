"""What a module's serving functions can do besides math: a module is a program, so read it before running it.

A SavedModel's functions may hold any TensorFlow op: `ReadFile` on a credentials file, `WriteFile` over a DAG,
`MatchingFiles` to walk a disk. The audit reads `saved_model.pb` (or `.pbtxt`) as data (nothing is executed)
and walks everything the module can run: for each signature, the graph backwards from its outputs; every
function the object graph holds (`__call__`, the signatures as TF2's loader builds them, resource
initialisers, any other method); the init ops `hub.load` runs; and through each of them every function it
calls (`StatefulPartitionedCall`, `If`/`While`/`Case` branches and bodies, …), to any depth. It reports

- file ops (`ReadFile`, `WriteFile`, `MatchingFiles`, checkpoint and summary writers, file-reading datasets …),
- Python callbacks (`PyFunc`, `EagerPyFunc`: code outside the module),
- ops that are not in TensorFlow's core op set (custom kernels, e.g. tensorflow-text's tokenizers).

`load` refuses a module whose functions hold file ops or Python callbacks unless told otherwise
(allow_unsafe_ops). At load time, restoring variables and filling vocabulary tables from files
(`RestoreV2`, `InitializeTableFromTextFileV2`) are expected and reported but not refused; anything else that
touches files there is refused like a serving op. Functions that only save checkpoints (the saver's) are not
walked: loading never runs them.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from hubbeam.errors import HubbeamError, ModuleFormatError

FILE_OPS = frozenset({
    "ReadFile", "WriteFile", "MatchingFiles", "DeleteFile", "ImmutableConst",
    "Save", "SaveV2", "SaveSlices", "Restore", "RestoreV2", "RestoreSlice", "MergeV2Checkpoints",
    "LoadAndRemapMatrix", "InitializeTableFromTextFile", "InitializeTableFromTextFileV2",
    "WholeFileReader", "WholeFileReaderV2", "TextLineReader", "TextLineReaderV2", "TFRecordReader",
    "TFRecordReaderV2", "FixedLengthRecordReader", "FixedLengthRecordReaderV2",
    "TFRecordDataset", "TFRecordDatasetV2", "TextLineDataset", "FixedLengthRecordDataset",
    "FixedLengthRecordDatasetV2", "SaveDataset", "SaveDatasetV2", "LoadDataset", "SnapshotDataset",
    "SnapshotDatasetV2", "SnapshotDatasetReader", "SnapshotChunkDataset", "DatasetToTFRecord",
    "ExperimentalDatasetToTFRecord", "CreateSummaryFileWriter", "WriteSummary", "WriteRawProtoSummary",
    "WriteScalarSummary", "WriteHistogramSummary", "WriteImageSummary", "WriteAudioSummary",
    "WriteGraphSummary", "DebugIdentityV2", "DebugIdentityV3", "PrintV2 to a file",
    "CacheDataset", "CacheDatasetV2", "MatchingFilesDataset", "ExperimentalMatchingFilesDataset", "CSVDataset",
    "CSVDatasetV2", "ExperimentalCSVDataset", "SqlDataset", "ExperimentalSqlDataset", "LMDBDataset",
    "ExperimentalLMDBDataset", "LMDBReader", "CreateSummaryDbWriter", "GenerateVocabRemapping",
    "FixedUnigramCandidateSampler", "DecodeProtoV2", "EncodeProto", "Skipgram",
    "DatasetFromGraph",  # runs a serialized graph held in a constant: nothing inside it can be audited
})
PY_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"})
# What loading legitimately does with files of the module itself: restore variables, fill vocabulary tables.
LOAD_TIME_FILE_OPS = frozenset({"Restore", "RestoreV2", "RestoreSlice", "InitializeTableFromTextFile",
                                "InitializeTableFromTextFileV2"})
CALL = "__call__"
LOAD_TIME = "(load time and other functions)"  # init ops hub.load runs, resource initialisers, other methods
_TF1_INIT_COLLECTIONS = ("saved_model_main_op", "legacy_init_op", "table_initializer")


@dataclass(frozen=True)
class FunctionAudit:
    """What one serving function (a signature, or `__call__`) can reach."""

    file_ops: tuple[str, ...] = ()
    py_ops: tuple[str, ...] = ()
    custom_ops: tuple[str, ...] = ()  # not in TensorFlow's core op set
    load_time: bool = False

    @property
    def unsafe(self) -> tuple[str, ...]:
        """The ops refused by default: they reach the file system, or run Python from outside the module
        (at load time, restoring variables and filling tables from the module's own files is expected)."""
        file_ops = set(self.file_ops) - (LOAD_TIME_FILE_OPS if self.load_time else set())
        return tuple(sorted({*file_ops, *self.py_ops}))


@dataclass(frozen=True)
class ModuleAudit:
    functions: dict[str, FunctionAudit] = field(default_factory=dict)

    @property
    def unsafe(self) -> dict[str, tuple[str, ...]]:
        """Serving function -> the ops refused by default, for those that have any."""
        return {name: audit.unsafe for name, audit in self.functions.items() if audit.unsafe}

    def as_dict(self) -> dict:
        return {name: {"file_ops": list(a.file_ops), "py_ops": list(a.py_ops), "custom_ops": list(a.custom_ops)}
                for name, a in sorted(self.functions.items())}


class UnsafeModuleError(HubbeamError):
    """The module's functions touch files or call back into Python; refused unless allowed."""


def audit_module(path: str | Path) -> ModuleAudit:
    """Read the module's saved_model.pb (or .pbtxt) and audit everything it can run; nothing is executed.
    Audits are kept per file version, so loading after inspecting does not parse the graph again."""
    folder = Path(path)
    proto = folder / "saved_model.pb"
    if not proto.is_file() and (folder / "saved_model.pbtxt").is_file():
        proto = folder / "saved_model.pbtxt"
    try:
        stat = proto.stat()
    except OSError as exc:
        raise ModuleFormatError(f"cannot read {proto}: {exc.strerror}") from exc
    return _audit_file(str(proto), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=32)
def _audit_file(proto: str, mtime_ns: int, size: int) -> ModuleAudit:
    from hubbeam import tfenv

    tfenv.tensorflow()  # the protobuf classes live in TensorFlow's package
    from google.protobuf import message, text_format
    from tensorflow.core.protobuf import saved_model_pb2

    model = saved_model_pb2.SavedModel()
    try:
        data = Path(proto).read_bytes()
        if proto.endswith(".pbtxt"):
            text_format.Parse(data.decode("utf-8"), model)
        else:
            model.ParseFromString(data)
    except (OSError, ValueError, UnicodeDecodeError, message.DecodeError, text_format.ParseError) as exc:
        raise ModuleFormatError(f"cannot read {proto}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from exc
    audits: dict[str, list[FunctionAudit]] = {}
    for meta_graph in model.meta_graphs:
        walker = _Walker(meta_graph.graph_def)
        init = []
        for name, signature in meta_graph.signature_def.items():
            outputs = [t.name for t in signature.outputs.values()]
            if name.startswith("__saved_model"):  # TF's own init op: runs at load, not a callable signature
                init += outputs
            else:
                audits.setdefault(name, []).append(walker.audit_outputs(outputs))
        for name, functions in _object_functions(meta_graph).items():
            if name == LOAD_TIME:
                continue
            audits.setdefault(name, []).append(walker.audit_functions(functions))
        for collection in _TF1_INIT_COLLECTIONS:
            init += list(meta_graph.collection_def[collection].node_list.value)
        restore = meta_graph.saver_def.restore_op_name
        init += [restore] if restore else []
        loading = walker.audit_outputs(init)
        others = walker.audit_functions(_object_functions(meta_graph).get(LOAD_TIME, []))
        audits.setdefault(LOAD_TIME, []).append(_merged([loading, others], load_time=True))
    merged = {name: _merged(found, load_time=name == LOAD_TIME) for name, found in audits.items()}
    return ModuleAudit({name: a for name, a in merged.items() if name != LOAD_TIME or a.file_ops or a.py_ops
                        or a.custom_ops})


def _merged(audits: list[FunctionAudit], load_time: bool = False) -> FunctionAudit:
    """One function's audit over several meta graphs (a name in one graph must not hide it in another)."""
    def union(field: str) -> tuple[str, ...]:
        return tuple(sorted({op for audit in audits for op in getattr(audit, field)}))

    return FunctionAudit(union("file_ops"), union("py_ops"), union("custom_ops"), load_time=load_time)


def check_module(path: str | Path, handle: str, allow_unsafe_ops: bool = False) -> ModuleAudit:
    """The audit, after refusing a module with unsafe serving ops (unless allow_unsafe_ops)."""
    audit = audit_module(path)
    if audit.unsafe and not allow_unsafe_ops:
        found = "; ".join(f"{name!r} calls {', '.join(ops)}" for name, ops in sorted(audit.unsafe.items()))
        raise UnsafeModuleError(f"{handle} reaches outside the model ({found}): a module is code; read "
                                "`hubbeam inspect` and pass --allow-unsafe-ops (allow_unsafe_ops=True) only for "
                                "a module you trust")
    return audit


def _object_functions(meta_graph) -> dict[str, list[str]]:
    """Every concrete function the object graph holds (what TF2's loader restores and may call), by name:
    `__call__`, each signature (as the loader builds `obj.signatures`, which need not match signature_def),
    and LOAD_TIME for the rest (resource initialisers, other methods)."""
    graph = meta_graph.object_graph_def
    if not graph.nodes:
        return {}
    names: dict[int, str] = {}
    root = graph.nodes[0]
    for child in root.children:
        if child.local_name == CALL:
            names[child.node_id] = CALL
        elif child.local_name == "signatures":
            for signature in graph.nodes[child.node_id].children:
                names[signature.node_id] = signature.local_name
    found: dict[str, list[str]] = {}
    for node_id, node in enumerate(graph.nodes):
        kind = node.WhichOneof("kind")
        if kind == "function":
            functions = list(node.function.concrete_functions)
        elif kind == "bare_concrete_function":
            functions = [node.bare_concrete_function.concrete_function_name]
        else:
            continue
        found.setdefault(names.get(node_id, LOAD_TIME), []).extend(functions)
    return found


class _Walker:
    """Collects the ops reachable from a graph's tensors or its library functions, through every call."""

    def __init__(self, graph_def):
        self.nodes = {node.name: node for node in graph_def.node}
        self.library = {f.signature.name: f for f in graph_def.library.function}
        self._core = _core_ops()

    def audit_outputs(self, tensors: list[str]) -> FunctionAudit:
        ops, seen, stack = set(), set(), [t.split(":")[0].lstrip("^") for t in tensors]
        functions: list[str] = []
        while stack:
            name = stack.pop()
            if name in seen or name not in self.nodes:
                continue
            seen.add(name)
            node = self.nodes[name]
            ops.add(_op_name(node))
            functions += self._called(node)
            stack += [i.split(":")[0].lstrip("^") for i in node.input]
        return self._summary(ops | self._function_ops(functions))

    def audit_functions(self, names: list[str]) -> FunctionAudit:
        return self._summary(self._function_ops(names))

    def _function_ops(self, names: list[str]) -> set[str]:
        ops, seen, stack = set(), set(), list(names)
        while stack:
            name = stack.pop()
            if name in seen or name not in self.library:
                continue
            seen.add(name)
            for node in self.library[name].node_def:
                ops.add(_op_name(node))
                stack += self._called(node)
        return ops

    def _called(self, node) -> list[str]:
        """Functions a node runs: by attribute (f, then_branch, body, branches, …) or as its op itself."""
        called = [node.op] if node.op in self.library else []
        for value in node.attr.values():
            if value.HasField("func"):
                called.append(value.func.name)
            called += [f.name for f in value.list.func]
        return called

    def _summary(self, ops: set[str]) -> FunctionAudit:
        real = {op for op in ops if op not in self.library}
        return FunctionAudit(file_ops=tuple(sorted(real & FILE_OPS)), py_ops=tuple(sorted(real & PY_OPS)),
                             custom_ops=tuple(sorted(op for op in real if op not in self._core and op not in FILE_OPS)))


def _op_name(node) -> str:
    """The op, or what it does where the attributes decide: tf.print to stderr is harmless, to a file is not."""
    if node.op == "PrintV2" and node.attr["output_stream"].s.startswith(b"file://"):
        return "PrintV2 to a file"
    return node.op


@functools.cache
def _core_ops() -> frozenset[str]:
    """TensorFlow's core op set: the ops tf.raw_ops exposes (custom kernels, once loaded, are not in it)."""
    from hubbeam import tfenv

    tf = tfenv.tensorflow()
    return frozenset(name for name in dir(tf.raw_ops) if not name.startswith("_"))
