"""What a module's serving functions can do besides math: a module is a program, so read it before running it.

A SavedModel's functions may hold any TensorFlow op: `ReadFile` on a credentials file, `WriteFile` over a DAG,
`MatchingFiles` to walk a disk. The audit reads `saved_model.pb` as data (nothing is executed) and walks, for
each signature and for `__call__`, everything it can run: the graph backwards from the signature's outputs,
every function it calls (`StatefulPartitionedCall`, `If`/`While`/`Case` branches and bodies, …) and the
functions those call, to any depth. It reports

- file ops (`ReadFile`, `WriteFile`, `MatchingFiles`, checkpoint and summary writers, file-reading datasets …),
- Python callbacks (`PyFunc`, `EagerPyFunc`: code outside the module),
- ops that are not in TensorFlow's core op set (custom kernels, e.g. tensorflow-text's tokenizers).

`load` refuses a module whose serving functions hold file ops unless told otherwise (allow_unsafe_ops).
Restoring variables and initialising vocabulary tables happen at load time, in functions no signature
calls: they are not serving ops and are not reported.
"""
from __future__ import annotations

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
})
PY_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"})
# What loading legitimately does with files of the module itself: restore variables, fill vocabulary tables.
LOAD_TIME_FILE_OPS = frozenset({"Restore", "RestoreV2", "RestoreSlice", "InitializeTableFromTextFile",
                                "InitializeTableFromTextFileV2"})
CALL = "__call__"
LOAD_TIME = "(load time)"  # the init ops hub.load runs: TF2's __saved_model_init_op, TF1's main/init ops
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
    """The module's serving functions touch files (or run outside Python); refused unless allowed."""


def audit_module(path: str | Path) -> ModuleAudit:
    """Read the module's saved_model.pb and audit each signature (and `__call__`); nothing is executed."""
    from hubbeam import tfenv

    tfenv.tensorflow()  # the protobuf classes live in TensorFlow's package
    from tensorflow.core.protobuf import saved_model_pb2

    model = saved_model_pb2.SavedModel()
    proto = Path(path) / "saved_model.pb"
    try:
        model.ParseFromString(proto.read_bytes())
    except (OSError, ValueError) as exc:
        raise ModuleFormatError(f"cannot read {proto}: {exc}") from exc
    functions: dict[str, FunctionAudit] = {}
    for meta_graph in model.meta_graphs:
        walker = _Walker(meta_graph.graph_def)
        init = []
        for name, signature in meta_graph.signature_def.items():
            outputs = [t.name for t in signature.outputs.values()]
            if name.startswith("__saved_model"):  # TF's own init op: runs at load, not a callable signature
                init += outputs
                continue
            functions[name] = walker.audit_outputs(outputs)
        call = _call_functions(meta_graph)
        if call:
            functions[CALL] = walker.audit_functions(call)
        for collection in _TF1_INIT_COLLECTIONS:
            init += list(meta_graph.collection_def[collection].node_list.value)
        if init:
            audit = walker.audit_outputs(init)
            functions[LOAD_TIME] = FunctionAudit(audit.file_ops, audit.py_ops, audit.custom_ops, load_time=True)
    return ModuleAudit(functions)


def check_module(path: str | Path, handle: str, allow_unsafe_ops: bool = False) -> ModuleAudit:
    """The audit, after refusing a module with unsafe serving ops (unless allow_unsafe_ops)."""
    audit = audit_module(path)
    if audit.unsafe and not allow_unsafe_ops:
        found = "; ".join(f"{name!r} calls {', '.join(ops)}" for name, ops in sorted(audit.unsafe.items()))
        raise UnsafeModuleError(f"{handle} reaches outside the model ({found}): a module is code; read "
                                "`hubbeam inspect` and pass --allow-unsafe-ops (allow_unsafe_ops=True) only for "
                                "a module you trust")
    return audit


def _call_functions(meta_graph) -> list[str]:
    """The concrete functions behind the root object's `__call__` (TF2 reusable SavedModels)."""
    graph = meta_graph.object_graph_def
    if not graph.nodes:
        return []
    for child in graph.nodes[0].children:
        if child.local_name == CALL:
            node = graph.nodes[child.node_id]
            if node.WhichOneof("kind") == "function":
                return list(node.function.concrete_functions)
    return []


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


def _core_ops() -> frozenset[str]:
    """TensorFlow's core op set: the ops tf.raw_ops exposes (custom kernels, once loaded, are not in it)."""
    from hubbeam import tfenv

    tf = tfenv.tensorflow()
    return frozenset(name for name in dir(tf.raw_ops) if not name.startswith("_"))
