"""Scan a legacy model (Keras 2 `.h5`, tf-keras SavedModel) for code before anything in it is deserialized.

A Lambda layer in an `.h5` file is marshalled Python bytecode, run when the file is loaded; a custom
class runs whatever its module says; a SavedModel graph can read, write and list files when it runs; an
HDF5 dataset can keep its bytes in another file, which HDF5 reads when the weights are read.
These functions only parse the files (JSON with h5py, protobuf messages): nothing is loaded or called.
A clean file is then rebuilt from its Keras config with only its variables read (training.importer), so
the op scan below is a second line: no graph from the file runs without --trust-model-code.
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
    # running functions elsewhere, datasets rebuilt from a serialized graph, other file readers
    "RemoteCall", "DatasetFromGraph", "DeserializeIterator", "RecordInput", "FixedUnigramCandidateSampler",
})
OP_DENYLIST = TF_SCAN_DENYLIST | EXTRA_DENYLIST
# Every SavedModel has these in its own save/restore functions; anywhere else they write or read files.
CHECKPOINT_WRITE_OPS = frozenset({"SaveV2", "Save", "SaveSlices", "MergeV2Checkpoints"})
CHECKPOINT_READ_OPS = frozenset({"RestoreV2", "Restore", "RestoreSlice"})

# Serialized helpers that are not layers, and layers that hold code (refused even though built in).
CONFIG_HELPERS = frozenset({"Functional", "Model", "Sequential", "InputSpec", "TensorShape", "TypeSpec",
                            "TensorSpec", "__tuple__", "__ellipsis__", "__slice__", "Policy"})
CODE_LAYERS = frozenset({"Lambda", "TFOpLambda", "SlicingOpLambda"})
# What tf-keras writes for an object whose class or config it could not save: it revives one from the
# saved graphs.
PLAIN_CLASSES = frozenset({"Layer"})
UNSAVED_CONFIG_KEY = "layer was saved without config"
# keras_metadata.pb nodes of compiled metrics: never revived when the model is rebuilt from its config.
METRIC_IDENTIFIER = "_tf_keras_metric"
# Filters built into the HDF5 library (and h5py's LZF); any other id makes HDF5 load a plugin library.
BUILTIN_HDF5_FILTERS = frozenset({1, 2, 3, 4, 5, 6, 32000})
# Layer config keys whose string value is a file the layer reads when it is built (a vocabulary file).
FILE_CONFIG_KEYS = frozenset({"vocabulary"})
# TFOpLambda layers (tf-keras functional models built with raw TF calls) name a TF API symbol: only pure math.
SAFE_TF_SYMBOL_PREFIXES = ("math.", "nn.", "__operators__.")
SAFE_TF_SYMBOLS = frozenset({"cast", "reshape", "concat", "stack", "transpose", "expand_dims", "squeeze",
                             "clip_by_value", "identity", "split", "where", "maximum", "minimum"})
KERAS_PACKAGES = ("keras", "tf_keras")


def refusal(path: Path, findings: list[str]) -> str:
    """The one-line refusal that names what was found (the first few, then a count)."""
    shown = ", ".join(findings[:4]) + (f" and {len(findings) - 4} more" if len(findings) > 4 else "")
    return printable(f"{path.name} holds code: {shown}; import refused (use --trust-model-code if you trust this file)")


def printable(text: str, limit: int = 600) -> str:
    """Names come from the file: escape what is not printable, so a refusal stays one line, and cut it."""
    text = "".join(char if char.isprintable() else ascii(char)[1:-1] for char in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def scan_model(path: Path, model_format: str) -> list[str]:
    """Findings for a legacy model; Keras 3 `.keras` files load in safe mode and need no scan."""
    if model_format == "tf-keras-h5":
        return scan_h5(path)
    if model_format == "tf-keras-savedmodel":
        return scan_savedmodel(path)
    return []


# --- Keras configs (.h5 `model_config`, SavedModel keras_metadata.pb) -----------------------------


def scan_h5(path: Path) -> list[str]:
    """Check the file's HDF5 structure and its `model_config` (read with h5py as JSON, nothing deserialized)."""
    import h5py

    try:
        file = h5py.File(path, "r")
    except OSError:
        return []  # not HDF5 at all: the loader says so, with nothing in it to run
    with file:
        try:
            findings = hdf5_findings(file)
        except (OSError, RuntimeError, KeyError, ValueError):  # a damaged object tree is a finding, not a crash
            findings = ["an unreadable HDF5 object tree"]
        try:
            text = model_config_text(file)
        except ValueError as error:
            return dedupe([*findings, str(error)])
    if text is None:
        return findings  # weights only: the loader refuses it, and there is no config to run
    return dedupe([*findings, *config_text_findings(text)])


