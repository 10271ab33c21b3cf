"""Ratios against the targets, the printed summary, and the files a run leaves behind."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

# name: (target, "max" when the ratio must stay at or below it, "min" at or above)
# The `in_situ` ratios use the app's own model time during the same phase (Server-Timing and
# the batcher metrics), so other processes' load affects both sides of them alike.
TARGETS = {
    "rest_p50_over_model_batch1": (1.3, "max"),
    "rest_p50_over_model_batch1_in_situ": (1.3, "max"),
    "rest_p50_jpeg_over_model_batch1_in_situ": (1.3, "max"),
    "throughput_c8_over_model_limit": (0.9, "min"),
    "throughput_c32_over_model_limit": (0.9, "min"),
    "model_busy_share_c8_in_situ": (0.9, "min"),
    "model_busy_share_c32_in_situ": (0.9, "min"),
    "throughput_c8_over_plain": (3.0, "min"),
    "throughput_c32_over_plain": (3.0, "min"),
    "plain_p50_over_rest_p50": (1.0, "min"),
    "ssim_ms_per_frame": (1.0, "max"),
}


def ratios(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Compute each target's ratio; NaN where its inputs were not measured."""
    service = results["sonomask"]
    plain = results.get("plain") or {}
    model = service.get("model_adjacent") or results["models"].get(service.get("backend"), {})
    batch_1_ms = model.get("batch_1", {}).get("p50_ms", math.nan)
    batch_8_ms = model.get("batch_8", {}).get("p50_ms", math.nan)
    model_limit_per_s = 1000 / batch_8_ms if batch_8_ms else math.nan

    def throughput(source: dict[str, Any], phase: str) -> float:
        return float(source.get(phase, {}).get("throughput_per_s", math.nan))

    def p50(source: dict[str, Any], phase: str = "c1") -> float:
        return float(source.get(phase, {}).get("latency_p50_ms", math.nan))

    def inference_in_situ_ms(phase: str) -> float:
        timing = service.get(phase, {}).get("server_timing_p50_ms", {})
        return float(timing.get("inference", math.nan))

    def busy_share(phase: str) -> float:
        in_situ = service.get(phase, {}).get("model_in_situ") or {}
        return float(in_situ.get("model_busy_share", math.nan))

    values = {
        "rest_p50_over_model_batch1": p50(service) / batch_1_ms,
        "rest_p50_over_model_batch1_in_situ": p50(service) / inference_in_situ_ms("c1"),
        "rest_p50_jpeg_over_model_batch1_in_situ": (
            p50(service, "c1_jpeg") / inference_in_situ_ms("c1_jpeg")
        ),
        "throughput_c8_over_model_limit": throughput(service, "c8") / model_limit_per_s,
        "throughput_c32_over_model_limit": throughput(service, "c32") / model_limit_per_s,
        "model_busy_share_c8_in_situ": busy_share("c8"),
        "model_busy_share_c32_in_situ": busy_share("c32"),
        "throughput_c8_over_plain": throughput(service, "c8") / throughput(plain, "c8"),
        "throughput_c32_over_plain": throughput(service, "c32") / throughput(plain, "c32"),
        "plain_p50_over_rest_p50": p50(plain) / p50(service),
        "ssim_ms_per_frame": float(results["ssim"]["per_frame_ms"]),
    }
    return {
        name: {
            "value": value,
            "target": TARGETS[name][0],
            "kind": TARGETS[name][1],
            "met": _met(value, *TARGETS[name]),
        }
        for name, value in values.items()
    }


def _met(value: float, target: float, kind: str) -> bool | None:
    if math.isnan(value):
        return None
    return value <= target if kind == "max" else value >= target


