"""The `osr-sdk` command line: upscale images, inspect bundles, render perspective views.

    osr-sdk upscale INPUT... -o OUT [--model BUNDLE] [--providers cuda,cpu] [--batch-size N]
                    [--projection auto|erp|planar] [--overwrite] [--format png|jpeg|webp|tiff]
                    [--quality Q]
    osr-sdk demo [-o OUT] [--model BUNDLE] [--providers cuda,cpu] [--overwrite]
    osr-sdk info BUNDLE
    osr-sdk views [INPUT] -o OUTDIR [--fov-deg 90] [--size 512] [--overwrite]
    osr-sdk bench BUNDLE [--providers cuda,cpu] [--batch-sizes 1,2,4] [--repeats 5] [--warmup 1]
                  [--lq-height 512] [--input ERP] [--out-dir benchmarks/results] [--no-plot]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import get_args

import numpy as np

from osr_sdk import imageio
from osr_sdk.errors import OsrError, OutputExistsError

SAMPLE_ERP = Path(__file__).resolve().parent / "data" / "sample_erp.jpg"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff"}
#: (name, centre x, centre y as fractions of the output) of the crops `osr-sdk demo` compares
DEMO_CROPS = (("trees", 0.43, 0.45), ("rock", 0.30, 0.72), ("hills and lake", 0.88, 0.53))
DEMO_CROP_PX = 384
#: (name, yaw_deg, pitch_deg) of the views `osr-sdk views` renders: the six cube directions.
VIEW_DIRECTIONS = (("front", 0, 0), ("right", 90, 0), ("back", 180, 0), ("left", -90, 0), ("up", 0, 90), ("down", 0, -90))


def _inputs(paths: list[str]) -> list[Path]:
    """Files as given, and the images inside folders (sorted)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found.extend(sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES))
        else:
            found.append(p)
    return found


def _output_path(source: Path, out: Path, single: bool, scale: int, fmt: str | None) -> Path:
    if single and out.suffix.lower() in IMAGE_SUFFIXES:
        return out
    suffix = {"png": ".png", "jpeg": ".jpg", "webp": ".webp", "tiff": ".tif"}[fmt.lower()] if fmt else source.suffix
    return out / f"{source.stem}_x{scale}{suffix}"


