"""Scan a legacy model (Keras 2 `.h5`, tf-keras SavedModel) for code before anything in it is deserialized.

A Lambda layer in an `.h5` file is marshalled Python bytecode, run when the file is loaded; a custom
class runs whatever its module says; a SavedModel graph can read, write and list files when it runs.
These functions only parse the files (JSON with h5py, protobuf messages): nothing is loaded or called.
Each finding is a short string such as "Lambda layer 'lambda'" or "op WriteFile"; no findings = clean.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

# TensorFlow's own list: `saved_model_cli scan` (tensorflow/python/tools/saved_model_cli.py, _OP_DENYLIST).
TF_SCAN_DENYLIST = frozenset({"WriteFile", "ReadFile", "PrintV2"})
# Ours on top, every name checked against tf.raw_ops of TF 2.21: ops that run Python, touch the file
# system (read, write, list, map, print to a file), write summaries or debug dumps, or reach the network.
EXTRA_DENYLIST = frozenset({
    # Python code
    "PyFunc", "PyFuncStateless", "EagerPyFunc",
    # files: read, write, list, map, file-system settings, descriptor files
    "MatchingFiles", "FileSystemSetConfiguration", "ImmutableConst", "DecodeProtoV2", "EncodeProto", "Print",
    # readers
    "WholeFileReader", "WholeFileReaderV2", "TextLineReader", "TextLineReaderV2", "TFRecordReader",
    "TFRecordReaderV2", "FixedLengthRecordReader", "FixedLengthRecordReaderV2", "LMDBReader",
    # datasets that read or write files, or talk to a tf.data service
    "TFRecordDataset", "TFRecordDatasetV2", "FixedLengthRecordDataset", "FixedLengthRecordDatasetV2",
    "TextLineDataset", "MatchingFilesDataset", "ExperimentalMatchingFilesDataset", "LMDBDataset",
    "ExperimentalLMDBDataset", "CSVDataset", "CSVDatasetV2", "ExperimentalCSVDataset", "SqlDataset",
    "ExperimentalSqlDataset", "SaveDataset", "SaveDatasetV2", "LoadDataset", "SnapshotDataset",
    "SnapshotDatasetV2", "SnapshotDatasetReader", "SnapshotNestedDatasetReader", "SnapshotChunkDataset",
    "ListSnapshotChunksDataset", "DistributedSave", "DatasetToTFRecord", "ExperimentalDatasetToTFRecord",
    "CacheDataset", "CacheDatasetV2", "DataServiceDataset", "DataServiceDatasetV2", "DataServiceDatasetV3",
    "DataServiceDatasetV4", "RegisterDataset", "RegisterDatasetV2",
    # lookup tables and checkpoint remapping read from files
    "InitializeTableFromTextFile", "InitializeTableFromTextFileV2", "GenerateVocabRemapping", "LoadAndRemapMatrix",
    # summary writers
    "CreateSummaryFileWriter", "CreateSummaryDbWriter", "WriteSummary", "WriteScalarSummary",
    "WriteHistogramSummary", "WriteImageSummary", "WriteAudioSummary", "WriteGraphSummary",
    "WriteRawProtoSummary", "ImportEvent",
    # debugger ops dump tensors to file:// or grpc:// URLs
    "DebugIdentity", "DebugIdentityV2", "DebugIdentityV3", "DebugNanCount", "DebugNumericSummary",
    # running functions elsewhere
    "RemoteCall",
})
OP_DENYLIST = TF_SCAN_DENYLIST | EXTRA_DENYLIST
# Every SavedModel has these in its own save/restore functions; anywhere else they write or read files.
CHECKPOINT_WRITE_OPS = frozenset({"SaveV2", "Save", "SaveSlices", "MergeV2Checkpoints"})
CHECKPOINT_READ_OPS = frozenset({"RestoreV2", "Restore", "RestoreSlice"})

# Serialized helpers that are not layers, and layers that hold code (refused even though built in).
CONFIG_HELPERS = frozenset({"Functional", "Model", "Sequential", "InputSpec", "TensorShape", "TypeSpec",
                            "TensorSpec", "__tuple__", "__ellipsis__", "__slice__", "Policy"})
CODE_LAYERS = frozenset({"Lambda", "TFOpLambda", "SlicingOpLambda"})
# TFOpLambda layers (tf-keras functional models built with raw TF calls) name a TF API symbol: only pure math.
SAFE_TF_SYMBOL_PREFIXES = ("math.", "nn.", "__operators__.")
SAFE_TF_SYMBOLS = frozenset({"cast", "reshape", "concat", "stack", "transpose", "expand_dims", "squeeze",
                             "clip_by_value", "identity", "split", "where", "maximum", "minimum"})
KERAS_PACKAGES = ("keras", "tf_keras")


def refusal(path: Path, findings: list[str]) -> str:
    """The one-line refusal that names what was found (the first few, then a count)."""
    shown = ", ".join(findings[:4]) + (f" and {len(findings) - 4} more" if len(findings) > 4 else "")
    return f"{path.name} holds code: {shown}; import refused (use --trust-model-code if you trust this file)"


def scan_model(path: Path, model_format: str) -> list[str]:
    """Findings for a legacy model; Keras 3 `.keras` files load in safe mode and need no scan."""
    if model_format == "tf-keras-h5":
        return scan_h5(path)
    if model_format == "tf-keras-savedmodel":
        return scan_savedmodel(path)
    return []


# --- Keras configs (.h5 `model_config`, SavedModel keras_metadata.pb) -----------------------------


def scan_h5(path: Path) -> list[str]:
    """Read the `model_config` attribute as JSON (h5py only, nothing deserialized) and check every object."""
    import h5py

    try:
        with h5py.File(path, "r") as file:
            raw = file.attrs.get("model_config")
    except OSError:
        return []  # not HDF5 at all: the loader says so, with nothing in it to run
    if raw is None:
        return []  # weights only: the loader refuses it, and there is no config to run
    text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
    try:
        return scan_config(json.loads(text))
    except json.JSONDecodeError:
        return ["a model config that is not JSON"]


def scan_keras_metadata(folder: Path) -> list[str]:
    """Check the Keras layer configs a tf-keras SavedModel keeps in keras_metadata.pb, if it has one."""
    metadata_file = folder / "keras_metadata.pb"
    if not metadata_file.is_file():
        return []
    from tf_keras.protobuf import saved_metadata_pb2

    metadata = saved_metadata_pb2.SavedMetadata()
    try:
        metadata.ParseFromString(metadata_file.read_bytes())
        return dedupe(finding for node in metadata.nodes for finding in scan_config(json.loads(node.metadata)))
    except Exception:  # noqa: BLE001 - a corrupt file is a finding, not a crash
        return ["an unreadable keras_metadata.pb"]


def scan_config(config: Any) -> list[str]:
    """Walk every nested value; each dict with a `class_name` is a serialized object to check."""
    return dedupe(finding for obj in serialized_objects(config) for finding in object_findings(obj))


def serialized_objects(value: Any) -> Iterator[dict[str, Any]]:
    """Every dict with a `class_name` anywhere in a config: layers, nested models, wrapped layers, cells,
    initializers, regularizers, constraints."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("class_name"), str):
                yield item
            stack.extend(reversed(item.values()))
        elif isinstance(item, list):
            stack.extend(reversed(item))


