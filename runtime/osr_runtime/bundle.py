"""Model bundles: a folder of ONNX graphs plus ``manifest.json``, the config that travels with them.

The export stage (``osr_export``) writes the manifest with `write_manifest`; the runtime reads it
with `load_bundle`; nothing else guesses a model's parameters. A bundle folder holds::

    manifest.json        format, model parameters, graphs, sha256 of every file, sources,
                         exporter versions, validation figures
    encoder.onnx         lq (N,3,H,W) in [0,1]      -> z  (N,4,H/8,W/8) = posterior mean x scaling
    unet.onnx            z                          -> x0 (N,4,H/8,W/8)  (UNet at t*, x0 recovery)
    decoder.onnx         x0, lq                     -> sr (N,3,H,W) in [0,1] (colour fix in-graph)
    unet.onnx.data       external data, only for graphs over 2 GB

`load_bundle` refuses a bundle whose format version it does not know, a file whose size or sha256
differs from the manifest, a file that is not listed (dotfiles aside), a path or an ONNX external
data location that leaves the folder, and graphs whose inputs/outputs are not the required ones.
It needs only the standard library (the ONNX files are read with a minimal protobuf scanner).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path, PurePosixPath, PureWindowsPath
from types import MappingProxyType
from typing import Any, Literal

from osr_runtime.errors import BundleError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "REQUIRED_GRAPHS",
    "Bundle",
    "FileEntry",
    "GraphSpec",
    "Manifest",
    "TensorSpec",
    "load_bundle",
    "sha256_file",
    "write_manifest",
]

FORMAT = "osr-bundle"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"

Precision = Literal["fp32", "fp16"]
ColorFix = Literal["adain", "wavelet", "none"]
PRECISIONS: tuple[str, ...] = ("fp32", "fp16")
COLOR_FIXES: tuple[str, ...] = ("adain", "wavelet", "none")
LAYOUTS: tuple[str, ...] = ("split",)
PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction", "sample")

#: role -> (input names, output names) every split bundle must provide, in this order.
REQUIRED_GRAPHS: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]] = MappingProxyType(
    {
        "encoder": (("lq",), ("z",)),
        "unet": (("z",), ("x0",)),
        "decoder": (("x0", "lq"), ("sr",)),
    }
)


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: its name, element type and shape (ints fixed, strings symbolic)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX graph of the bundle (``file`` and ``external_data`` are relative to the folder)."""

    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int
    external_data: tuple[str, ...] = ()