def cmd_upscale(args: argparse.Namespace) -> int:
    from osr_sdk.upscaler import Upscaler

    sources = _inputs(args.inputs)
    if not sources:
        print("no input images found", file=sys.stderr)
        return 2
    providers = args.providers.split(",") if args.providers else None
    upscaler = Upscaler(args.model, providers=providers, batch_size=args.batch_size)
    out = Path(args.output)
    single = len(sources) == 1
    if not (single and out.suffix.lower() in IMAGE_SUFFIXES):
        out.mkdir(parents=True, exist_ok=True)
    failures = 0
    for source in sources:
        target = _output_path(source, out, single, upscaler.scale, args.format)
        try:
            _, report = upscaler.upscale_with_report(
                source, projection=args.projection, progress=not args.quiet, output=target,
                overwrite=args.overwrite, format=args.format, quality=args.quality)
        except OsrError as exc:
            failures += 1
            print(f"{source}: error: {exc}", file=sys.stderr)
            continue
        print(f"{source} → {target}: {report.summary()}")
    return 1 if failures else 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Upscale the shipped sample ERP (a pipeline-degraded 1024×512 LQ) with the embedded default
    model (or --model), and write the ×4 result plus a bicubic | osr-sdk comparison of crops."""
    from osr_sdk.tiling import bicubic_upscale
    from osr_sdk.upscaler import Upscaler

    providers = args.providers.split(",") if args.providers else None
    upscaler = Upscaler(args.model, providers=providers)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    result_path = out / f"{SAMPLE_ERP.stem}_x{upscaler.scale}.png"
    compare_path = out / f"{SAMPLE_ERP.stem}_compare.jpg"
    if not args.overwrite:
        for path in (result_path, compare_path):
            if path.exists():
                raise OutputExistsError(f"{path} exists; pass --overwrite to replace it")
    _, report = upscaler.upscale_with_report(SAMPLE_ERP, output=result_path, overwrite=args.overwrite,
                                             progress=not args.quiet)
    print(f"{SAMPLE_ERP} → {result_path}: {report.summary()}")

    def as_uint8(path: Path) -> np.ndarray:
        return np.rint(imageio.read_image(path).pixels * 255).astype(np.uint8)

    bicubic = bicubic_upscale(as_uint8(SAMPLE_ERP), upscaler.scale)
    sheet = comparison_sheet(bicubic, as_uint8(result_path), DEMO_CROPS, DEMO_CROP_PX)
    imageio.write_image(imageio.Image(pixels=sheet.astype(np.float32) / 255), compare_path,
                        overwrite=args.overwrite, quality=92)
    print(f"wrote {compare_path} (left: bicubic ×{upscaler.scale}, right: osr-sdk; crops: "
          f"{', '.join(name for name, _, _ in DEMO_CROPS)})")
    return 0


def comparison_sheet(left: np.ndarray, right: np.ndarray, crops: tuple[tuple[str, float, float], ...],
                     size: int) -> np.ndarray:
    """uint8 sheet: one row per crop (name, centre x, centre y as fractions), ``left | right``,
    with a 4 px white gutter and labels."""
    from PIL import Image, ImageDraw

    h, w = left.shape[:2]
    rows = []
    for _, fx, fy in crops:
        y0 = int(np.clip(fy * h - size / 2, 0, h - size))
        x0 = int(np.clip(fx * w - size / 2, 0, w - size))
        pair = [img[y0:y0 + size, x0:x0 + size, :3] for img in (left, right)]
        gutter = np.full((size, 4, 3), 255, np.uint8)
        rows.append(np.concatenate([pair[0], gutter, pair[1]], 1))
        rows.append(np.full((4, 2 * size + 4, 3), 255, np.uint8))
    sheet = Image.fromarray(np.concatenate(rows[:-1], 0))
    draw = ImageDraw.Draw(sheet)
    for i, (name, _, _) in enumerate(crops):
        y = i * (size + 4) + 6
        for x, text in ((8, f"bicubic · {name}"), (size + 12, f"osr-sdk · {name}")):
            draw.text((x + 1, y + 1), text, fill=(0, 0, 0))
            draw.text((x, y), text, fill=(255, 255, 255))
    return np.asarray(sheet)


def cmd_info(args: argparse.Namespace) -> int:
    from osr_runtime import load_bundle

    bundle = load_bundle(args.bundle)
    m = bundle.manifest
    print(f"bundle     {bundle.path}")
    print(f"name       {m.name}  (format {m.format_version}, created {m.created or '?'})")
    print(f"model      ×{m.scale}, patch {m.patch_size}px, t* = {m.timestep}, ᾱ = {m.alpha_bar:.6f}, "
          f"latent scaling {m.latent_scaling_factor}, colour fix {m.color_fix}")
    print(f"precision  {m.precision}, layout {m.layout}")
    for role, graph in m.graphs.items():
        ins = ", ".join(f"{t.name}{list(t.shape)}" for t in graph.inputs)
        outs = ", ".join(f"{t.name}{list(t.shape)}" for t in graph.outputs)
        print(f"graph      {role:8s} {graph.file}: {ins} → {outs} (opset {graph.opset})")
    total = sum(f.size for f in m.files)
    print(f"files      {len(m.files)}, {total / 2**20:.1f} MiB")
    for key in ("sources", "exporter", "validation"):
        print(f"{key:10s} {json.dumps(dict(getattr(m, key)), default=str)}")
    return 0


def cmd_views(args: argparse.Namespace) -> int:
    from osr_sdk import sphere

    source = Path(args.input) if args.input else SAMPLE_ERP
    img = imageio.read_image(source)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    size = args.size
    tiles = []
    for name, yaw, pitch in VIEW_DIRECTIONS:
        view = sphere.erp_to_perspective(img.pixels, args.fov_deg, yaw, pitch, (size, size), interp="bicubic")
        view = np.clip(view, 0, 1)
        tiles.append(view)
        path = imageio.write_image(imageio.Image(pixels=view), out / f"{source.stem}_{name}.png",
                                   overwrite=args.overwrite)
        print(f"wrote {path} (yaw {yaw:+d}°, pitch {pitch:+d}°, fov {args.fov_deg:g}°)")
    sheet = np.concatenate([np.concatenate(tiles[:3], 1), np.concatenate(tiles[3:], 1)], 0)
    path = imageio.write_image(imageio.Image(pixels=np.ascontiguousarray(sheet)),
                               out / f"{source.stem}_views.png", overwrite=args.overwrite)
    print(f"wrote {path} (front right back / left up down)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from osr_sdk.bench import format_table, run_bench

    try:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    except ValueError:
        print(f"osr-sdk: error: --batch-sizes must be integers separated by commas, got {args.batch_sizes!r}",
              file=sys.stderr)
        return 2
    providers = args.providers.split(",") if args.providers else None
    result, json_path, png_path = run_bench(
        args.bundle, providers=providers, batch_sizes=batch_sizes, repeats=args.repeats, warmup=args.warmup,
        lq_height=args.lq_height, input_path=args.input, out_dir=args.out_dir, plot=not args.no_plot)
    print(format_table(result))
    print(f"wrote {json_path}")
    if png_path is not None:
        print(f"wrote {png_path}")
    failed = [f"batch {r['batch_size']}: {r['job_error']}" for r in result["runs"] if r["job_error"]]
    if failed:
        print("osr-sdk: error: whole-job runs failed (tile figures kept): " + "; ".join(failed), file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    from osr_sdk.upscaler import Projection

    parser = argparse.ArgumentParser(prog="osr-sdk", description="360° image super-resolution for the edge")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("upscale", help="upscale images (files or folders)")
    up.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders of images")
    up.add_argument("-o", "--output", required=True, help="output file (one input) or folder")
    up.add_argument("--model", default=None, help="model bundle folder (default: the embedded model)")
    up.add_argument("--providers", default=None, help="execution providers in order, e.g. cuda,cpu")
    up.add_argument("--batch-size", type=int, default=None, help="tiles per model call (default: automatic)")
    up.add_argument("--projection", choices=get_args(Projection), default="auto",
                    help="auto: 2:1 images are 360° ERP, others planar")
    up.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    up.add_argument("--format", choices=[f.lower() for f in imageio.FORMATS], default=None,
                    help="output format (default: the input's)")
    up.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality (1-100)")
    up.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    up.set_defaults(func=cmd_upscale)

    demo = sub.add_parser("demo", help="upscale the shipped sample 360° photo; write it and a comparison with bicubic")
    demo.add_argument("-o", "--output", default="out", help="output folder (default %(default)s)")
    demo.add_argument("--model", default=None, help="model bundle folder (default: the embedded model)")
    demo.add_argument("--providers", default=None, help="execution providers in order, e.g. cuda,cpu")
    demo.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    demo.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(func=cmd_demo)

    info = sub.add_parser("info", help="print a model bundle's manifest")
    info.add_argument("bundle", help="bundle folder")
    info.set_defaults(func=cmd_info)

    views = sub.add_parser("views", help="render the six cube-direction perspective views of an ERP")
    views.add_argument("input", nargs="?", default=None, help="ERP image (default: the shipped sample)")
    views.add_argument("-o", "--output", required=True, help="output folder")
    views.add_argument("--fov-deg", type=float, default=90.0, help="field of view in degrees")
    views.add_argument("--size", type=int, default=512, help="view size in pixels")
    views.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    views.set_defaults(func=cmd_views)

    bench = sub.add_parser("bench", help="time each stage of a whole 360° job (and per tile) for a bundle")
    bench.add_argument("bundle", help="bundle folder")
    bench.add_argument("--providers", default=None, help="execution providers in order, e.g. cuda,cpu "
                       "(default: TensorRT → CUDA → CPU, those available)")
    bench.add_argument("--batch-sizes", default="1,2,4", help="tiles per model call to measure (default %(default)s)")
    bench.add_argument("--repeats", type=int, default=5, help="timed repeats; medians are reported (default %(default)s)")
    bench.add_argument("--warmup", type=int, default=1, help="untimed warm-up runs (default %(default)s)")
    bench.add_argument("--lq-height", type=int, default=512,
                       help="LQ ERP height; the job is (2H)×H → ×scale (default %(default)s: 1024×512 → 4096×2048)")
    bench.add_argument("--input", default=None, help="ERP image to resize into the LQ (default: the shipped sample)")
    bench.add_argument("--out-dir", default="benchmarks/results", help="folder for the JSON and PNG (default %(default)s)")
    bench.add_argument("--no-plot", action="store_true", help="no PNG plot")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except OsrError as exc:
        print(f"osr-sdk: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