def model_config_text(file: Any) -> str | None:
    """The `model_config` attribute as text, None when there is none; ValueError (a finding) when it is no text."""
    try:
        raw = file.attrs.get("model_config")
    except (OSError, UnicodeDecodeError, TypeError, ValueError):
        raise ValueError("a model config that cannot be read") from None
    if isinstance(raw, bytes):
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("a model config that is not UTF-8") from None
    if raw is not None and not isinstance(raw, str):
        raise ValueError("a model config that is not text")
    return raw


def config_text_findings(text: str) -> list[str]:
    """Findings of a JSON model config; one that is not JSON or not a Keras object is a finding itself."""
    try:
        config = json.loads(text)
    except (ValueError, RecursionError):
        return ["a model config that is not JSON"]
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        return ["a model config that is not a Keras model"]
    return scan_config(config)


def hdf5_findings(file: Any) -> list[str]:
    """Links out of the file's own tree and datasets whose bytes HDF5 would fetch from elsewhere."""
    import h5py

    findings: list[str] = []

    def visit(name: str, link: Any) -> None:
        if isinstance(link, h5py.SoftLink):
            findings.append(f"HDF5 soft link '{name}'")
        elif isinstance(link, h5py.ExternalLink):
            findings.append(f"HDF5 external link '{name}' (to another file)")
        elif isinstance(dataset := file.get(name), h5py.Dataset):
            findings.extend(dataset_findings(name, dataset))

    file.visititems_links(visit)  # hard links are followed, soft and external ones only reported
    return findings


def dataset_findings(name: str, dataset: Any) -> list[str]:
    """A dataset stored in other files (external storage, virtual) or behind a filter HDF5 loads as a plugin."""
    import h5py

    plist = dataset.id.get_create_plist()
    findings = []
    if plist.get_layout() == h5py.h5d.VIRTUAL:
        findings.append(f"HDF5 virtual dataset '{name}' (its data is in other files)")
    if plist.get_external_count():
        findings.append(f"HDF5 external storage for '{name}' (its data is in another file)")
    plugins = {plist.get_filter(index)[0] for index in range(plist.get_nfilters())} - BUILTIN_HDF5_FILTERS
    findings += [f"HDF5 filter {code} on '{name}' (a plugin library)" for code in sorted(plugins)]
    return findings


def scan_keras_metadata(folder: Path) -> list[str]:
    """Check the Keras objects a tf-keras SavedModel keeps in keras_metadata.pb, if it has one: every layer
    and model needs a config of built-in classes, or tf-keras would revive it from the file's graphs."""
    if not (folder / "keras_metadata.pb").is_file():
        return []
    try:
        nodes = [(node.identifier, json.loads(node.metadata)) for node in keras_metadata(folder).nodes]
    except Exception:  # noqa: BLE001 - a corrupt file is a finding, not a crash
        return ["an unreadable keras_metadata.pb"]
    return dedupe(finding for identifier, metadata in nodes for finding in node_findings(identifier, metadata))


def keras_metadata(folder: Path) -> Any:
    """The parsed keras_metadata.pb of a SavedModel folder (a protobuf message; nothing is revived)."""
    from tf_keras.protobuf import saved_metadata_pb2

    metadata = saved_metadata_pb2.SavedMetadata()
    metadata.ParseFromString((folder / "keras_metadata.pb").read_bytes())
    return metadata


def node_findings(identifier: str, metadata: Any) -> list[str]:
    """One keras_metadata.pb node: the object and its config (a compiled model's metrics are never revived)."""
    if identifier == METRIC_IDENTIFIER:
        return []
    if not isinstance(metadata, dict):
        return ["an unreadable keras_metadata.pb"]
    name = metadata.get("name") if isinstance(metadata.get("name"), str) else "?"
    if not isinstance(metadata.get("config"), dict):
        return [f"'{name}' saved without a config"]
    return scan_config({"class_name": metadata.get("class_name"), "config": metadata["config"], "name": name})


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
    if config.get(UNSAVED_CONFIG_KEY):
        return [f"'{name}' saved without a config"]
    if class_name in PLAIN_CLASSES:
        return [f"plain {class_name} '{name}' (its class was not saved)"]
    findings = [f"{class_name} '{name}' reads its {key} from a file" for key in sorted(FILE_CONFIG_KEYS)
                if isinstance(config.get(key), str)]
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