def print_summary(results: dict[str, Any]) -> None:
    print()
    print("model time per image (ms, p50)      batch 1   batch 8   RSS MiB  torch imported")
    for backend, model in results["models"].items():
        if "error" in model:
            print(f"  {backend:<32} failed")
            continue
        print(
            f"  {backend:<32} {model['batch_1']['p50_ms']:8.1f}  {model['batch_8']['p50_ms']:8.1f}"
            f"  {model['rss_after_load_mib']:8.0f}  {model['torch_imported']}"
        )
    service = results["sonomask"]
    print(f"served backend: {service.get('backend')}, server memory {service['memory']}")
    adjacent = service.get("model_adjacent") or {}
    if "batch_1" in adjacent:
        print(
            f"served backend just before the load: batch 1 {adjacent['batch_1']['p50_ms']:.1f} ms,"
            f" batch 8 {adjacent['batch_8']['p50_ms']:.1f} ms per image"
        )
    print()
    print(f"{'ratio':<42}    value  target   met")
    for name, ratio in results["ratios"].items():
        sign = "<=" if ratio["kind"] == "max" else ">="
        met = {True: "yes", False: "NO", None: "n/a"}[ratio["met"]]
        print(f"  {name:<42} {ratio['value']:7.2f}  {sign} {ratio['target']:<5}  {met}")


def write(results: dict[str, Any], directory: Path) -> None:
    """Write latest.json and the plot, and append one summary line to history.jsonl."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "latest.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    summary = {
        "started_utc": results["started_utc"],
        "cpu": results["environment"]["cpu"],
        "cpu_count": results["environment"]["cpu_count"],
        "load_average_before": results["environment"]["load_average_before"],
        "model": results["model"],
        "served_backend": results["sonomask"].get("backend"),
        "ratios": {name: round(r["value"], 3) for name, r in results["ratios"].items()},
        "model_batch_1_ms": {
            backend: round(m["batch_1"]["p50_ms"], 2)
            for backend, m in results["models"].items()
            if "batch_1" in m
        },
    }
    with (directory / "history.jsonl").open("a", encoding="utf-8") as history:
        history.write(json.dumps(summary) + "\n")
    plot(results, directory / "benchmarks.png")
    print(f"wrote {directory / 'latest.json'}, {directory / 'benchmarks.png'}, history.jsonl")


def plot(results: dict[str, Any], path: Path) -> None:
    """Two panels: model time per backend, and REST throughput against the model's limit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (models_axis, rest_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    timed = {name: m for name, m in results["models"].items() if "batch_1" in m}
    names = list(timed)
    positions = range(len(names))
    models_axis.bar(
        [p - 0.2 for p in positions],
        [timed[n]["batch_1"]["p50_ms"] for n in names],
        0.4,
        label="batch 1",
    )
    models_axis.bar(
        [p + 0.2 for p in positions],
        [timed[n]["batch_8"]["p50_ms"] for n in names],
        0.4,
        label="batch 8 (per image)",
    )
    models_axis.set_xticks(list(positions), names, rotation=20)
    models_axis.set_ylabel("ms per image (p50)")
    models_axis.set_title("(a) model time by backend")
    models_axis.legend()

    phases = ["c1", "c8", "c32"]
    servers = {"sonomask": results["sonomask"], "plain server": results.get("plain") or {}}
    for offset, (label, source) in zip((-0.2, 0.2), servers.items(), strict=True):
        values = [source.get(phase, {}).get("throughput_per_s", 0.0) for phase in phases]
        rest_axis.bar([i + offset for i in range(len(phases))], values, 0.4, label=label)
    served = results["sonomask"].get("model_adjacent") or {}
    if "batch_8" in served:
        limit = 1000 / served["batch_8"]["p50_ms"]
        rest_axis.axhline(limit, color="black", linestyle="--", label="model limit (batch 8)")
    rest_axis.set_xticks(range(len(phases)), ["1 client", "8 clients", "32 clients"])
    rest_axis.set_ylabel("images per second")
    rest_axis.set_title("(b, c) POST /v1/mask throughput")
    rest_axis.legend()

    environment = results["environment"]
    figure.suptitle(
        f"{environment['cpu']}, {environment['cpu_count']} cores, {results['started_utc']}",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
