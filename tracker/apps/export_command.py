"""``track export onnx|tensorrt`` (a featurizer, LoRA merged, for the real-time backends) and ``track weights
list|download|verify``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tracker.apps.cli import Parser
from tracker.apps.track_video import _pick_device, check_writable
from tracker.errors import TrackerError


def build_export_parser() -> argparse.ArgumentParser:
    p = Parser(prog="track export", description="Export a featurizer (LoRA merged) for real-time backends.")
    sub = p.add_subparsers(dest="format", required=True, parser_class=Parser)
    o = sub.add_parser("onnx", help="ONNX graph: float NHWC frames at the input size -> unit feature grid")
    t = sub.add_parser("tensorrt", help="TensorRT engine (strongly typed) for this GPU, checked against torch")
    for q in (o, t):
        q.add_argument("--model", default="distilldift", help="a ViT model of the weights table (default distilldift)")
        q.add_argument("--weights", help="'random' or local weights file(s), as for tracking")
        q.add_argument("--size", default="434", help="input size N (square) or WxH, multiples of 14 (default 434)")
    o.add_argument("--precision", default="fp32", help="fp32 or fp16 (LayerNorm, softmax, normalisation in fp32)")
    o.add_argument("--fp16", action="store_true", help="same as --precision fp16")
    o.add_argument("--opset", type=int, default=17)
    o.add_argument(
        "--step",
        action="store_true",
        help="the whole per-frame step: frames + N query descriptors in, points and scores out",
    )
    o.add_argument("--window-radius", type=int, default=2, help="--step: soft-argmax window radius (2)")
    o.add_argument("--temperature", type=float, default=0.05, help="--step: soft-argmax temperature (0.05)")
    o.add_argument("--out", required=True, help="the .onnx file to write")
    t.add_argument("--precision", default="fp16", help="fp16 (default), bf16 or fp32")
    t.add_argument("--max-batch", type=int, default=32, help="largest batch the engine takes (default 32)")
    t.add_argument("--device", default="cuda", help="the GPU to build for (default cuda)")
    t.add_argument("--out", required=True, help="the .engine file to write (its .engine.json beside it)")
    return p


def export_command(args: argparse.Namespace) -> int:
    from tracker.featurizers import VIT_MODELS, create_featurizer
    from tracker.geometry import SizeSpec

    if args.model not in VIT_MODELS:
        raise TrackerError(f"can export only ViT models ({', '.join(VIT_MODELS)}), not {args.model!r}")
    out = Path(args.out)
    suffix = ".onnx" if args.format == "onnx" else ".engine"
    if out.suffix.lower() != suffix:
        raise TrackerError(f"--out must end in {suffix}, got {out.name}")
    check_writable(out, "--out")
    spec = SizeSpec.parse(args.size)
    spec.resolve(spec.height or 1, spec.width or 1, multiple=14)  # refuses sides that are not multiples of 14
    if args.format == "tensorrt":
        return _export_tensorrt(args, spec, out)
    precision = "fp16" if args.fp16 else args.precision
    if precision not in ("fp32", "fp16"):
        raise TrackerError(
            f"--precision {precision}: ONNX exports are fp32 or fp16 (bf16 graphs are built for TensorRT by "
            "`track export tensorrt --precision bf16`)"
        )
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise TrackerError("ONNX export needs onnx and onnxruntime: pip install '.[export]'") from None
    from export.onnx import export_onnx, export_step_onnx
    from tracker.matching import MatchConfig

    try:
        match = MatchConfig(window_radius=args.window_radius, temperature=args.temperature)
    except ValueError as exc:
        raise TrackerError(str(exc)) from None
    featurizer = create_featurizer(args.model, (spec.height, spec.width), size=args.size, weights=args.weights)
    if args.step:
        report = export_step_onnx(featurizer, out, match, precision=precision, opset=args.opset)
    else:
        report = export_onnx(featurizer, out, precision=precision, opset=args.opset)
    print(
        f"track: wrote {report.path} ({args.model}, {spec.width}x{spec.height}, {precision}"
        f"{', whole step' if args.step else ''}); ONNX Runtime ({report.provider}) vs torch fp32: "
        f"min cosine {report.min_cosine:.6f}",
        file=sys.stderr,
    )
    return 0


def _export_tensorrt(args: argparse.Namespace, spec, out: Path) -> int:
    from tracker.backends import PRECISIONS, available_backends
    from tracker.featurizers import create_featurizer

    if args.precision not in PRECISIONS:
        raise TrackerError(f"--precision must be one of {', '.join(PRECISIONS)}, got {args.precision!r}")
    if args.max_batch < 1:
        raise TrackerError("--max-batch must be at least 1")
    if not args.device.startswith("cuda"):
        raise TrackerError(f"--device {args.device}: TensorRT engines are built on a CUDA device")
    reason = available_backends(args.device)["tensorrt"]
    if reason:
        raise TrackerError(f"cannot build a TensorRT engine here: {reason}")
    device = _pick_device(args.device)
    from export.tensorrt import engine_for

    featurizer = create_featurizer(args.model, (spec.height, spec.width), size=args.size, weights=args.weights)
    trt_featurizer, where = engine_for(
        featurizer, precision=args.precision, device=device, max_batch=args.max_batch, out=out
    )
    print(
        f"track: wrote {out} ({args.model}, {spec.width}x{spec.height}, {args.precision}, batch 1..{args.max_batch}; "
        f"{where}); TensorRT vs torch fp32 on the check image: min cosine {trt_featurizer.meta.min_cosine:.5f}",
        file=sys.stderr,
    )
    return 0


# --------------------------------------------------------------------------- track weights


def weights_command(args: argparse.Namespace) -> int:
    from tracker import weight_loading as WL
    from tracker import weights as W

    if args.action == "list":
        print(f"cache: {W.cache_dir()}")
        for spec in W.MODELS.values():
            cached = W.weights_status(spec)
            state = "cached" if all(cached.values()) else "not cached"
            print(f"{spec.name:15s} {state:10s} {spec.description}")
            for role, source in (("base", spec.base), ("lora", spec.lora)):
                if source is not None:
                    where = (
                        " | ".join(filter(None, [source.hub_id and f"hub:{source.hub_id}", source.url]))
                        or "local file only"
                    )
                    print(f"{'':15s} {role}: {where}")
        print(f"{'sift':15s} {'built in':10s} dense RootSIFT (kornia), no weights")
        return 0
    if args.action == "download":
        for name in args.models:
            spec = W.get_spec(name)
            for source in filter(None, (spec.base, spec.lora)):
                path = W.fetch(source)
                print(f"{name}: {path} sha256={W.sha256sum(path)}")
        return 0
    names = args.models or [s.name for s in W.MODELS.values() if all(W.weights_status(s).values())]
    if not names:
        print("no model has all its weights cached; see `track weights list`")
        return 1
    failed = 0
    for name in names:
        spec = W.get_spec(name)
        try:
            for source in filter(None, (spec.base, spec.lora)):
                path = W.cached_path(source)
                if path is None:
                    raise TrackerError(f"{source.filename} is not cached")
                digest = W.sha256sum(path)
                if source.sha256 and digest != source.sha256:
                    raise TrackerError(f"{path}: sha256 {digest} differs from the published {source.sha256}")
            WL.load_model(spec, (434, 434), None, download=False)
            print(f"{name}: ok (loaded strictly)")
        except TrackerError as exc:
            failed += 1
            print(f"{name}: FAILED: {exc}")
    return 1 if failed else 0
