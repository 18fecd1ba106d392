"""``track bench``'s command line: the parser, the options checked and turned into a
:class:`~tracker.bench.config.BenchConfig` (one-line errors, exit 2), ``--quick``'s estimate of a run's duration,
the result files, and :func:`main`, which runs :func:`tracker.bench.runner.run_bench` and writes them.

torch is imported inside the functions that need it: ``track bench --help`` and option errors answer without it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

from tracker.bench.config import DEFAULT_VIDEO, GENERATED_CLIP, GENERATED_FRAMES, VIT_B_FAMILY, BenchConfig, Variant
from tracker.bench.hedlin import HEDLIN_FRAMES, HEDLIN_POINTS
from tracker.bench.model_only import _batch_iters, default_precisions, variants
from tracker.bench.runner import clip_line, run_bench
from tracker.errors import TrackerError


def build_parser():
    from tracker.apps.cli import Parser

    p = Parser(
        prog="track bench",
        description="Speed on this machine: model only (latency, throughput, TFLOP/s), end to end on a video "
        "(frames/s, stages, memory), against the naive baseline.",
    )
    p.add_argument(
        "--model", help="end-to-end model (default distilldift, ViT-B/14-reg4; with --quick dinov2-s, ViT-S/14-reg4)"
    )
    p.add_argument(
        "--weights",
        help="'random' (real architecture, random weights: speed does not depend on them) or local file(s); "
        "default: the cached weights of --model",
    )
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--backends", help="comma-separated: torch, onnx, tensorrt (default: all available here)")
    p.add_argument("--precisions", help="fp32, fp16, bf16 (default: fp16,bf16,fp32 on CUDA; fp32 on CPU)")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile variants of the torch backend")
    p.add_argument(
        "--model-only-models", help="model-only architectures (default: dinov2-s and --model: ViT-S and ViT-B)"
    )
    p.add_argument("--sizes", "--model-only-sizes", help="model-only input sizes (default 224,434,518)")
    p.add_argument("--batches", help="model-only batch sizes (default 1,8,32 on CUDA; 1,8 on CPU)")
    p.add_argument(
        "--video", help=f"end-to-end video (default {DEFAULT_VIDEO}; a generated 1280x720 clip when that is absent)"
    )
    p.add_argument("--size", type=int, help="end-to-end input size (default 434)")
    p.add_argument("--batch", type=int, help="end-to-end frames per featurizer batch (default 8, as `track`)")
    p.add_argument("--points", help="end-to-end point counts (default 16,256,1024)")
    p.add_argument("--frames", type=int, help="end-to-end frames per run (default: the whole video on CUDA; 16 on CPU)")
    p.add_argument("--naive-frames", type=int, help="frames per naive-baseline run (default 32 on CUDA; 3 on CPU)")
    p.add_argument("--mask", help="first-frame mask PNG for mask mode (default: a centred box)")
    p.add_argument(
        "--e2e-backend",
        default="best",
        help="end-to-end backend[:precision], e.g. tensorrt:fp16 (default: the fastest model-only variant)",
    )
    p.add_argument("--warmup", type=int, help="untimed calls before timing (default 10 on CUDA, 1 on CPU)")
    p.add_argument("--iters", type=int, help="timed batch-1 calls (larger batches: a quarter; default 100 / 5)")
    p.add_argument("--max-seconds", type=float, help="stop timing one batch size after this long (default 10 / 20)")
    p.add_argument("--only", help="model or e2e (default: both)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="small settings for a first look, tests and CI: ViT-S (dinov2-s) at 224 for the model only and end "
        "to end parts, 256 points on 8 frames, few calls, random weights when --model's are not cached; says its "
        "expected duration first (under a minute on a 2-core CPU)",
    )
    p.add_argument("--tiny", action="store_true", help="tiny widths of the real architecture (tests, CI)")
    p.add_argument("--json", help="write the result: a .json file, or a folder (bench.json); .md and .png beside it")
    p.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    return p


def _ints(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise TrackerError(f"{option} takes comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < 1:
        raise TrackerError(f"{option} takes positive whole numbers, got {text!r}")
    return values


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def config_from_args(args) -> BenchConfig:
    """Validate the options and fill the device-dependent defaults."""
    import torch

    from tracker import weights as W
    from tracker.backends import PRECISIONS, available_backends
    from tracker.featurizers import MODEL_NAMES, VIT_MODELS

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise TrackerError(f"--device must be cpu or cuda, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TrackerError("--device cuda: no CUDA GPU is available to torch on this machine")
    cuda = device.startswith("cuda")
    model = args.model or ("dinov2-s" if args.quick else "distilldift")
    if model not in MODEL_NAMES or model == "auto":
        raise TrackerError(f"--model must be one of {', '.join(MODEL_NAMES[1:])}, got {model!r}")
    if model == "sift" and args.weights:
        raise TrackerError("--weights does not apply to sift (it has no weights)")

    status = available_backends(device)
    unavailable = {name: reason for name, reason in status.items() if reason}
    if args.backends:
        backends = _names(args.backends)
        for b in backends:
            if b not in status:
                raise TrackerError(f"--backends: unknown backend {b!r}; choose from {', '.join(status)}")
            if status[b]:
                raise TrackerError(f"--backends {b}: {status[b]}")
    else:
        backends = tuple(name for name, reason in status.items() if not reason)
    precisions = _names(args.precisions) if args.precisions else default_precisions(torch.device(device))
    for p in precisions:
        if p not in PRECISIONS:
            raise TrackerError(f"--precisions: unknown precision {p!r}; choose from {', '.join(PRECISIONS)}")
    quick = args.quick
    if args.model_only_models:
        model_only = _names(args.model_only_models)
    elif quick:  # ViT-S only: a ViT-B's model-only calls alone take most of a minute on a small CPU
        model_only = ("dinov2-s",)
    else:
        model_only = ("dinov2-s", model if model in VIT_B_FAMILY else "distilldift")
    for m in model_only:
        if m not in VIT_MODELS:
            raise TrackerError(f"--model-only-models takes ViT models ({', '.join(VIT_MODELS)}), got {m!r}")
    sections = ("model", "e2e")
    if args.only:
        if args.only not in sections:
            raise TrackerError(f"--only must be model or e2e, got {args.only!r}")
        sections = (args.only,)

    sizes = _ints(args.sizes, "--sizes") if args.sizes else ((224,) if quick else (224, 434, 518))
    batches = _ints(args.batches, "--batches") if args.batches else ((1, 8, 32) if cuda and not quick else (1, 8))
    hedlin = model == "hedlin"
    size = args.size or (512 if hedlin else 224 if quick else 434)
    if hedlin:
        _check_hedlin_options(args, size)
    elif model != "sift" and size % 14:
        raise TrackerError(f"--size {size}: ViT input sides must be multiples of 14")
    for s in sizes:
        if s % 14:
            raise TrackerError(f"--sizes {s}: ViT input sides must be multiples of 14")
    points = _ints(args.points, "--points") if args.points else ((256,) if quick else (16, 256, 1024))
    if hedlin and not args.points:
        points = HEDLIN_POINTS
    batch = args.batch or 8
    if batch < 1:
        raise TrackerError("--batch must be at least 1")
    frames = args.frames if args.frames is not None else (8 if quick else (None if cuda else 16))
    if hedlin and args.frames is None:
        frames = HEDLIN_FRAMES
    if hedlin and frames < 2:
        raise TrackerError("--frames for hedlin must be at least 2 (the query frame, where it optimises, and more)")
    naive_frames = args.naive_frames if args.naive_frames is not None else (1 if quick else (32 if cuda else 3))
    if (frames is not None and frames < 1) or naive_frames < 1:
        raise TrackerError("--frames and --naive-frames must be at least 1")
    video = None  # not given and the default absent: run_bench generates a clip
    if "e2e" in sections:
        if args.video:
            if not Path(args.video).exists():
                raise TrackerError(f"video not found: {args.video}")
            video = args.video
        elif DEFAULT_VIDEO.exists():
            video = str(DEFAULT_VIDEO)
    if args.mask and not Path(args.mask).is_file():
        raise TrackerError(f"--mask {args.mask}: file not found")
    if args.e2e_backend != "best":
        v = Variant.parse(args.e2e_backend)
        if v.backend not in status or status[v.backend]:
            raise TrackerError(f"--e2e-backend {args.e2e_backend}: {status.get(v.backend, 'unknown backend')}")
        if v.precision and v.precision not in PRECISIONS:
            raise TrackerError(f"--e2e-backend {args.e2e_backend}: unknown precision {v.precision!r}")
    warmup = args.warmup if args.warmup is not None else (1 if quick or not cuda else 10)
    iters = args.iters if args.iters is not None else (3 if quick else (100 if cuda else 5))
    max_seconds = args.max_seconds if args.max_seconds is not None else (2.0 if quick else (10.0 if cuda else 20.0))
    if warmup < 0 or iters < 1 or max_seconds <= 0:
        raise TrackerError("--warmup must be >= 0, --iters >= 1 and --max-seconds > 0")
    weights = args.weights
    if hedlin and "e2e" in sections:
        weights = _hedlin_weights(args.weights, quick)
    if model in VIT_MODELS and not args.weights and "e2e" in sections:
        spec = W.get_spec(model)
        missing = [kind for kind, path in W.weights_status(spec).items() if path is None]
        if missing and quick:  # a smoke run of speed: random weights measure it as honestly (recorded)
            weights = "random"
        elif missing:
            raise TrackerError(
                f"{model} weights are not cached ({', '.join(missing)} missing); speed does not depend on "
                f"weight values, so `--weights random` measures it honestly (and is recorded), or "
                f"{W.how_to_get(spec)}"
            )
    return BenchConfig(
        model=model,
        weights=weights,
        device=device,
        backends=backends,
        precisions=precisions,
        compile=args.compile,
        model_only_models=model_only,
        sizes=sizes,
        batches=batches,
        video=video,
        size=size,
        batch=batch,
        points=points,
        frames=frames,
        naive_frames=naive_frames,
        mask=args.mask,
        e2e_backend=args.e2e_backend,
        warmup=warmup,
        iters=iters,
        max_seconds=max_seconds,
        sections=sections,
        tiny=args.tiny,
        unavailable=unavailable,
    )


def _check_hedlin_options(args, size: int) -> None:
    """``--model hedlin``: its square input side, and the end-to-end options that do not apply (one line each)."""
    from tracker.hedlin_tracker import input_side

    input_side(str(size), False)
    if args.mask:
        raise TrackerError("--mask does not apply to hedlin: it tracks points only (no mask run)")
    if args.e2e_backend not in ("best", "torch") and not args.e2e_backend.startswith("torch:"):
        raise TrackerError("--e2e-backend: hedlin runs on the torch backend only")


def _hedlin_weights(weights: str | None, quick: bool) -> str | None:
    """hedlin's ``--weights`` checked before anything runs; without it the authors' SD-1.4 from the Hugging Face
    cache (``--quick`` falls back to ``random`` when it is not cached, as for the ViTs)."""
    from tracker import hedlin_tracker as HT

    source = HT.weights_source(weights)
    if weights or HT.pipeline_cached():
        return weights
    if quick:
        return "random"
    raise TrackerError(
        f"hedlin's Stable Diffusion UNet/VAE ({source}) are not in the Hugging Face cache; speed does not depend on "
        f"weight values, so `--weights random` measures it honestly (and is recorded), or `hf download {source}`"
    )


# the cost model of expected_seconds, set from `track bench --quick` runs on this project's 2-core CPU shared with
# other work (torch fp32): ViT GFLOP/s per core, seconds per end-to-end frame beside the featurizer (720p decode,
# matching, drawing), memory traffic of the naive baseline's full-frame upsampling, and the fixed costs (start,
# building and exporting models, the video readers)
CPU_GFLOPS_PER_CORE = 20.0
GPU_GFLOPS = 20000.0
E2E_FRAME_S = 0.05
NAIVE_GBPS = 2.0
FIXED_S = 12.0


def expected_seconds(config: BenchConfig, frame_hw: tuple[int, int] = (720, 1280)) -> float:
    """A rough estimate of a run's duration: the FLOPs it plans (model-only calls within their time caps, the
    end-to-end frames of ours, the serial stage runs and the naive baseline) at a fixed speed per core, plus
    fixed costs. An estimate, not a measurement: another load on the cores stretches the run."""
    import torch

    from tracker import weight_loading as WL
    from tracker import weights as W
    from tracker.bench.measure import vit_flops
    from tracker.featurizers import VIT_MODELS

    def gflop(model: str, size: int) -> tuple[float, int]:
        if model not in VIT_MODELS:  # sift: its cost is in E2E_FRAME_S
            return 0.0, 128
        with torch.device("meta"):
            vit = WL.create_vit(W.get_spec(model).arch, (size, size), **config.overrides)
        return vit_flops(vit, (size, size)).gflop, int(vit.embed_dim)

    cuda = config.device.startswith("cuda")
    rate = GPU_GFLOPS if cuda else CPU_GFLOPS_PER_CORE * max(1, min(os.cpu_count() or 1, torch.get_num_threads()))
    seconds = FIXED_S
    if "model" in config.sections:
        for model in config.model_only_models:
            for size in config.sizes:
                g = gflop(model, size)[0]
                for variant in variants(config):
                    if variant.backend == "onnx":
                        seconds += 3.0 + 4 * g / rate  # export and its parity check
                    for b in config.batches:
                        iters, _ = _batch_iters(config, b)
                        warm = config.warmup * b * g / rate
                        seconds += min(warm + iters * b * g / rate, warm + config.max_seconds)
    if "e2e" in config.sections and config.model != "hedlin":  # hedlin's UNet passes are not in this model
        g, channels = gflop(config.model, config.size)
        frames = config.frames or GENERATED_FRAMES
        ours = g / rate + E2E_FRAME_S
        pixels = frame_hw[0] * frame_hw[1]

        def naive(n: int) -> float:
            return g / rate + (2 * n * channels * pixels / 1e9) / rate + 3 * 4 * channels * pixels / 1e9 / NAIVE_GBPS

        items = [(n, 2) for n in config.points] + [(256 if 256 in config.points else config.points[0], 2)]
        seconds += 2 * ours + naive(16)  # warm-up
        for n, runs in items:  # the overlapped run, the serial stage run, the naive baseline
            seconds += runs * frames * ours + config.naive_frames * naive(n)
        seconds += frames * ours + config.naive_frames * (g / rate + E2E_FRAME_S)  # the mask run
    return seconds


def _frame_hw(config: BenchConfig) -> tuple[int, int]:
    """The end-to-end video's ``(height, width)`` (the generated clip's without a video)."""
    if config.video is None:
        return GENERATED_CLIP["size"]
    from tracker.io.video import open_video

    with open_video(config.video) as video:
        return video.info.height, video.info.width


def output_paths(target: str) -> tuple[Path, Path, Path]:
    """``(json, md, png)`` for ``--json``: a ``.json`` file, or a folder that gets ``bench.json``."""
    path = Path(target)
    if path.suffix.lower() != ".json":
        path = path / "bench.json"
    folder = path.parent if str(path.parent) else Path(".")
    if folder.exists() and not folder.is_dir():
        raise TrackerError(f"--json {target}: {folder} is not a folder")
    with contextlib.suppress(OSError):
        folder.mkdir(parents=True, exist_ok=True)
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise TrackerError(f"--json {target}: cannot write to {folder}")
    return path, path.with_suffix(".md"), path.with_suffix(".png")


def check_outputs(args, config: BenchConfig, paths: tuple[Path, Path, Path]) -> None:
    """Refuse, in one line and before any work, a result file (the ``--json`` file and the ``.md`` and ``.png``
    beside it) that is an input (``--video`` or the default video, ``--mask``, ``--weights`` files) or that cannot
    be written (``/proc``, a read-only folder), as ``track`` refuses its outputs."""
    from tracker.apps.track_video import check_writable, refuse_overwriting

    json_path, md_path, png_path = paths
    shown = f"(from --json {args.json})"
    outputs = {"--json": json_path, f"the report {shown}": md_path, f"the chart {shown}": png_path}
    weights = [w.strip() for w in (args.weights or "").split(",") if w.strip() and w.strip() != "random"]
    inputs = {
        "the --video file": args.video,
        "the end-to-end video": config.video,
        "the --mask file": args.mask,
        **{f"the --weights file {w}": w for w in weights},
    }
    refuse_overwriting(outputs, inputs)
    for option, path in outputs.items():
        check_writable(path, option)


def main(argv: list[str]) -> int:
    from tracker.bench.report import plot_png, summary_lines, to_markdown
    from tracker.io.atomic import atomic_write

    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    paths = output_paths(args.json) if args.json else None
    if paths is not None:
        check_outputs(args, config, paths)
    if "e2e" in config.sections and config.video is None:
        print(f"track bench: {clip_line(config)}", file=sys.stderr, flush=True)
    if args.quick:
        random = " (random weights: --model's are not cached)" if config.weights != args.weights else ""
        if config.model == "hedlin" and "e2e" in config.sections:
            random += ", plus hedlin's end-to-end part (not estimated: minutes of UNet passes on a CPU)"
        print(
            f"track bench --quick: expect about {expected_seconds(config, _frame_hw(config)):.0f} s{random}; an "
            "estimate from the work planned and a shared 2-core CPU's fp32 speed, longer when others use the cores",
            file=sys.stderr,
            flush=True,
        )

    def log(line: str) -> None:
        if not args.no_progress:
            print(f"bench: {line}", file=sys.stderr, flush=True)

    report = run_bench(config, log, command=" ".join(["track", "bench", *argv]))
    for line in summary_lines(report):
        print(line)
    if "end_to_end_hedlin" in report:  # not in the summary's end-to-end runs: its own loop (run_hedlin)
        print(f"  {report['end_to_end_hedlin']['line']}")
    if paths is not None:
        json_path, md_path, png_path = paths
        atomic_write(json_path, (json.dumps(report, indent=1, default=_jsonable) + "\n").encode())
        atomic_write(md_path, to_markdown(report).encode())
        atomic_write(png_path, plot_png(report))
        print(f"wrote {json_path}, {md_path.name}, {png_path.name}")
    return 0


def _jsonable(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
