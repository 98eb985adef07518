"""osr_runtime.bundle: manifest round trip and every refusal of `load_bundle`.

Bundles are built here from tiny ONNX graphs (onnx.helper), without torch.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper
from osr_runtime import BundleError, load_bundle
from osr_runtime.bundle import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    GraphSpec,
    Manifest,
    TensorSpec,
    read_onnx_info,
    sha256_file,
    write_manifest,
)

_IO = {"encoder": (["lq"], ["z"]), "unet": (["z"], ["x0"]), "decoder": (["x0", "lq"], ["sr"])}
_SHAPES = {"lq": ["N", 3, "H", "W"], "sr": ["N", 3, "H", "W"], "z": ["N", 4, "H/8", "W/8"],
           "x0": ["N", 4, "H/8", "W/8"]}


def _graph(role: str, *, external: str | None = None, folder: Path | None = None) -> onnx.ModelProto:
    ins, outs = _IO[role]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, _SHAPES[n]) for n in ins]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, _SHAPES[n]) for n in outs]
    scale = numpy_helper.from_array(np.full((1,), 2.0, np.float32), "scale")
    nodes = [helper.make_node("Mul", [ins[0], "scale"], [outs[0]])]
    model = helper.make_model(helper.make_graph(nodes, role, inputs, outputs, [scale]),
                              opset_imports=[helper.make_opsetid("", 17)])
    return model


def _manifest(graph_ext: dict[str, tuple[str, ...]] | None = None) -> Manifest:
    graph_ext = graph_ext or {}
    graphs = {
        role: GraphSpec(
            file=f"{role}.onnx",
            inputs=tuple(TensorSpec(n, "float32", tuple(_SHAPES[n])) for n in ins),
            outputs=tuple(TensorSpec(n, "float32", tuple(_SHAPES[n])) for n in outs),
            opset=17,
            external_data=graph_ext.get(role, ()),
        )
        for role, (ins, outs) in _IO.items()
    }
    return Manifest(name="test", scale=4, patch_size=512, timestep=273, alpha_bar=0.635742,
                    latent_scaling_factor=0.18215, latent_channels=4, latent_downscale=8, size_multiple=8,
                    prediction_type="epsilon", color_fix="adain", precision="fp32", layout="split",
                    graphs=graphs, sources={"base": {"path": "/x", "files": {"unet/config.json": "0" * 64}}},
                    exporter={"versions": {"onnx": onnx.__version__}}, validation={"fp32": {"limit": 1e-4}},
                    created="2025-01-01T00:00:00+00:00")


@pytest.fixture()
def bundle_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "bundle"
    folder.mkdir()
    for role in _IO:
        onnx.save_model(_graph(role), str(folder / f"{role}.onnx"))
    write_manifest(folder, _manifest())
    return folder


def _edit_manifest(folder: Path, edit) -> None:  # type: ignore[no-untyped-def]
    data = json.loads((folder / MANIFEST_NAME).read_text())
    edit(data)
    (folder / MANIFEST_NAME).write_text(json.dumps(data))


def test_round_trip(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    m = bundle.manifest
    assert m.format_version == FORMAT_VERSION
    assert (m.name, m.timestep, m.precision, m.layout, m.color_fix) == ("test", 273, "fp32", "split", "adain")
    assert m.alpha_bar == pytest.approx(0.635742)
    assert sorted(f.path for f in m.files) == ["decoder.onnx", "encoder.onnx", "unet.onnx"]
    for f in m.files:
        assert f.sha256 == sha256_file(bundle_dir / f.path)
        assert f.size == (bundle_dir / f.path).stat().st_size
    assert bundle.graph_path("unet") == bundle_dir.resolve() / "unet.onnx"
    assert [t.name for t in m.graphs["decoder"].inputs] == ["x0", "lq"]
    assert m.graphs["encoder"].outputs[0].shape == ("N", 4, "H/8", "W/8")
    assert Manifest.from_dict(m.to_dict()) == m
    with pytest.raises(BundleError, match="no graph 'vae'"):
        bundle.graph_path("vae")


def test_manifest_is_frozen(bundle_dir: Path) -> None:
    m = load_bundle(bundle_dir).manifest
    with pytest.raises(AttributeError):
        m.timestep = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        m.graphs["unet"] = m.graphs["encoder"]  # type: ignore[index]


def test_missing_folder_and_manifest(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope")
    with pytest.raises(BundleError, match="no manifest.json"):
        load_bundle(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(BundleError, match="cannot read"):
        load_bundle(tmp_path)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d.update(format_version=FORMAT_VERSION + 1), "upgrade osr-sdk"),
        (lambda d: d.update(format_version=0), "not supported"),
        (lambda d: d.update(format="other"), "format"),
        (lambda d: d.pop("timestep"), "lacks the field 'timestep'"),
        (lambda d: d.update(timestep="273"), "'timestep' must be int"),
        (lambda d: d.update(scale=True), "'scale' must be int"),
        (lambda d: d.update(alpha_bar=1.5), "alpha_bar must lie in"),
        (lambda d: d.update(precision="int3"), "'precision' is 'int3'"),
        (lambda d: d.update(color_fix="magic"), "'color_fix'"),
        (lambda d: d.update(layout="fused"), "'layout'"),
        (lambda d: d["graphs"].pop("unet"), "needs graphs"),
        (lambda d: d["graphs"]["unet"]["inputs"][0].update(name="sample"), "unet graph must have inputs"),
        (lambda d: d["graphs"]["decoder"]["inputs"].pop(), "decoder graph must have inputs"),
        (lambda d: d["files"][0].update(sha256="xyz"), "64 lowercase hex"),
    ],
)
def test_bad_manifest_fields(bundle_dir: Path, edit, match: str) -> None:  # type: ignore[no-untyped-def]
    _edit_manifest(bundle_dir, edit)
    with pytest.raises(BundleError, match=match):
        load_bundle(bundle_dir)


def test_tampered_file_is_refused(bundle_dir: Path) -> None:
    path = bundle_dir / "unet.onnx"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, different bytes
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 of bundle file unet.onnx"):
        load_bundle(bundle_dir)
    load_bundle(bundle_dir, verify_hashes=False)  # sizes still match


def test_truncated_missing_and_unlisted_files(bundle_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "copy"
    shutil.copytree(bundle_dir, other)
    with open(other / "encoder.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match="bytes, the manifest says"):
        load_bundle(other)
    (bundle_dir / "decoder.onnx").unlink()
    with pytest.raises(BundleError, match="decoder.onnx is missing"):
        load_bundle(bundle_dir)


def test_unlisted_file_refused_dotfiles_ignored(bundle_dir: Path) -> None:
    (bundle_dir / ".DS_Store").write_bytes(b"x")
    load_bundle(bundle_dir)
    (bundle_dir / "extra.onnx").write_bytes(b"x")
    with pytest.raises(BundleError, match="does not list"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("bad", ["../outside.onnx", "/etc/passwd", "a/../../x", "C:\\x.onnx", ""])
def test_file_paths_leaving_the_folder(bundle_dir: Path, bad: str) -> None:
    _edit_manifest(bundle_dir, lambda d: d["files"].append({"path": bad, "sha256": "0" * 64, "size": 0}))
    with pytest.raises(BundleError, match="refused|empty"):
        load_bundle(bundle_dir)


def test_symlink_out_of_the_folder(bundle_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.onnx"
    shutil.move(str(bundle_dir / "unet.onnx"), outside)
    os.symlink(outside, bundle_dir / "unet.onnx")
    with pytest.raises(BundleError, match="outside the bundle"):
        load_bundle(bundle_dir)


def test_graph_file_names_must_match_onnx(bundle_dir: Path) -> None:
    model = _graph("unet")
    model.graph.input[0].name = "sample"
    model.graph.node[0].input[0] = "sample"
    onnx.save_model(model, str(bundle_dir / "unet.onnx"))
    write_manifest(bundle_dir, _manifest())
    with pytest.raises(BundleError, match=r"unet.onnx has inputs \('sample',\)"):
        load_bundle(bundle_dir)


def _with_external(folder: Path, location: str, data_path: Path) -> None:
    """Point the unet's initializer at external data ``location`` (data written to data_path)."""
    model = _graph("unet")
    init = model.graph.initializer[0]
    raw = init.raw_data or np.float32(2.0).tobytes()
    data_path.write_bytes(raw)
    init.ClearField("raw_data")
    init.ClearField("float_data")
    init.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(len(raw)))):
        entry = init.external_data.add()
        entry.key, entry.value = k, v
    (folder / "unet.onnx").write_bytes(model.SerializeToString())


