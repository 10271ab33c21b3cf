"""Service settings, read from `SONOMASK_*` environment variables and checked at start."""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL_PATH = PACKAGE_DIR / "models" / "sonomask-demo-n.pt"


class MaskStyle(StrEnum):
    """Mask style of a covered region, ordered from weakest to strongest cover."""

    BLUR = "blur"
    PIXELATE = "pixelate"
    SOLID = "solid"

    @property
    def strength(self) -> int:
        return list(MaskStyle).index(self)


class HoldPolicy(StrEnum):
    NONE = "none"
    HOLD = "hold"
    HOLD_SIM = "hold_sim"


class Backend(StrEnum):
    AUTO = "auto"
    TORCH = "torch"
    ONNX = "onnx"
    OPENVINO = "openvino"
    TENSORRT = "tensorrt"


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """All settings of the service. Each field maps to `SONOMASK_<FIELD>` in upper case."""

    model_config = SettingsConfigDict(env_prefix="SONOMASK_", extra="ignore", frozen=True)

    # Model
    model_path: Path = DEFAULT_MODEL_PATH
    device: str = "auto"
    backend: Backend = Backend.AUTO
    # 0 or unset: taken from the model's sidecar JSON, else the study's values (0.318 / 0.6).
    imgsz: int = Field(default=0, ge=0, le=4096)
    conf: float | None = Field(default=None, gt=0.0, lt=1.0)
    iou: float | None = Field(default=None, gt=0.0, le=1.0)
    max_detections: int = Field(default=32, ge=1, le=1000)
    # ONNX Runtime threads for one model call. 0 lets the runtime size its pool itself, and in a
    # container that follows the node's cores, not the CPU limit. Spinning threads lower latency
    # on an idle machine but slow everything when other work shares the cores.
    onnx_threads: int = Field(default=0, ge=0, le=256)
    onnx_spinning: bool = False

    # Start-up self-test: a known frame with a known target, checked before /readyz turns 200.
    selftest_image: Path | None = None
    selftest_require_detection: bool = True

    # Batcher
    max_batch_size: int = Field(default=8, ge=1, le=256)
    max_wait_ms: float = Field(default=4.0, ge=0.0, le=1000.0)
    queue_limit: int = Field(default=64, ge=1, le=100_000)
    deadline_ms: float = Field(default=2000.0, gt=0.0, le=600_000.0)

    # Masking
    mask_style: MaskStyle = MaskStyle.SOLID
    mask_margin: float = Field(default=0.15, ge=0.0, le=2.0)

    # Tracking (streams, videos, multi-frame DICOM)
    hold_policy: HoldPolicy = HoldPolicy.HOLD_SIM
    hold_frames: int = Field(default=15, ge=0, le=10_000)
    hold_sim_threshold: float = Field(default=0.4, ge=-1.0, le=1.0)
    hold_max_frames: int = Field(default=60, ge=0, le=100_000)
    hold_max_s: float = Field(default=3.0, ge=0.0, le=3600.0)
    hold_union_frames: int = Field(default=5, ge=0, le=1000)
    ssim_width: int = Field(default=160, ge=16, le=1024)
    # SSIM is averaged around each held box grown by this share of its size. Unset (empty)
    # compares the whole frame, but its black surround and overlays look alike in any view.
    hold_ssim_context: float | None = Field(default=0.5, ge=0.0, le=10.0)

    # Streams
    max_sessions: int = Field(default=16, ge=0, le=10_000)
    session_idle_s: float = Field(default=30.0, gt=0.0, le=86_400.0)
    ice_servers: Annotated[list[str], NoDecode] = Field(default_factory=list)
    ice_username: str | None = None
    ice_credential: str | None = None

    # Inputs
    max_body_bytes: int = Field(default=50 * 1024 * 1024, ge=1024)
    max_pixels: int = Field(default=40_000_000, ge=1)
    max_dicom_frames: int = Field(default=2000, ge=1)
    # A request body that takes longer than this to arrive gets 408, so a slow client cannot
    # hold a connection and its buffered bytes indefinitely.
    body_timeout_s: float = Field(default=60.0, gt=0.0, le=3600.0)
    # HTTP requests in progress at once; uvicorn returns 503 beyond it. This bounds the memory
    # held by buffered uploads.
    max_concurrent_requests: int = Field(default=128, ge=1, le=100_000)
    dicom_keep_series: bool = False

    # Access
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    api_keys_file: Path | None = None
    protect_metrics: bool = False
    allow_public_without_keys: bool = False
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Server and logs
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    log_level: str = "INFO"
    log_json: bool = False

    @field_validator("ice_servers", "api_keys", "cors_origins", mode="before")
    @classmethod
    def _parse_csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if value in {"auto", "cpu", "cuda", "mps"} or value.startswith("cuda:") or value.isdigit():
            return value
        raise ValueError(f"SONOMASK_DEVICE must be auto, cpu, cuda or cuda:N, got {value!r}")

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError(
                f"SONOMASK_LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {value!r}"
            )
        return level

    @model_validator(mode="after")
    def _check_consistency(self) -> Settings:
        if self.hold_policy is HoldPolicy.HOLD_SIM and self.hold_max_frames == 0:
            raise ValueError(
                "SONOMASK_HOLD_MAX_FRAMES must be above 0 when the hold policy is hold_sim"
            )
        if self.api_keys_file is not None and not self.api_keys_file.is_file():
            raise ValueError(
                f"SONOMASK_API_KEYS_FILE must name a readable file, got {self.api_keys_file}"
            )
        return self

    @property
    def max_wait_s(self) -> float:
        return self.max_wait_ms / 1000.0

    @property
    def deadline_s(self) -> float:
        return self.deadline_ms / 1000.0

    def all_api_keys(self) -> list[str]:
        """Keys from `SONOMASK_API_KEYS` plus one key a line from `SONOMASK_API_KEYS_FILE`."""
        keys = list(self.api_keys)
        if self.api_keys_file is not None:
            lines = self.api_keys_file.read_text(encoding="utf-8").splitlines()
            keys.extend(line.strip() for line in lines if line.strip() and not line.startswith("#"))
        return keys

    def host_is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False
