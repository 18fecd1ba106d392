"""Reporting for ``track bench``: the issue's targets checked against a result, a markdown report, a PNG plot
and the few lines printed at the end of a run."""

from __future__ import annotations

import io

GPU_TARGET_NOTE = "set for one H200, ViT-B/14 at 434x434, the 1280x720 video"


def _fmt(value, digits: int = 1, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != 0 and abs(value) < 10**-digits:
            return f"{value:.2g}{unit}"
        return f"{value:,.{digits}f}{unit}"
    return f"{value}{unit}"


def _run(report: dict, name: str) -> dict | None:
    return next((r for r in report.get("end_to_end", {}).get("runs", []) if r["name"] == name), None)


def _vit_b_434(report: dict) -> list[dict]:
    return [
        r
        for r in report.get("model_only", [])
        if r["status"] == "ok" and r["arch"] == "ViT-B/14-reg4" and r["size"] == 434 and not r.get("role")
    ]


def evaluate_targets(report: dict) -> list[dict]:
    """The issue's targets with what this run measured; ``met`` is None where this machine cannot say."""
    cpu = report["settings"]["device"] == "cpu"
    e2e_256 = _run(report, "points-256")
    e2e_256_video = _run(report, "points-256+video")
    vit_b = _vit_b_434(report)
    latency = [(r["latency_ms"]["p50"], r["backend"] + " " + r["precision"]) for r in vit_b if "latency_ms" in r]
    batch32 = [(r["batches"]["32"]["fps"], r["backend"] + " " + r["precision"]) for r in vit_b if "32" in r["batches"]]
    best_latency = min(latency) if latency else None
    best_32 = max(batch32) if batch32 else None
    card = report["machine"].get("gpu") or report["machine"].get("gpu_torch_name")

    def target(ident, text, measured, ok, applies, note=""):
        met = (ok if measured is not None else None) if applies else None
        if not applies:
            measured = None
            note = "GPU target: this run was on the CPU" if cpu else "CPU target: this run was on a GPU"
        elif measured is None:
            note = note or "not measured in this run"
        return {"id": ident, "target": text, "measured": measured, "met": met, "note": note}

    rest = e2e_256.get("rest_over_featurizer") if e2e_256 else None
    speedup = report.get("speedup_vs_naive")
    gpu_note = f"targets {GPU_TARGET_NOTE}; measured on {card}" if not cpu else ""
    frame = report.get("end_to_end", {}).get("frame_size")
    video_note = gpu_note + (f"; video {frame[0]}x{frame[1]}" if frame else "")
    gpu_mem = e2e_256["memory"]["gpu_mib"] if e2e_256 else None
    return [
        target(
            "cpu_step_rest_share",
            "CPU, 256 points: matching + soft-argmax + bookkeeping <= 10% of the featurizer's time",
            rest,
            rest is not None and rest <= 0.10,
            cpu,
            f"model {report['settings']['model']}" if cpu else "",
        ),
        target(
            "cpu_speedup_vs_naive",
            "CPU: end to end >= 5x the naive baseline (256 points)",
            speedup,
            speedup is not None and speedup >= 5,
            cpu,
        ),
        target(
            "gpu_latency_b1_p50_ms",
            "GPU: ViT-B/14 434 model-only batch-1 p50 <= 1.0 ms (best backend)",
            best_latency[0] if best_latency else None,
            best_latency is not None and best_latency[0] <= 1.0,
            not cpu,
            (gpu_note + f"; best: {best_latency[1]}") if best_latency else gpu_note,
        ),
        target(
            "gpu_throughput_b32_fps",
            "GPU: ViT-B/14 434 model-only batch 32 >= 2,000 frames/s",
            best_32[0] if best_32 else None,
            best_32 is not None and best_32[0] >= 2000,
            not cpu,
            (gpu_note + f"; best: {best_32[1]}") if best_32 else gpu_note,
        ),
        target(
            "gpu_e2e_256_fps",
            "GPU: end to end, 256 points, no rendering >= 300 frames/s",
            e2e_256["fps"] if e2e_256 else None,
            e2e_256 is not None and e2e_256["fps"] >= 300,
            not cpu,
            video_note,
        ),
        target(
            "gpu_e2e_256_video_fps",
            "GPU: end to end, 256 points, writing the overlay video >= 100 frames/s",
            e2e_256_video["fps"] if e2e_256_video else None,
            e2e_256_video is not None and e2e_256_video["fps"] >= 100,
            not cpu,
            video_note,
        ),
        target(
            "gpu_peak_memory_mib",
            "GPU: peak GPU memory <= 2 GB (1,907 MiB), end to end with 256 points",
            gpu_mem,
            gpu_mem is not None and gpu_mem <= 2e9 / 2**20,
            not cpu,
            gpu_note + ("; NVML, CUDA context included" if gpu_mem is not None else ""),
        ),
    ]


# --------------------------------------------------------------------------- markdown


def _machine_rows(m: dict) -> list[str]:
    rows = [
        f"| CPU | {m['cpu']}, {m['cpu_cores_logical']} logical / {m['cpu_cores_physical']} physical cores, "
        f"{m['ram_gib']} GiB RAM, torch threads {m['torch_threads']} |",
        f"| load average (1, 5, 15 min) | at start {m['load_average_at_start']}, "
        f"at end {m.get('load_average_at_end')} |",
    ]
    if m.get("gpu") or m.get("gpu_torch_name"):
        rows += [
            f"| GPU | {m.get('gpu') or m.get('gpu_torch_name')}, {_fmt(m.get('gpu_memory_mib'), 0)} MiB, "
            f"driver {m.get('driver')}, CUDA driver {m.get('cuda_driver')}, persistence {m.get('persistence_mode')} |",
            f"| GPU clocks (MHz) | SM {m.get('sm_clock_mhz')} (max {m.get('sm_clock_max_mhz')}), memory "
            f"{m.get('memory_clock_mhz')} (max {m.get('memory_clock_max_mhz')}), power limit "
            f"{_fmt(m.get('power_limit_w'), 0)} W |",
        ]
    rows.append(
        f"| software | Python {m['python']}, torch {m['torch']} (CUDA {m['torch_cuda']}, cuDNN {m['cudnn']}), "
        f"timm {m['timm']}, onnxruntime {m['onnxruntime']}, TensorRT {m['tensorrt']}, numpy {m['numpy']}, "
        f"OpenCV {m['opencv']} |"
    )
    rows.append(f"| OS | {m['os']} |")
    return rows


def _model_table(report: dict) -> list[str]:
    records = report.get("model_only", [])
    if not records:
        return ["(not run)"]
    cpu = report["settings"]["device"] == "cpu"
    batches = sorted({int(b) for r in records if r["status"] == "ok" for b in r["batches"]})
    big = [b for b in batches if b > 1]
    rate = "GFLOP/s" if cpu else "TFLOP/s"
    head = ["model", "input", "backend", "precision", "GFLOP/frame", "batch 1 p50 / p90 / p99 ms"]
    head += [f"batch {b} frames/s" for b in big]
    head += [f"achieved {rate} (batch {max(batches)})", "of peak", "vs naive: latency / throughput"]
    head += ["peak GPU MiB" if not cpu else "peak RSS MiB", "others' CPU"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        name = r["arch"] + (" (naive reference)" if r.get("role") else "")
        cells = [name, str(r["size"]), r["backend"], r["precision"], _fmt(r["gflop_per_frame"], 1)]
        if r["status"] != "ok":
            lines.append("| " + " | ".join(cells) + f" | {r['status']} |" + " |" * (len(head) - len(cells) - 1))
            continue
        lat = r.get("latency_ms")
        cells.append(f"{lat['p50']:.2f} / {lat['p90']:.2f} / {lat['p99']:.2f}" if lat else "-")
        cells += [_fmt(r["batches"].get(str(b), {}).get("fps"), 1) for b in big]
        top = r["batches"][str(max(int(b) for b in r["batches"]))]
        cells.append(_fmt(top["achieved_tflops"] * (1000 if cpu else 1), 2))
        cells.append(_fmt(100 * top["peak_fraction"], 1, "%") if top.get("peak_fraction") is not None else "unknown")
        vs = r.get("vs_naive")
        if vs:
            best = max(vs["throughput"].values())
            cells.append(f"{_fmt(vs['latency'], 2, 'x')} / {_fmt(best, 2, 'x')}")
        else:
            cells.append("-")
        mem = r["memory"]["host_rss_mib"] if cpu else r["memory"]["gpu_mib"]
        cells += [_fmt(mem, 0), _share(r["memory"])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _size(size) -> str:
    """``[width, height]`` as ``WxH`` (older results may hold one number or nothing)."""
    return "x".join(str(v) for v in size) if isinstance(size, (list, tuple)) else str(size)


def _share(memory: dict) -> str:
    share = memory.get("others_cpu_share")
    return "-" if share is None else f"{100 * share:.0f}%"


def _e2e_tables(report: dict) -> list[str]:
    e2e = report.get("end_to_end")
    if not e2e:  # hedlin's end-to-end part is its own per-point loop (runner.run_hedlin): its one line
        return [report["end_to_end_hedlin"]["line"]] if "end_to_end_hedlin" in report else ["(not run)"]
    cpu = report["settings"]["device"] == "cpu"
    frames = e2e["runs"][0]["frames"] if e2e["runs"] else 0
    lines = [
        f"Video `{e2e['video']}` ({e2e['frame_size'][0]}x{e2e['frame_size'][1]}, {e2e['video_frames']} frames); "
        f"{e2e['model']} ({e2e['weights']}) at {_size(e2e['input_size'])}, featurizer: {e2e['featurizer']} "
        f"({e2e['variant_choice']}); batch {e2e['batch']}; {frames} frames per run. Naive baseline: "
        f"{e2e['naive']['featurizer']}, {e2e['naive']['frames']} frames per run. Mask mode: {e2e['mask']}.",
        "",
        "| run | frames/s | ms/frame | naive frames/s | speedup vs naive | bottleneck | "
        + ("peak RSS MiB |" if cpu else "peak GPU MiB | peak RSS MiB |")
        + " others' CPU (ours / naive) |",
        "|---|---|---|---|---|---|---|---|" + ("" if cpu else "---|"),
    ]
    for r in e2e["runs"]:
        mem = [_fmt(r["memory"]["host_rss_mib"], 0), f"{_share(r['memory'])} / {_share(r['naive']['memory'])}"]
        if not cpu:
            mem.insert(0, _fmt(r["memory"]["gpu_mib"], 0))
        lines.append(
            f"| {r['name']} | {_fmt(r['fps'], 2)} | {_fmt(r['ms_per_frame'], 1)} | {_fmt(r['naive']['fps'], 3)} | "
            f"{_speedup(r['speedup_vs_naive'], 1)} | {r['bottleneck']} | " + " | ".join(mem) + " |"
        )
    stages = ["decode", "upload", "preprocess", "featurizer", "upsample", "matching", "propagation"]
    stages += ["drawing", "encoding"]
    lines += [
        "",
        "Time per stage, ms per frame (upload: host to device; preprocess: resize and normalise; matching: the "
        "tracker's step minus the featurizer; naive featurizer includes its upload and pre-process; "
        + (
            "on the GPU from a second run with a device synchronisation after every stage"
            if not cpu
            else "CPU: one run"
        )
        + "):",
        "",
        "| run | " + " | ".join(stages) + " | rest | total |",
        "|---|" + "---|" * (len(stages) + 2),
    ]
    for r in e2e["runs"]:
        for label, run in ((r["name"], r), (f"naive {r['name']}", r["naive"])):
            s = run["stages_ms_per_frame"]
            cells = [_fmt(s[k], 1) if k in s else "" for k in stages]
            cells = [f"**{c}**" if k == run["bottleneck"] else c for k, c in zip(stages, cells, strict=True)]
            rest = run.get("stages_other_ms_per_frame")
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {_fmt(rest, 1)} | {_fmt(run['ms_per_frame'], 1)} |")
    readers = e2e.get("readers")
    if readers:
        lines += ["", "Video readers (`--reader`), decode frames/s on this video:", ""]
        lines += [
            f"- {name}: " + (f"{_fmt(r['fps'], 1)} frames/s ({r['frames']} frames)" if "fps" in r else r["unavailable"])
            for name, r in readers.items()
        ]
    return lines


def _speedup(value, digits: int) -> str:
    """A speedup: bold when it is one (>= 1x), plain and said to be slower when it is not."""
    if value is None:
        return "-"
    if value >= 1:
        return f"**{_fmt(value, digits, 'x')}**"
    return f"{_fmt(value, max(digits, 2), 'x')} (slower)"


def in_short(report: dict) -> list[str]:
    """One plain line per model: what it does here, in frames/s, before the detail tables."""
    lines = []
    e2e = report.get("end_to_end") or {}
    runs = {r["name"]: r for r in e2e.get("runs", [])}
    plain, video = runs.get("points-256"), runs.get("points-256+video")
    if plain:
        w, h = e2e["frame_size"]
        with_video = f", {_fmt(video['fps'], 1)} frames/s writing the overlay video" if video else ""
        lines.append(
            f"- {e2e['model']} at {_size(e2e['input_size'])}: {_fmt(plain['fps'], 1)} frames/s here end to end on the "
            f"{w}x{h} ({h}p) video, 256 points, no rendering{with_video}"
        )
    best: dict[tuple, dict] = {}
    for r in report.get("model_only", []):
        if r["status"] != "ok" or r.get("role"):
            continue
        for b, v in r["batches"].items():
            key = (r["arch"], r["size"])
            if key not in best or v["fps"] > best[key]["fps"]:
                best[key] = {"fps": v["fps"], "how": f"{r['backend']} {r['precision']}, batch {b}"}
    for (arch, size), v in best.items():
        lines.append(f"- {arch} at {size}: up to {_fmt(v['fps'], 1)} frames/s here, featurizer alone ({v['how']})")
    return lines or ["- (nothing measured)"]


def to_markdown(report: dict) -> str:
    m = report["machine"]
    s = report["settings"]
    speedup = report["speedup_vs_naive"]
    out = [
        f"# `track bench` on {m['label']}",
        "",
        f"{report['created']}, {report['seconds']:.0f} s: `{report['command']}`",
        "",
        *in_short(report),
        "",
        f"speedup_vs_naive (end to end, 256 points, no rendering): {_speedup(speedup, 2)}",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *_machine_rows(m),
        "",
        "## Targets",
        "",
        "| target | measured | met | note |",
        "|---|---|---|---|",
    ]
    for t in report["targets"]:
        met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
        out.append(f"| {t['target']} | {_fmt(t['measured'], 3)} | {met} | {t['note']} |")
    peaks = report["peak_tflops"]
    out += [
        "",
        "## Model only",
        "",
        f"Featurizer alone on `[B, S, S, 3]` uint8 frames already on `{s['device']}` at the input size (no decode, "
        "upload or resize), unit feature grid out; weights random (speed does not depend on weight values). "
        f"Timing: {s['warmup']} warm-up call(s), then up to {s['iters']} timed batch-1 calls (a quarter of that for "
        f"larger batches; at most {s['max_seconds']:g} s per batch size), "
        + ("CUDA events with the device synchronised around each call" if s["device"] != "cpu" else "wall clock")
        + "; frames/s = batch / p50. GFLOP per frame: "
        + report["flop_convention"]
        + ". Peak: "
        + (
            f"{peaks['source']}."
            if isinstance(peaks, dict)
            else "unknown for this device (CPU: achieved GFLOP/s only)."
        )
        + " vs naive: torch fp32 eager at batch 1 of the same model and size.",
        "",
        *_model_table(report),
        "",
        "## End to end",
        "",
        *_e2e_tables(report),
        "",
        "## Memory",
        "",
    ]
    mem = report["memory"]
    out += [
        f"- peak GPU memory, end to end ({mem['gpu_peak_mib_end_to_end_run']}): "
        f"{_fmt(mem['gpu_peak_mib_end_to_end'], 0, ' MiB')}; any measurement: "
        f"{_fmt(mem['gpu_peak_mib_any_measurement'], 0, ' MiB')}",
        f"- peak host RSS, end to end: {_fmt(mem['host_rss_peak_mib_end_to_end'], 0, ' MiB')}; whole process: "
        f"{_fmt(mem['host_rss_peak_mib_process'], 0, ' MiB')}",
        f"- {mem['how']}",
    ]
    if report["notes"] or report["backends_unavailable"]:
        out += ["", "## Notes", ""]
        out += [f"- {n}" for n in report["notes"]]
        out += [f"- backend {b} not available: {why}" for b, why in report["backends_unavailable"].items()]
    return "\n".join(out) + "\n"


def summary_lines(report: dict) -> list[str]:
    """A few lines for the terminal."""
    lines = [f"track bench on {report['machine']['label']} ({report['seconds']:.0f} s)"]
    for r in report.get("model_only", []):
        if r["status"] == "ok" and "latency_ms" in r:
            best = max(r["batches"].values(), key=lambda b: b["fps"])
            lines.append(
                f"  model {r['arch']} {r['size']} {r['backend']} {r['precision']}: batch-1 p50 "
                f"{r['latency_ms']['p50']:.2f} ms, up to {best['fps']:.1f} frames/s"
            )
    for r in report.get("end_to_end", {}).get("runs", []):
        lines.append(
            f"  end to end {r['name']}: {r['fps']:.2f} frames/s ({r['speedup_vs_naive']:.1f}x naive), "
            f"bottleneck {r['bottleneck']}"
        )
    speedup = report["speedup_vs_naive"]
    slower = " (slower than the naive baseline)" if speedup is not None and speedup < 1 else ""
    lines.append(f"  speedup_vs_naive: {_fmt(speedup, 2, 'x')}{slower}")
    for t in report["targets"]:
        if t["met"] is not None:
            verdict = "met" if t["met"] else "NOT met"
            lines.append(f"  target {verdict}: {t['target']} (measured {_fmt(t['measured'], 3)})")
    return lines


# --------------------------------------------------------------------------- plot


def plot_png(report: dict) -> bytes:
    """PNG: model-only throughput, one panel per batch size (top); end-to-end time per stage, ours and naive
    (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in report.get("model_only", []) if r["status"] == "ok" and not r.get("role")]
    batches = sorted({int(b) for r in records for b in r["batches"]})
    panels = max(1, len(batches))
    fig = plt.figure(figsize=(max(15, 5 * panels), 11))
    grid = fig.add_gridspec(2, panels, height_ratios=[1, 1])
    palette = {"torch": "tab:blue", "torch+compile": "tab:cyan", "onnx": "tab:orange", "tensorrt": "tab:green"}
    if records:
        for k, batch in enumerate(batches):  # one batch size per panel, linear axis from zero, values written
            ax = fig.add_subplot(grid[0, k])
            rows = [r for r in records if str(batch) in r["batches"]]
            values = [r["batches"][str(batch)]["fps"] for r in rows]
            labels = [f"{r['arch'].split('/')[0]} {r['size']} {r['precision']}" for r in rows]
            colours = [palette.get(r["backend"], "tab:gray") for r in rows]
            y = list(range(len(rows)))
            ax.barh(y, values, color=colours)
            for i, v in zip(y, values, strict=True):
                ax.text(v, i, f" {v:,.1f}", va="center", fontsize=7)
            ax.set_yticks(y, labels, fontsize=7)
            ax.invert_yaxis()
            ax.set_xlim(0, max(values) * 1.25 if values else 1)
            ax.set_xlabel("frames/s")
            ax.set_title(f"Model only, batch {batch}")
            shown = sorted({r["backend"] for r in rows})
            handles = [plt.Rectangle((0, 0), 1, 1, color=palette.get(b, "tab:gray")) for b in shown]
            ax.legend(handles, shown, fontsize=7, loc="lower right", title="backend", title_fontsize=7)
    else:
        ax = fig.add_subplot(grid[0, :])
        ax.text(0.5, 0.5, "model-only section not run", ha="center")
        ax.set_axis_off()
    right = fig.add_subplot(grid[1, :])
    runs = report.get("end_to_end", {}).get("runs", [])
    if runs:
        stages = ["decode", "upload", "preprocess", "featurizer", "upsample", "matching", "propagation"]
        stages += ["drawing", "encoding"]
        rows = []
        for r in runs:
            rows.append((r["name"], r["stages_ms_per_frame"], r["ms_per_frame"]))
            rows.append((f"naive {r['name']}", r["naive"]["stages_ms_per_frame"], r["naive"]["ms_per_frame"]))
        cmap = plt.get_cmap("tab10")
        for i, (_, s, total) in enumerate(rows):
            start = 0.0
            for j, k in enumerate(stages):
                width = s.get(k, 0.0)
                if width > 0:
                    right.barh(i, width, left=start, color=cmap(j))
                    start += width
            right.text(total, i, f" {1000 / total:.2f} fps", va="center", fontsize=7)
        handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(j)) for j in range(len(stages))]
        right.legend(handles, stages, fontsize=7, loc="lower right")
        right.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=7)
        right.invert_yaxis()
        right.set_xlabel("ms per frame, stacked by stage")
        speedup = report["speedup_vs_naive"]
        slower = " (slower)" if speedup is not None and speedup < 1 else ""
        right.set_title(f"End to end: speedup vs naive (256 points) {_fmt(speedup, 1, 'x')}{slower}")
    else:
        right.text(0.5, 0.5, "end-to-end section not run", ha="center")
        right.set_axis_off()
    machine = report["machine"]
    fig.suptitle(f"track bench on {machine['label']}: {machine.get('gpu') or machine['cpu']}")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()
