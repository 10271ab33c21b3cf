"""Prometheus metrics of one service instance, kept in a registry of their own.

Every app builds a fresh `Metrics`, so tests never share counters. Names carry the
`sonomask_` prefix and their unit.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

LATENCY_BUCKETS_S = (
    0.002,
    0.005,
    0.01,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    2.0,
    5.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
MASK_AGE_BUCKETS = (0, 1, 2, 3, 5, 10, 20, 30, 60, 120)

FRAME_SOURCES = ("rest", "stream", "dicom", "cli", "video")
FRAME_DECISIONS = ("masked", "held", "clear", "blanked")


class Metrics:
    """The service's metrics, registered in `self.registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry

        self.request_duration_seconds = Histogram(
            "sonomask_request_duration_seconds",
            "HTTP request duration by route template, method and status code.",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "sonomask_queue_wait_seconds",
            "Time a frame waited in the batcher queue before its batch started.",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.batch_size = Histogram(
            "sonomask_batch_size",
            "Frames per model call.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "sonomask_inference_seconds",
            "Model time per batch, including pre- and post-processing.",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.end_to_end_seconds = Histogram(
            "sonomask_end_to_end_seconds",
            "Time from a frame's arrival to its masked output, by source.",
            ["source"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.frames_total = Counter(
            "sonomask_frames_total",
            "Frames that left the service, by source and decision (masked, held, clear, blanked).",
            ["source", "decision"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "sonomask_queue_depth",
            "Frames waiting in the batcher queue.",
            registry=r,
        )
        self.rejections_total = Counter(
            "sonomask_rejections_total",
            "Requests or frames refused, by reason.",
            ["reason"],
            registry=r,
        )
        self.detector_errors_total = Counter(
            "sonomask_detector_errors_total",
            "Model calls that raised or returned invalid output.",
            registry=r,
        )
        self.ready = Gauge(
            "sonomask_ready",
            "1 when the model is loaded and the start-up self-test passed, else 0.",
            registry=r,
        )
        self.model_info = Info(
            "sonomask_model",
            "The loaded model: name, file hash, backend, device.",
            registry=r,
        )

        # Streams
        self.streams_active = Gauge(
            "sonomask_streams_active",
            "WebRTC sessions currently open.",
            registry=r,
        )
        self.stream_frames_dropped_total = Counter(
            "sonomask_stream_frames_dropped_total",
            "Incoming stream frames dropped by the latest-frame policy.",
            registry=r,
        )
        self.stream_frame_latency_seconds = Histogram(
            "sonomask_stream_frame_latency_seconds",
            "Latency a stream frame gains inside the service, from receipt to send.",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.mask_age_frames = Histogram(
            "sonomask_mask_age_frames",
            "Frames since the last fresh detection when a held mask is drawn.",
            buckets=MASK_AGE_BUCKETS,
            registry=r,
        )

        for source in FRAME_SOURCES:
            for decision in FRAME_DECISIONS:
                self.frames_total.labels(source=source, decision=decision)
        self.ready.set(0)