def object_findings(obj: dict[str, Any]) -> list[str]:
    """What is wrong with one serialized object: a code layer, a class that is not built in, a foreign module."""
    class_name: str = obj["class_name"]
    config = obj.get("config") if isinstance(obj.get("config"), dict) else {}
    name = config.get("name") or obj.get("name") or "?"
    if class_name in ("TFOpLambda", "SlicingOpLambda") and safe_tf_symbol(str(config.get("function", ""))):
        return []
    if class_name in CODE_LAYERS:
        return [f"{class_name} layer '{name}'"]
    findings = []
    if class_name not in builtin_class_names():
        findings.append(f"custom class '{class_name}' ('{name}')")
    module = obj.get("module")
    if isinstance(module, str) and module.split(".")[0] not in KERAS_PACKAGES:
        findings.append(f"module '{module}' ('{name}')")
    registered = obj.get("registered_name")
    if isinstance(registered, str) and ">" in registered and registered.split(">")[0] not in KERAS_PACKAGES:
        findings.append(f"registered class '{registered}' ('{name}')")
    return findings


def safe_tf_symbol(symbol: str) -> bool:
    """True for a TFOpLambda's TF symbol that only computes (tf.math.*, tf.nn.*, operators, reshapes)."""
    return symbol.startswith(SAFE_TF_SYMBOL_PREFIXES) or symbol in SAFE_TF_SYMBOLS