@dataclass(frozen=True)
class FileEntry:
    """A file of the bundle with its size in bytes and sha256 (hex)."""

    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    """The parsed ``manifest.json`` of a bundle (see the module docstring).

    ``timestep`` is t*, ``alpha_bar`` is ᾱ at t*; ``latent_downscale`` is the VAE's spatial factor
    (8) and ``size_multiple`` the multiple that H and W must be. ``sources``, ``exporter`` and
    ``validation`` are free-form JSON records of where the model came from and how it was checked.
    """

    name: str
    scale: int
    patch_size: int
    timestep: int
    alpha_bar: float
    latent_scaling_factor: float
    latent_channels: int
    latent_downscale: int
    size_multiple: int
    prediction_type: str
    color_fix: str
    precision: str
    layout: str
    graphs: Mapping[str, GraphSpec]
    files: tuple[FileEntry, ...] = ()
    sources: Mapping[str, Any] = field(default_factory=dict)
    exporter: Mapping[str, Any] = field(default_factory=dict)
    validation: Mapping[str, Any] = field(default_factory=dict)
    created: str = ""
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written to ``manifest.json``."""
        out: dict[str, Any] = {"format": FORMAT, "format_version": self.format_version}
        for f in fields(self):
            if f.name != "format_version":
                out[f.name] = getattr(self, f.name)
        out["graphs"] = {role: _graph_to_dict(g) for role, g in self.graphs.items()}
        out["files"] = [asdict(f) for f in self.files]
        out["sources"] = _plain(self.sources)
        out["exporter"] = _plain(self.exporter)
        out["validation"] = _plain(self.validation)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        """Parse and type-check a manifest; raises `BundleError` naming the bad field."""
        return _manifest_from_dict(data)


@dataclass(frozen=True)
class Bundle:
    """A validated bundle folder: its absolute path and manifest."""

    path: Path
    manifest: Manifest

    def graph_path(self, role: str) -> Path:
        """Absolute path of the graph file of ``role`` ("encoder", "unet" or "decoder")."""
        try:
            return self.path / self.manifest.graphs[role].file
        except KeyError:
            raise BundleError(
                f"bundle {self.path} has no graph {role!r}; it has {sorted(self.manifest.graphs)}"
            ) from None


# ---------------------------------------------------------------------------------------------
# reading


def load_bundle(path: str | os.PathLike[str], *, verify_hashes: bool = True) -> Bundle:
    """Load and validate the bundle folder at ``path``.

    Checks, in order: the folder and its manifest exist and parse; the format and its version are
    known; every listed file lies inside the folder (no absolute path, no ``..``, no symlink out),
    exists with the listed size and (with ``verify_hashes``) sha256; no unlisted file is present
    (dotfiles aside); the graphs are the required ones, each listed, with the required input and
    output names (read from the ONNX file itself); every external-data location inside an ONNX
    file is a listed file inside the folder. Raises `BundleError` on the first failure.
    """
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"model bundle {root} does not exist or is not a folder")
    root = root.resolve()
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError(f"{root} is not a model bundle: it has no {MANIFEST_NAME}")
    try:
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"cannot read {manifest_path}: {exc}") from exc
    manifest = Manifest.from_dict(data)

    # 1. files: inside the folder, present, of the listed size and hash.
    listed: dict[str, FileEntry] = {}
    for entry in manifest.files:
        rel = _normalise_relpath(entry.path, what="file")
        if rel in listed or rel == MANIFEST_NAME:
            raise BundleError(f"manifest lists {entry.path!r} twice or lists the manifest itself")
        target = _inside(root, rel, what="file")
        if not target.is_file():
            raise BundleError(f"bundle file {rel} is missing from {root}")
        size = target.stat().st_size
        if size != entry.size:
            raise BundleError(
                f"bundle file {rel} has {size} bytes, the manifest says {entry.size}: "
                "the bundle was modified or truncated; export it again"
            )
        if verify_hashes and sha256_file(target) != entry.sha256:
            raise BundleError(
                f"sha256 of bundle file {rel} does not match the manifest: "
                "the file was modified; export the bundle again"
            )
        listed[rel] = entry
    unlisted = sorted(
        p.relative_to(root).as_posix()
        for p in _walk_files(root)
        if p.relative_to(root).as_posix() not in listed and p.name != MANIFEST_NAME
    )
    if unlisted:
        raise BundleError(f"bundle {root} holds files its manifest does not list: {unlisted}")

    # 2. graphs: the required roles and names, checked against the ONNX files themselves.
    _check_graphs(root, manifest, listed)
    return Bundle(path=root, manifest=manifest)


def _check_graphs(root: Path, manifest: Manifest, listed: Mapping[str, FileEntry]) -> None:
    if manifest.layout != "split":
        raise BundleError(f"bundle layout {manifest.layout!r} is not supported; known: {LAYOUTS}")
    if set(manifest.graphs) != set(REQUIRED_GRAPHS):
        raise BundleError(
            f"a split bundle needs graphs {sorted(REQUIRED_GRAPHS)}, got {sorted(manifest.graphs)}"
        )
    for role, (want_in, want_out) in REQUIRED_GRAPHS.items():
        graph = manifest.graphs[role]
        rel = _normalise_relpath(graph.file, what=f"{role} graph")
        if rel not in listed:
            raise BundleError(f"{role} graph {rel} is not listed (with its sha256) in the manifest")
        got_in = tuple(t.name for t in graph.inputs)
        got_out = tuple(t.name for t in graph.outputs)
        if got_in != want_in or got_out != want_out:
            raise BundleError(
                f"{role} graph must have inputs {want_in} and outputs {want_out}, "
                f"the manifest says {got_in} and {got_out}"
            )
        declared_ext = set()
        for loc in graph.external_data:
            loc_rel = _normalise_relpath(loc, what=f"{role} external data")
            if loc_rel not in listed:
                raise BundleError(f"external data {loc_rel} of the {role} graph is not listed")
            declared_ext.add(loc_rel)
        info = read_onnx_info(root / rel)
        graph_dir = PurePosixPath(rel).parent
        for loc in sorted(info.locations):
            loc_rel = _normalise_relpath(
                (graph_dir / loc).as_posix() if _is_relative(loc) else loc,
                what=f"external-data location in {rel}",
            )
            _inside(root, loc_rel, what=f"external-data location in {rel}")
            if loc_rel not in declared_ext:
                raise BundleError(
                    f"{rel} reads external data from {loc!r}, which the manifest does not declare"
                )
        if tuple(info.inputs) != want_in or tuple(info.outputs) != want_out:
            raise BundleError(
                f"{rel} has inputs {tuple(info.inputs)} and outputs {tuple(info.outputs)}; "
                f"the {role} graph needs {want_in} -> {want_out}"
            )


# ---------------------------------------------------------------------------------------------
# writing


def write_manifest(folder: str | os.PathLike[str], manifest: Manifest) -> Manifest:
    """Hash every file under ``folder`` into ``manifest.files`` and write ``manifest.json``.

    Returns the manifest as written. Used by the exporter once all graphs are in place.
    """
    root = Path(folder).resolve()
    entries = []
    for p in sorted(_walk_files(root)):
        rel = p.relative_to(root).as_posix()
        if rel == MANIFEST_NAME:
            continue
        entries.append(FileEntry(path=rel, sha256=sha256_file(p), size=p.stat().st_size))
    final = replace(manifest, files=tuple(entries))
    Manifest.from_dict(final.to_dict())  # the writer never writes what the reader would refuse
    text = json.dumps(final.to_dict(), indent=2, sort_keys=False)
    (root / MANIFEST_NAME).write_text(text + "\n", encoding="utf-8")
    return final


def sha256_file(path: str | os.PathLike[str], chunk_bytes: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# manifest parsing helpers


def _graph_to_dict(g: GraphSpec) -> dict[str, Any]:
    return {
        "file": g.file,
        "inputs": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in g.inputs],
        "outputs": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in g.outputs],
        "opset": g.opset,
        "external_data": list(g.external_data),
    }


def _plain(value: Any) -> Any:
    """Mappings/sequences to plain dicts/lists for JSON."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _get(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str = "manifest") -> Any:
    if key not in data:
        raise BundleError(f"{where} lacks the field {key!r}")
    value = data[key]
    # bool is an int in Python: refuse it where a number is wanted
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise BundleError(f"{where} field {key!r} must be {_kind_name(kind)}, got {value!r}")
    if not isinstance(value, kind):
        raise BundleError(f"{where} field {key!r} must be {_kind_name(kind)}, got {value!r}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _choice(data: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> str:
    value = _get(data, key, str)
    if value not in choices:
        raise BundleError(f"manifest field {key!r} is {value!r}; known values: {choices}")
    return value


def _tensor_specs(items: Any, where: str) -> tuple[TensorSpec, ...]:
    if not isinstance(items, list):
        raise BundleError(f"{where} must be a list")
    specs = []
    for i, item in enumerate(items):
        w = f"{where}[{i}]"
        if not isinstance(item, Mapping):
            raise BundleError(f"{w} must be an object")
        shape = _get(item, "shape", list, w)
        for d in shape:
            if isinstance(d, bool) or not isinstance(d, (int, str)):
                raise BundleError(f"{w} shape entries must be ints or names, got {d!r}")
        specs.append(TensorSpec(_get(item, "name", str, w), _get(item, "dtype", str, w), tuple(shape)))
    return tuple(specs)


def _manifest_from_dict(data: Mapping[str, Any]) -> Manifest:
    if not isinstance(data, Mapping):
        raise BundleError("manifest.json must hold a JSON object")
    if data.get("format") != FORMAT:
        raise BundleError(f"manifest format is {data.get('format')!r}, expected {FORMAT!r}")
    version = _get(data, "format_version", int)
    if version != FORMAT_VERSION:
        hint = "upgrade osr-sdk" if version > FORMAT_VERSION else "export the bundle again"
        raise BundleError(
            f"bundle format version {version} is not supported (this runtime reads version "
            f"{FORMAT_VERSION}); {hint}"
        )
    graphs_raw = _get(data, "graphs", Mapping)
    graphs = {}
    for role, g in graphs_raw.items():
        where = f"manifest graph {role!r}"
        if not isinstance(g, Mapping):
            raise BundleError(f"{where} must be an object")
        ext = _get(g, "external_data", list, where)
        if not all(isinstance(e, str) for e in ext):
            raise BundleError(f"{where} external_data must be a list of paths")
        graphs[str(role)] = GraphSpec(
            file=_get(g, "file", str, where),
            inputs=_tensor_specs(g.get("inputs"), f"{where} inputs"),
            outputs=_tensor_specs(g.get("outputs"), f"{where} outputs"),
            opset=_get(g, "opset", int, where),
            external_data=tuple(ext),
        )
    files = []
    for i, f in enumerate(_get(data, "files", list)):
        where = f"manifest files[{i}]"
        if not isinstance(f, Mapping):
            raise BundleError(f"{where} must be an object")
        digest = _get(f, "sha256", str, where)
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise BundleError(f"{where} sha256 must be 64 lowercase hex digits, got {digest!r}")
        files.append(FileEntry(_get(f, "path", str, where), digest, _get(f, "size", int, where)))

    manifest = Manifest(
        name=_get(data, "name", str),
        scale=_get(data, "scale", int),
        patch_size=_get(data, "patch_size", int),
        timestep=_get(data, "timestep", int),
        alpha_bar=float(_get(data, "alpha_bar", (int, float))),
        latent_scaling_factor=float(_get(data, "latent_scaling_factor", (int, float))),
        latent_channels=_get(data, "latent_channels", int),
        latent_downscale=_get(data, "latent_downscale", int),
        size_multiple=_get(data, "size_multiple", int),
        prediction_type=_choice(data, "prediction_type", PREDICTION_TYPES),
        color_fix=_choice(data, "color_fix", COLOR_FIXES),
        precision=_choice(data, "precision", PRECISIONS),
        layout=_choice(data, "layout", LAYOUTS),
        graphs=MappingProxyType(graphs),
        files=tuple(files),
        sources=MappingProxyType(dict(_get(data, "sources", Mapping))),
        exporter=MappingProxyType(dict(_get(data, "exporter", Mapping))),
        validation=MappingProxyType(dict(_get(data, "validation", Mapping))),
        created=_get(data, "created", str),
        format_version=version,
    )
    if not 0.0 < manifest.alpha_bar < 1.0:
        raise BundleError(f"manifest alpha_bar must lie in (0, 1), got {manifest.alpha_bar}")
    for key in ("scale", "patch_size", "latent_channels", "latent_downscale", "size_multiple"):
        if getattr(manifest, key) <= 0:
            raise BundleError(f"manifest field {key!r} must be positive, got {getattr(manifest, key)}")
    if manifest.timestep < 0:
        raise BundleError(f"manifest timestep must be >= 0, got {manifest.timestep}")
    return manifest


# ---------------------------------------------------------------------------------------------
# paths


def _is_relative(p: str) -> bool:
    return not (PurePosixPath(p).is_absolute() or PureWindowsPath(p).is_absolute() or PureWindowsPath(p).drive)


def _normalise_relpath(p: str, *, what: str) -> str:
    """A clean relative POSIX path, or `BundleError` for absolute paths and ``..``."""
    if not p or "\x00" in p:
        raise BundleError(f"{what} path {p!r} is empty or invalid")
    if not _is_relative(p) or "\\" in p:
        raise BundleError(f"{what} path {p!r} is absolute or not a POSIX path: refused")
    parts = [part for part in PurePosixPath(p).parts if part not in ("", ".")]
    if not parts or ".." in parts:
        raise BundleError(f"{what} path {p!r} leaves the bundle folder: refused")
    return "/".join(parts)


def _inside(root: Path, rel: str, *, what: str) -> Path:
    """``root/rel`` resolved, refusing anything (a symlink too) that ends outside ``root``."""
    target = (root / rel).resolve()
    if target != root and root not in target.parents:
        raise BundleError(f"{what} {rel!r} resolves to {target}, outside the bundle {root}: refused")
    return target


def _walk_files(root: Path) -> Iterator[Path]:
    """Files under ``root`` (symlinks included as entries), skipping dotfiles and dot-folders."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith("."):
                yield Path(dirpath) / name


# ---------------------------------------------------------------------------------------------
# a minimal ONNX (protobuf) scanner: graph input/output names and external-data locations


@dataclass
class OnnxInfo:
    """What `read_onnx_info` finds in an ONNX file."""

    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    initializers: set[str] = field(default_factory=set)
    locations: set[str] = field(default_factory=set)


def read_onnx_info(path: str | os.PathLike[str]) -> OnnxInfo:
    """Scan an ONNX file for its graph inputs (initializers excluded), outputs and every
    external-data ``location`` (in the main graph, subgraphs and functions), without ``onnx``."""
    info = OnnxInfo()
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                raise BundleError(f"{path} is empty, not an ONNX model")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                for f, wt, v in _fields(buf, 0, size):
                    if f == 7 and wt == 2:  # ModelProto.graph
                        _scan_graph(buf, v, info, top=True)
                    elif f == 25 and wt == 2:  # ModelProto.functions
                        for ff, fwt, fv in _fields(buf, *v):
                            if ff == 7 and fwt == 2:  # FunctionProto.node
                                _scan_node(buf, fv, info)
    except _Malformed as exc:
        raise BundleError(f"{path} is not a valid ONNX model ({exc})") from None
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc}") from exc
    info.inputs = [n for n in info.inputs if n not in info.initializers]
    return info


class _Malformed(Exception):
    pass


def _varint(buf: Any, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise _Malformed("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _Malformed("varint too long")


def _fields(buf: Any, start: int, end: int) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of a message; length-delimited values as (start, end)."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value
        elif wire == 1:
            pos += 8
        elif wire == 2:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise _Malformed("field runs past the end of its message")
            yield number, wire, (pos, pos + n)
            pos += n
        elif wire == 5:
            pos += 4
        else:
            raise _Malformed(f"unsupported wire type {wire}")
    if pos != end:
        raise _Malformed("message runs past its end")


def _text(buf: Any, span: tuple[int, int]) -> str:
    try:
        return bytes(buf[span[0] : span[1]]).decode("utf-8")
    except UnicodeDecodeError:
        raise _Malformed("a string is not UTF-8") from None


def _scan_graph(buf: Any, span: tuple[int, int], info: OnnxInfo, *, top: bool) -> None:
    for f, wt, v in _fields(buf, *span):
        if wt != 2:
            continue
        if f == 1:  # node
            _scan_node(buf, v, info)
        elif f == 5:  # initializer
            name = _scan_tensor(buf, v, info)
            if top and name is not None:
                info.initializers.add(name)
        elif f == 15:  # sparse_initializer: values (1), indices (2)
            for sf, swt, sv in _fields(buf, *v):
                if swt == 2 and sf in (1, 2):
                    name = _scan_tensor(buf, sv, info)
                    if top and sf == 1 and name is not None:
                        info.initializers.add(name)
        elif top and f in (11, 12):  # input / output ValueInfoProto, name = 1
            name = next((_text(buf, vv) for ff, ww, vv in _fields(buf, *v) if ff == 1 and ww == 2), "")
            (info.inputs if f == 11 else info.outputs).append(name)


def _scan_node(buf: Any, span: tuple[int, int], info: OnnxInfo) -> None:
    for f, wt, v in _fields(buf, *span):
        if f != 5 or wt != 2:  # NodeProto.attribute
            continue
        for af, awt, av in _fields(buf, *v):
            if awt != 2:
                continue
            if af in (5, 10):  # t, tensors
                _scan_tensor(buf, av, info)
            elif af in (6, 11):  # g, graphs
                _scan_graph(buf, av, info, top=False)
            elif af in (22, 23):  # sparse_tensor(s)
                for sf, swt, sv in _fields(buf, *av):
                    if swt == 2 and sf in (1, 2):
                        _scan_tensor(buf, sv, info)


def _scan_tensor(buf: Any, span: tuple[int, int], info: OnnxInfo) -> str | None:
    name = None
    for f, wt, v in _fields(buf, *span):
        if wt != 2:
            continue
        if f == 8:  # name
            name = _text(buf, v)
        elif f == 13:  # external_data: StringStringEntryProto(key=1, value=2)
            key = value = None
            for ef, ewt, ev in _fields(buf, *v):
                if ewt == 2 and ef == 1:
                    key = _text(buf, ev)
                elif ewt == 2 and ef == 2:
                    value = _text(buf, ev)
            if key == "location" and value is not None:
                info.locations.add(value)
    return name
