"""Run every hardening check at full size and write docs/hardening-report.json and hardening.md.

    python -m scripts.hardening.report            # full form, several minutes
    python -m scripts.hardening.report --quick    # small numbers, to try the script

Steps, all on 127.0.0.1:
1. Corpus and privacy. A `sonomask serve` child that logs JSON at DEBUG level gets the
   corpus several times and the real files once. Its RSS, output and file writes are checked.
2. Faults. An in-process app with the fault-injecting detector from tests/conftest.py gets
   noise frames over REST through every fault, then one stream while the fault switches.
3. Load. A fresh child gets warm-up requests, the load, then the stream session churn.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

from scripts.hardening.fault_volume import (
    RecordingDetector,
    counters_add_up,
    run_fault_volume,
    run_stream_faults,
)
from scripts.hardening.make_corpus import STREAMS_ROUTE, all_cases, file_part, multipart
from scripts.hardening.privacy import identifying_values, pixel_data_findings
from scripts.hardening.run_load import load_image, soak
from scripts.hardening.server import (
    REPO_ROOT,
    ServerProcess,
    build_untrained_model,
    list_files,
    run_server,
    serve_in_process,
)
from scripts.hardening.stream_client import use_loopback_ice

REAL_DATA = REPO_ROOT.parent / "shared" / "data" / "real"
JSON_OUT = REPO_ROOT / "docs" / "hardening-report.json"
MARKDOWN_OUT = REPO_ROOT / "docs" / "hardening.md"
MIB = 1024 * 1024


def environment(model: Path) -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "generated_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
        "commit": commit,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
        "model": model.name,
    }


# Corpus and privacy


def run_corpus(server: ServerProcess, passes: int) -> dict[str, Any]:
    """Send the corpus `passes` times; count statuses, mismatches and server errors."""
    cases = [case for case in all_cases() if case.route != STREAMS_ROUTE or _has_streams(server)]
    mismatches: dict[str, int] = {}
    statuses: Counter[str] = Counter()
    rss_after_pass_mib = []
    server_errors = 0
    transport_errors = 0
    mark = server.mark()
    with httpx.Client(base_url=server.base_url, timeout=120) as client:
        for _ in range(passes):
            for case in cases:
                try:
                    response = client.post(
                        case.route, params=case.query, content=case.body, headers=case.headers
                    )
                except httpx.HTTPError:
                    transport_errors += 1
                    continue
                statuses[str(response.status_code)] += 1
                server_errors += response.status_code >= 500
                if response.status_code not in case.expected_statuses:
                    mismatches[case.name] = response.status_code
            rss_after_pass_mib.append(round(server.rss_bytes() / MIB, 1))
    tracebacks = sum("Traceback" in line for line in server.log_lines_since(mark))
    return {
        "cases": len(cases),
        "cases_by_kind": dict(Counter(case.kind for case in cases)),
        "passes": passes,
        "requests": len(cases) * passes,
        "statuses": dict(sorted(statuses.items())),
        "server_errors": server_errors,
        "transport_errors": transport_errors,
        "unexpected_statuses": mismatches,
        "tracebacks_in_log": tracebacks,
        "rss_after_pass_mib": rss_after_pass_mib,
        "server_alive": server.is_alive(),
    }


def run_privacy(server: ServerProcess, ready_mark: int, before: dict[str, Any]) -> dict[str, Any]:
    """Send real files and a named upload; search the output and list the server's folders.

    `ready_mark` and `before` are the output position and folder listings taken when the
    server became ready, before the corpus ran.
    """
    folders = [server.workdir / name for name in ("cwd", "tmp", "home")]
    statuses: Counter[str] = Counter()
    file_name = "jane-roe-1984-03-07-scan.png"
    dicom_files = sorted((REAL_DATA / "dicom").glob("*.dcm"))
    with httpx.Client(base_url=server.base_url, timeout=120) as client:
        for path in sorted((REAL_DATA / "hc18").glob("*.png"))[:20]:
            response = client.post(
                "/v1/mask", content=path.read_bytes(), headers={"Content-Type": "image/png"}
            )
            statuses[str(response.status_code)] += 1
        for path in dicom_files:
            response = client.post(
                "/v1/mask",
                content=path.read_bytes(),
                headers={"Content-Type": "application/dicom"},
            )
            statuses[str(response.status_code)] += 1
        still = sorted((REAL_DATA / "hc18").glob("*.png"))[0].read_bytes()
        named = multipart([file_part(still, "image/png", filename=file_name)])
        response = client.post(
            "/v1/mask",
            content=named,
            headers={"Content-Type": "multipart/form-data; boundary=corpus-boundary"},
        )
        statuses[str(response.status_code)] += 1

    whole_output = server.log_lines_since(0)
    text = "\n".join(whole_output)
    header_values = [
        (path.name, key, value) for path in dicom_files for key, value in identifying_values(path)
    ]
    leaked = sorted(
        {f"{name}: {keyword}" for name, keyword, value in header_values if value in text}
    )
    after = {str(folder): list_files(folder) for folder in folders}
    return {
        "real_requests": sum(statuses.values()),
        "real_statuses": dict(statuses),
        "log_lines_searched": len(whole_output),
        "dicom_header_values_searched": len(header_values),
        "dicom_values_found_in_log": leaked,
        "pixel_data_findings": pixel_data_findings(whole_output)[:20],
        "client_file_name_in_log": file_name in text,
        "files_opened_for_writing_after_ready": server.writes_since(ready_mark),
        "server_folders_unchanged": after == before,
    }


def _has_streams(server: ServerProcess) -> bool:
    paths = httpx.get(f"{server.base_url}/openapi.json", timeout=30).json()["paths"]
    return STREAMS_ROUTE in paths


# Faults


async def run_faults(frames_per_phase: int, stream_rounds: int) -> dict[str, Any]:
    """Run the REST fault phases and the faulted stream against in-process apps."""
    from service.app import create_app
    from service.config import Settings
    from tests.conftest import FaultyDetector

    settings = Settings(
        deadline_ms=300.0, max_wait_ms=2.0, max_batch_size=4, queue_limit=16, mask_margin=0.0
    )
    # Every injected failure logs an error line, thousands in a full run; keep only criticals.
    logging.getLogger("service").setLevel(logging.CRITICAL)
    injector = FaultyDetector()
    recorder = RecordingDetector(injector)
    app = create_app(settings, detector=recorder)
    async with (
        serve_in_process(app) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=60) as client,
    ):
        rest = await run_fault_volume(
            client, app, injector, recorder, frames_per_phase=frames_per_phase
        )
    rest_summary = rest.as_dict()
    rest_summary["counter_mismatches"] = counters_add_up(rest)

    injector = FaultyDetector()
    app = create_app(settings, detector=injector)
    use_loopback_ice()
    async with (
        serve_in_process(app) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=60) as client,
    ):
        stream = await run_stream_faults(client, injector, rounds=stream_rounds)
    return {
        "rest": rest_summary,
        "stream": asdict(stream),
        "settings": {
            "deadline_ms": settings.deadline_ms,
            "max_batch_size": settings.max_batch_size,
            "queue_limit": settings.queue_limit,
        },
    }


# Markdown


def render_markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        "# Hardening report",
        "",
        "Generated by `python -m scripts.hardening.report` from the figures in",
        "`docs/hardening-report.json`; edit the script, not this page.",
        "",
        f"- Run: {env['generated_utc']} UTC, commit {env['commit']}, Python {env['python']},",
        f"  {env['cpu_count']} CPU cores, load average {env['load_average_1m_at_start']} at start,",
        f"  model `{env['model']}`, everything on 127.0.0.1, {report['seconds']:.0f} s in all.",
        "",
    ]
    lines += HOW_TO_RUN
    lines += _corpus_section(report["corpus"])
    lines += _fault_section(report["faults"])
    lines += _load_section(report["load"])
    lines += _privacy_section(report["privacy"])
    lines += KNOWN_GAPS
    return "\n".join(lines) + "\n"


def _corpus_section(corpus: dict[str, Any]) -> list[str]:
    kinds = _kinds(corpus["cases_by_kind"])
    rss = ", ".join(map(str, corpus["rss_after_pass_mib"]))
    lines = [
        "## Bad-input corpus",
        "",
        f"{corpus['cases']} generated cases ({kinds}) sent {corpus['passes']} times",
        f"to a `sonomask serve` child: {corpus['requests']} requests.",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| statuses | {_statuses(corpus['statuses'])} |",
        f"| 5xx responses | {corpus['server_errors']} |",
        f"| statuses outside a case's expected set | {len(corpus['unexpected_statuses'])} |",
        f"| tracebacks in the server log | {corpus['tracebacks_in_log']} |",
        f"| server RSS after each pass (MiB) | {rss} |",
        "",
    ]
    if corpus["unexpected_statuses"]:
        lines += ["Cases outside their expected statuses:", ""]
        lines += [f"- {name}: {status}" for name, status in corpus["unexpected_statuses"].items()]
        lines.append("")
    return lines


def _fault_section(faults: dict[str, Any]) -> list[str]:
    rest = faults["rest"]
    stream = faults["stream"]
    settings = faults["settings"]
    lines = [
        "## Fault injection",
        "",
        f"REST: {rest['frames_sent']} unique noise PNGs through {len(rest['by_phase'])}",
        f"detector phases, deadline {settings['deadline_ms']:g} ms, batches of",
        f"{settings['max_batch_size']}, queue limit {settings['queue_limit']}. A refused frame",
        "is a 503 with Retry-After.",
        "",
        "| phase | outcomes |",
        "| --- | --- |",
    ]
    lines += [
        f"| {phase} | {_statuses(outcomes)} |" for phase, outcomes in rest["by_phase"].items()
    ]
    lines += [
        "",
        "- Raw frames (a 200 with the input's pixels and no earned `clear`): "
        f"**{rest['raw_frames']}**",
        f"- Other rule violations: {rest['violation_count']}",
        f"- Counter mismatches against /metrics: {len(rest['counter_mismatches'])}",
        "",
        f"Stream: WebRTC for {stream['seconds']:.0f} s while the fault switched every 0.8 s.",
        f"{stream['frames_sent']} frames sent, {stream['frames_returned']} returned, decisions",
        f"{_statuses(stream['decisions'])}. Raw frames returned: **{stream['raw_frames']}**.",
        "",
    ]
    return lines


def _load_section(load: dict[str, Any]) -> list[str]:
    burst = load["load"]
    sessions = load.get("sessions") or {}
    rss_warm_mib = load["rss_warm_bytes"] / MIB
    rss_after_mib = load["rss_after_load_bytes"] / MIB
    growth = load["rss_growth_fraction"] * 100
    lines = [
        "## Load and soak",
        "",
        f"{burst['requests']} `/v1/mask` requests at concurrency {burst['concurrency']}",
        f"with {load['image']}, after {load['warmup']['requests']} warm-up requests.",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| statuses | {_statuses(burst['statuses'])} |",
        f"| 5xx other than 503 | {burst['server_errors']} |",
        f"| 503 without Retry-After | {burst['missing_retry_after']} |",
        f"| throughput | {burst['requests_per_s']} requests/s |",
        f"| latency p50 / p95 / p99 (ms) | {_latency(burst['latency_ms'])} |",
        f"| RSS after warm-up / after load | {rss_warm_mib:.0f} / {rss_after_mib:.0f} MiB "
        f"({growth:+.1f} %) |",
    ]
    if sessions:
        counts = f"{sessions['opened']} / {sessions['connected']} / {sessions['closed']}"
        lines += [
            f"| stream sessions opened / connected / closed | {counts} of {sessions['sessions']} |",
            f"| sessions gauge after churn | {load['streams_active_after']:g} |",
            f"| RSS after sessions | {load['rss_after_sessions_bytes'] / MIB:.0f} MiB |",
        ]
    lines.append("")
    return lines


def _privacy_section(privacy: dict[str, Any]) -> list[str]:
    writes = len(privacy["files_opened_for_writing_after_ready"])
    return [
        "## Privacy",
        "",
        f"The corpus, {privacy['real_requests']} real files (HC18 stills and the real DICOM",
        "files) and a multipart upload with a name-like file name went through the child",
        "while it logged JSON at DEBUG level.",
        f"{privacy['log_lines_searched']} lines of its output were searched.",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| DICOM header values searched for | {privacy['dicom_header_values_searched']} |",
        f"| found in the log | {len(privacy['dicom_values_found_in_log'])} |",
        f"| lines with pixel-like runs | {len(privacy['pixel_data_findings'])} |",
        f"| client file name in the log | {privacy['client_file_name_in_log']} |",
        f"| files opened for writing after ready | {writes} |",
        f"| working, temp and home folders unchanged | {privacy['server_folders_unchanged']} |",
        "",
    ]


HOW_TO_RUN = [
    "## What runs where",
    "",
    "- `tests/hardening/` (about two minutes on two cores): API keys and the serve guard,",
    "  limits (body size and read time, pixels, CORS), the corpus (with the DICOM frame and",
    "  pixel limits) and its memory check, image and DICOM fuzzing with hypothesis,",
    "  schemathesis on every operation, faults at volume over REST and one stream, short",
    "  load and session churn, and the privacy checks. `pytest tests/hardening -m slow`",
    "  adds the longer forms.",
    "- `python -m scripts.hardening.make_corpus --out DIR` writes the corpus as files.",
    "- `python -m scripts.hardening.run_load` runs the full load and soak on its own.",
    "- `python -m scripts.hardening.report` runs everything below and rewrites this page.",
    "",
]


KNOWN_GAPS = [
    "## Known gaps",
    "",
    "- Slow request headers: uvicorn has no header-read timeout, so a client that never",
    "  finishes its headers holds a socket (not a worker) until it disconnects. Put a proxy",
    "  with a header timeout in front; `SONOMASK_MAX_CONCURRENT_REQUESTS` bounds how many.",
    "- The file-write check sees writes made through Python (`open`, `os.open`, `mkdir`,",
    "  `rename`, `remove`) by the audit hook; writes from C libraries are caught only when",
    "  they land in the server's working, temporary or home folder.",
    "- Bodies are read whole into memory, up to `SONOMASK_MAX_BODY_BYTES` (50 MiB by",
    "  default) each, for at most `SONOMASK_MAX_CONCURRENT_REQUESTS` requests at once (128):",
    "  memory grows with concurrent large uploads up to that bound.",
]


def _kinds(kinds: dict[str, int]) -> str:
    return ", ".join(f"{count} {kind}" for kind, count in kinds.items())


def _statuses(statuses: dict[str, Any]) -> str:
    return ", ".join(f"{key}: {value}" for key, value in statuses.items()) or "none"


def _latency(latency: dict[str, float]) -> str:
    return f"{latency['p50']:.0f} / {latency['p95']:.0f} / {latency['p99']:.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the hardening checks and write the report.")
    parser.add_argument("--quick", action="store_true", help="small numbers, to try the script")
    parser.add_argument("--model", type=Path, help="model file (default: the shipped model)")
    parser.add_argument("--json-out", type=Path, default=JSON_OUT)
    parser.add_argument("--markdown-out", type=Path, default=MARKDOWN_OUT)
    args = parser.parse_args(argv)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    if not REAL_DATA.is_dir():
        print(f"real ultrasound files not found at {REAL_DATA}", file=sys.stderr)
        return 2

    from service.config import DEFAULT_MODEL_PATH

    sizes = {
        "corpus_passes": 2 if args.quick else 4,
        "frames_per_phase": 40 if args.quick else 600,
        "stream_rounds": 1 if args.quick else 3,
        "requests": 100 if args.quick else 2000,
        "warmup": 50 if args.quick else 300,
        "sessions": 3 if args.quick else 50,
    }
    started_s = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sonomask-hardening-") as scratch:
        workdir = Path(scratch)
        model = args.model or DEFAULT_MODEL_PATH
        if not model.is_file():
            model = build_untrained_model(workdir / "untrained-n.pt")
        settings = {"SONOMASK_MODEL_PATH": str(model)}
        if model != DEFAULT_MODEL_PATH:
            settings["SONOMASK_SELFTEST_REQUIRE_DETECTION"] = "false"
        report: dict[str, Any] = {"environment": environment(model), "sizes": sizes}

        debug_logs = {**settings, "SONOMASK_LOG_JSON": "true", "SONOMASK_LOG_LEVEL": "DEBUG"}
        with run_server(debug_logs, workdir / "corpus") as server:
            ready_mark = server.mark()
            folders = [server.workdir / name for name in ("cwd", "tmp", "home")]
            before = {str(folder): list_files(folder) for folder in folders}
            report["corpus"] = run_corpus(server, sizes["corpus_passes"])
            report["privacy"] = run_privacy(server, ready_mark, before)
        print(
            f"corpus and privacy done after {time.monotonic() - started_s:.0f} s", file=sys.stderr
        )

        report["faults"] = asyncio.run(
            run_faults(sizes["frames_per_phase"], sizes["stream_rounds"])
        )
        print(f"faults done after {time.monotonic() - started_s:.0f} s", file=sys.stderr)

        body, content_type, describe_image = load_image(REAL_DATA / "hc18" / "162_HC.png")
        quiet_logs = {**settings, "SONOMASK_LOG_LEVEL": "WARNING"}
        with run_server(quiet_logs, workdir / "load") as server:
            soaked = asyncio.run(
                soak(
                    server,
                    body,
                    content_type,
                    requests=sizes["requests"],
                    concurrency=32,
                    warmup_requests=sizes["warmup"],
                    sessions=sizes["sessions"],
                    describe_image=describe_image,
                    describe_model=model.name,
                )
            )
        report["load"] = asdict(soaked)
    report["seconds"] = round(time.monotonic() - started_s, 1)

    args.json_out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    args.markdown_out.write_text(render_markdown(report), encoding="utf-8")
    print(f"wrote {args.json_out} and {args.markdown_out} in {report['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