@functools.lru_cache(maxsize=1)
def builtin_class_names() -> frozenset[str]:
    """Class names tf-keras itself provides: layers, models, initializers, regularizers, constraints."""
    import tf_keras

    namespaces = [tf_keras.layers, tf_keras.models, tf_keras.initializers, tf_keras.regularizers,
                  tf_keras.constraints, tf_keras.layers.experimental.preprocessing]
    names = {name for namespace in namespaces for name, value in vars(namespace).items() if inspect.isclass(value)}
    return frozenset((names | CONFIG_HELPERS) - CODE_LAYERS)


# --- SavedModel graphs ---------------------------------------------------------------------------


def scan_savedmodel(folder: Path) -> list[str]:
    """Parse saved_model.pb as a protobuf message (no loading) and check every graph and function op."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    try:
        saved_model.ParseFromString((folder / "saved_model.pb").read_bytes())
    except (DecodeError, OSError):
        return ["an unreadable saved_model.pb"]
    op_findings = [finding for meta_graph in saved_model.meta_graphs for finding in graph_findings(meta_graph)]
    return dedupe([*op_findings, *scan_keras_metadata(folder)])


def graph_findings(meta_graph: Any) -> list[str]:
    """Denied ops in the graph and its whole function library; checkpoint ops only in the saver's own functions."""
    library = {function.signature.name: function for function in meta_graph.graph_def.library.function}
    calls = {name: called_functions(function.node_def, library) for name, function in library.items()}
    saver = meta_graph.saver_def
    saver_nodes = {"save": saver.save_tensor_name.split(":")[0], "restore": saver.restore_op_name.split(":")[0]}
    roots: dict[str, set[str]] = {"save": set(), "restore": set(), "model": set()}
    for node in meta_graph.graph_def.node:
        part = next((key for key, name in saver_nodes.items() if name and node.name == name), "model")
        roots[part] |= called_functions([node], library)
    save = reachable(roots["save"], calls)
    restore = reachable(roots["restore"], calls)
    # anything not reached only through the saver counts as model code, reachable or not
    model = reachable(roots["model"] | (library.keys() - save - restore), calls)
    allowed = {name: allowed_checkpoint_ops(name in save, name in restore, name in model) for name in library}
    findings = [op_finding(node.op, frozenset(), library) for node in meta_graph.graph_def.node]
    findings += [op_finding(node.op, allowed[name], library) for name, function in library.items()
                 for node in function.node_def]
    return dedupe(finding for finding in findings if finding)


def allowed_checkpoint_ops(in_save: bool, in_restore: bool, in_model: bool) -> frozenset[str]:
    """Checkpoint ops a function may hold: writes in the saver's save function, reads in its restore one."""
    if in_model or (in_save and in_restore):
        return frozenset()
    return CHECKPOINT_WRITE_OPS if in_save else CHECKPOINT_READ_OPS if in_restore else frozenset()


def op_finding(op: str, allowed: frozenset[str], library: dict[str, Any]) -> str | None:
    """A finding for one node's op: denied, a checkpoint op out of place, or an op TensorFlow does not know."""
    from tensorflow.python.framework import op_def_registry

    if op in OP_DENYLIST:
        return f"op {op}"
    if op in (CHECKPOINT_WRITE_OPS | CHECKPOINT_READ_OPS) - allowed:
        return f"op {op} outside the checkpoint functions"
    if op not in library and op_def_registry.get(op) is None:
        return f"unknown op {op} (a custom kernel library)"
    return None


def called_functions(nodes: Iterable[Any], library: dict[str, Any]) -> set[str]:
    """Library functions the nodes call: as their op, or through function-valued attributes."""
    names: set[str] = set()
    for node in nodes:
        if node.op in library:
            names.add(node.op)
        for value in node.attr.values():
            if value.HasField("func"):
                names.add(value.func.name)
            names.update(function.name for function in value.list.func)
    return names & library.keys()


def reachable(roots: set[str], calls: dict[str, set[str]]) -> set[str]:
    """Every function reached from `roots` through the call graph."""
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        name = stack.pop()
        if name not in seen:
            seen.add(name)
            stack.extend(calls.get(name, ()))
    return seen


def dedupe(findings: Iterable[str]) -> list[str]:
    """Findings in first-seen order, each once."""
    return list(dict.fromkeys(findings))