def test_external_data_inside_is_accepted(bundle_dir: Path) -> None:
    _with_external(bundle_dir, "unet.onnx.data", bundle_dir / "unet.onnx.data")
    write_manifest(bundle_dir, _manifest({"unet": ("unet.onnx.data",)}))
    bundle = load_bundle(bundle_dir)
    assert bundle.manifest.graphs["unet"].external_data == ("unet.onnx.data",)
    assert read_onnx_info(bundle_dir / "unet.onnx").locations == {"unet.onnx.data"}
    import onnxruntime as ort

    sess = ort.InferenceSession(str(bundle.graph_path("unet")), providers=["CPUExecutionProvider"])
    z = np.ones((1, 4, 2, 2), np.float32)
    np.testing.assert_allclose(sess.run(None, {"z": z})[0], 2 * z)


def test_external_data_traversal_is_refused(bundle_dir: Path, tmp_path: Path) -> None:
    _with_external(bundle_dir, "../secret.bin", tmp_path / "secret.bin")
    write_manifest(bundle_dir, _manifest())
    with pytest.raises(BundleError, match="leaves the bundle folder"):
        load_bundle(bundle_dir)


def test_external_data_absolute_is_refused(bundle_dir: Path, tmp_path: Path) -> None:
    _with_external(bundle_dir, str(tmp_path / "abs.bin"), tmp_path / "abs.bin")
    write_manifest(bundle_dir, _manifest())
    with pytest.raises(BundleError, match="absolute"):
        load_bundle(bundle_dir)


