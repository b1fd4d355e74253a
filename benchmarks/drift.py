"""`camstream bench drift`: the drift detector replayed over real video.

The sample videos (vtest.avi, a fixed street camera; bikes.mp4, a street clip) are
run once through the worker's own path in the model environment (training.drift_frames:
JPEG, reduced decode, crop, the exported model, image_statistics), with injected shifts
(frames darkened, blurred), and cached under ``<cache_dir>/drift-bench``. The replay
then runs here, in the application environment, frame by frame through DriftMonitor,
each video as one looping camera at 10 frames per second:

- undisturbed: calibration, then ``windows`` windows; a flagged window is a false alarm;
- each shift (dark, blur, switch to the other video, frozen) starts mid-window after
  two clean windows, at ``trials`` different places in the clip; its delay is counted in
  windows from the first window holding a shifted frame (0 = that window), and it is
  detected within two windows when the delay is 0 or 1.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from camstream import modelrepo
from camstream.records import DriftRecord, ModelRef
from streams.drift import DriftMonitor, ReferenceProfile, Thresholds
from streams.quality import QualityThresholds

if TYPE_CHECKING:
    from camstream.settings import Settings

FRAME_MS = 100
VIDEOS = ("vtest", "bikes")
SHIFTS = ("dark", "blur", "switch", "frozen")
CLEAN_WINDOWS = 2
SHIFT_WINDOWS = 4


@dataclass(frozen=True)
class Clip:
    """Per-frame model outputs and statistics of one video under one variant."""

    labels: list[str]
    scores: np.ndarray
    stats: list[dict[str, float]]

    def __len__(self) -> int:
        return len(self.labels)

    def frame(self, index: int) -> tuple[str, float, dict[str, float]]:
        i = index % len(self)
        return self.labels[i], float(self.scores[i]), self.stats[i]


def load_clips(path: Path) -> dict[tuple[str, str], Clip]:
    data = np.load(path)
    names = [str(x) for x in data["label_names"]]
    stat_names = [str(x) for x in data["stat_names"]]
    clips = {}
    for key in data.files:
        if not key.endswith("/labels"):
            continue
        video, variant, _ = key.split("/")
        rows = data[f"{video}/{variant}/stats"]
        clips[(video, variant)] = Clip(
            [names[i] for i in data[key]],
            data[f"{video}/{variant}/scores"],
            [dict(zip(stat_names, map(float, row), strict=True)) for row in rows],
        )
    return clips


def cache_key(model_onnx: Path, videos: list[Path], darken: float, blur_sigma: float) -> str:
    """Changes whenever the model, the videos, the imaging code or the shifts change."""
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parent.parent
    for path in (
        model_onnx,
        root / "training" / "drift_frames.py",
        root / "camstream" / "imaging.py",
    ):
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    for video in videos:
        digest.update(f"{video.name}:{video.stat().st_size}".encode())
    digest.update(f"{darken}:{blur_sigma}".encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class BenchConfig:
    thresholds: Thresholds
    quality: QualityThresholds
    window_frames: int
    calibration_frames: int
    windows: int = 60
    trials: int = 8


Monitor = Callable[[], DriftMonitor]


def _replay(
    monitor: DriftMonitor, camera: str, frames: Iterator[tuple[str, float, dict[str, float]]]
) -> list[DriftRecord]:
    records: list[DriftRecord] = []
    for n, (label, score, stats) in enumerate(frames):
        records += monitor.observe(camera, n * FRAME_MS, label, score, stats)
    return records


def _stream(
    clips: dict[tuple[str, str], Clip],
    video: str,
    other: str,
    length: int,
    shift: str | None,
    shift_at: int,
    switch_from: int,
) -> Iterator[tuple[str, float, dict[str, float]]]:
    for n in range(length):
        if shift is None or n < shift_at:
            yield clips[(video, "original")].frame(n)
        elif shift in ("dark", "blur"):
            yield clips[(video, shift)].frame(n)
        elif shift == "switch":
            yield clips[(other, "original")].frame(switch_from + n - shift_at)
        else:  # frozen: the frame at the shift's start, again and again
            yield clips[(video, "original")].frame(shift_at)


def run_bench(
    clips: dict[tuple[str, str], Clip], config: BenchConfig, reference: ReferenceProfile
) -> dict[str, Any]:
    """Figures per camera: undisturbed false-alarm rate, and per shift the detections."""
    w = config.window_frames
    cal = config.calibration_frames
    model = ModelRef(name="bench", version="1")

    def monitor() -> DriftMonitor:
        return DriftMonitor(
            reference,
            config.thresholds,
            w,
            model,
            "bench",
            calibration_frames=cal,
            quality=config.quality,
        )

    cameras: dict[str, Any] = {}
    for video in VIDEOS:
        other = next(v for v in VIDEOS if v != video)
        clip_len = len(clips[(video, "original")])
        m = monitor()
        records = _replay(
            m, video, _stream(clips, video, other, cal + w * config.windows, None, 0, 0)
        )
        judged = [r for r in records if not r.calibrating]
        alarms = [r for r in judged if r.drift]
        m.tick(records[-1].window_end_ms)
        silent = m.tick(records[-1].window_end_ms + int(config.quality.silence_s * 1000) + 1)
        result: dict[str, Any] = {
            "frames_in_clip": clip_len,
            "windows": len(judged),
            "false_alarms": len(alarms),
            "false_alarm_rate": len(alarms) / max(1, len(judged)),
            "false_alarm_reasons": sorted({r for a in alarms for r in a.reasons})[:10],
            "silence_detected": any(r.kind == "silence" and r.drift for r in silent),
            "shifts": {},
        }
        calibration_windows = -(-cal // w) if cal else 0
        for shift in SHIFTS:
            delays: list[int | None] = []
            pre_alarms = 0
            for trial in range(config.trials):
                # Shift starts mid-window, at a different place in the clip each trial.
                first = (
                    calibration_windows + CLEAN_WINDOWS + (trial * clip_len // config.trials) // w
                )
                shift_at = first * w + w // 2
                length = (first + SHIFT_WINDOWS) * w
                switch_from = trial * len(clips[(other, "original")]) // config.trials
                stream = _stream(clips, video, other, length, shift, shift_at, switch_from)
                windows = _replay(monitor(), video, stream)
                pre_alarms += sum(
                    1 for r in windows[calibration_windows:first] if r.drift and not r.calibrating
                )
                hit = next((i for i, r in enumerate(windows[first:]) if r.drift), None)
                delays.append(hit)
            found = [d for d in delays if d is not None and d <= 1]
            result["shifts"][shift] = {
                "trials": config.trials,
                "detected_within_2_windows": len(found),
                "detection_rate": len(found) / config.trials,
                "max_delay_windows": None
                if None in delays
                else max(d for d in delays if d is not None),
                "false_alarms_before_shift": pre_alarms,
            }
        cameras[video] = result
    return {
        "window_frames": w,
        "calibration_frames": cal,
        "cameras": cameras,
        "false_alarm_rate": max(c["false_alarm_rate"] for c in cameras.values()),
        "min_detection_rate": min(
            s["detection_rate"] for c in cameras.values() for s in c["shifts"].values()
        ),
    }


def ensure_frames(
    cache_dir: Path, version_dir: Path, videos: list[Path], darken: float, blur_sigma: float
) -> Path:
    """The cached per-frame table of the videos, computed in the model env when missing."""
    from camstream.stack.setup import run_in_model_env
    from camstream.stack.triton import locate_model_env

    key = cache_key(version_dir / modelrepo.ONNX_FILE, videos, darken, blur_sigma)
    out = cache_dir / "drift-bench" / f"frames-{key}.npz"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        staged = Path(tmp) / out.name
        run_in_model_env(
            locate_model_env(),
            [
                "training.drift_frames",
                "--model",
                str(version_dir.parent),
                "--version",
                version_dir.name,
                "--out",
                str(staged),
                "--variant",
                "original",
                "--variant",
                "dark",
                "--variant",
                "blur",
                "--darken",
                str(darken),
                "--blur-sigma",
                str(blur_sigma),
                *map(str, videos),
            ],
            "compute per-frame model outputs for the drift bench",
        )
        staged.replace(out)
    return out


def config_from_settings(settings: Settings, windows: int, trials: int) -> BenchConfig:
    monitor = DriftMonitor.from_settings(
        settings.model_copy(update={"drift_state_dir": None}), ModelRef(name="-", version="-"), "-"
    )
    return BenchConfig(
        monitor.thresholds,
        monitor.quality,
        settings.drift_window_frames,
        settings.drift_calibration_frames,
        windows=windows,
        trials=trials,
    )


def run(
    settings: Settings, windows: int, trials: int, darken: float = 0.4, blur_sigma: float = 3.0
) -> dict[str, Any]:
    """The bench with the configured detector (settings) on the cached sample videos."""
    from camstream.stack.assets import ensure_assets

    assets = ensure_assets(settings.cache_dir)
    videos = [assets.vtest_video, assets.bikes_video]
    version_dir = settings.model_version_dir()
    frames = ensure_frames(settings.cache_dir, version_dir, videos, darken, blur_sigma)
    figures = run_bench(
        load_clips(frames),
        config_from_settings(settings, windows, trials),
        ReferenceProfile.load(settings.reference_profile_path),
    )
    figures["darken"] = darken
    figures["blur_sigma"] = blur_sigma
    return figures


def table(figures: dict[str, Any]) -> str:
    lines = [
        f"drift bench: windows of {figures['window_frames']} frames, calibration "
        f"{figures['calibration_frames']} frames, 10 fps; darken {figures.get('darken')}, "
        f"blur sigma {figures.get('blur_sigma')} px",
        f"{'camera':<8} {'condition':<12} {'false alarms':>14} {'detected<=2w':>13} "
        f"{'max delay (w)':>14}",
    ]
    for video, cam in figures["cameras"].items():
        lines.append(
            f"{video:<8} {'undisturbed':<12} "
            f"{cam['false_alarms']:>4}/{cam['windows']:<3} {cam['false_alarm_rate']:>5.1%} "
            f"{'':>13} {'':>14}"
        )
        for shift, row in cam["shifts"].items():
            delay = "-" if row["max_delay_windows"] is None else str(row["max_delay_windows"])
            lines.append(
                f"{video:<8} {shift:<12} {row['false_alarms_before_shift']:>9} pre  "
                f"{row['detected_within_2_windows']:>6}/{row['trials']:<2} "
                f"{row['detection_rate']:>4.0%} {delay:>14}"
            )
        lines.append(f"{video:<8} {'silence':<12} {'':>14} {cam['silence_detected']!s:>13}")
    lines.append(
        f"worst false-alarm rate {figures['false_alarm_rate']:.1%} (bound 5%); "
        f"lowest detection rate {figures['min_detection_rate']:.0%} (bound 100% within 2 windows)"
    )
    return "\n".join(lines)