def test_external_data_undeclared_is_refused(bundle_dir: Path) -> None:
    _with_external(bundle_dir, "unet.onnx.data", bundle_dir / "unet.onnx.data")
    write_manifest(bundle_dir, _manifest())  # hashed, but not declared as the graph's data
    with pytest.raises(BundleError, match="does not declare"):
        load_bundle(bundle_dir)


def test_external_data_in_subgraph_is_seen(tmp_path: Path) -> None:
    """A location hidden in an If-node's subgraph is found by the scanner too."""
    inner_t = numpy_helper.from_array(np.zeros(1, np.float32), "t")
    inner_t.data_location = TensorProto.EXTERNAL
    e = inner_t.external_data.add()
    e.key, e.value = "location", "../../evil"
    branch = helper.make_graph([helper.make_node("Constant", [], ["y"], value=inner_t)], "b", [],
                               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    cond = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    node = helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)
    model = helper.make_model(helper.make_graph([node], "g", [cond],
                                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]))
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    info = read_onnx_info(path)
    assert info.locations == {"../../evil"} and info.inputs == ["c"] and info.outputs == ["y"]


def test_not_an_onnx_file(bundle_dir: Path) -> None:
    (bundle_dir / "unet.onnx").write_bytes(b"\xff" * 64)
    write_manifest(bundle_dir, _manifest())
    with pytest.raises(BundleError, match="not a valid ONNX model"):
        load_bundle(bundle_dir)


def test_writer_refuses_what_reader_refuses(tmp_path: Path) -> None:
    bad = replace(_manifest(), alpha_bar=2.0)
    with pytest.raises(BundleError, match="alpha_bar"):
        write_manifest(tmp_path, bad)
