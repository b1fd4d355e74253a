"""The real Triton server (pytriton wheel) serving the exported EfficientNet-Lite0.

Needs the model environment (.venv-model) and the opencv-doc example data; the model
is exported first if it is missing (training.export is idempotent and quick when
up to date).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import structlog
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aiogrpcclient
from tritonclient.utils import InferenceServerException

from camstream.imaging import Image, to_model_input
from camstream.modelrepo import IMAGE, PROBS
from camstream.settings import REPO_ROOT, Settings
from camstream.stack.assets import SampleAssets, ensure_assets
from camstream.stack.process import ServiceError
from camstream.stack.triton import DEFAULT_MODEL_ENV, SHM_DIR, TritonServer

pytestmark = pytest.mark.integration
log = structlog.get_logger(__name__)

MODEL = "efficientnet_lite0"
MODEL_REPOSITORY = REPO_ROOT / "triton_repo"
CACHE_DIR = Settings().cache_dir


@pytest.fixture(scope="session")
def sample_assets() -> SampleAssets:
    return ensure_assets(CACHE_DIR)


@pytest.fixture(scope="session")
def opencv_data(sample_assets: SampleAssets) -> Path:
    """The folder holding the sample photos under their original names."""
    return sample_assets.photos["squirrel"].parent


@pytest.fixture(scope="session")
def exported_model(sample_assets: SampleAssets) -> Path:
    labels = sample_assets.imagenet_classes
    result = subprocess.run(
        [
            str(DEFAULT_MODEL_ENV / "bin" / "python"),
            "-m",
            "training.export",
            "--repo",
            str(MODEL_REPOSITORY),
            "--labels",
            str(labels),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"export failed:\n{result.stdout}\n{result.stderr}"
    return MODEL_REPOSITORY / MODEL


@pytest.fixture(scope="module")
def server(
    exported_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    triton = TritonServer(
        MODEL_REPOSITORY,
        cache_dir=CACHE_DIR,
        log_dir=tmp_path_factory.mktemp("triton-logs"),
        ready_models=(MODEL,),
    )
    with triton:
        yield triton


@pytest.fixture(scope="module")
def labels(exported_model: Path) -> list[str]:
    return (exported_model / "labels.txt").read_text().splitlines()


def load_photo(path: Path) -> Image:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, f"cannot read {path}"
    return to_model_input(bgr)


def infer_probs(address: str, batch: np.ndarray) -> np.ndarray:
    with grpcclient.InferenceServerClient(address) as client:
        image = grpcclient.InferInput(IMAGE, list(batch.shape), "UINT8")
        image.set_data_from_numpy(batch)
        result = client.infer(MODEL, [image], outputs=[grpcclient.InferRequestedOutput(PROBS)])
        probs = result.as_numpy(PROBS)
    assert probs is not None
    return probs


def model_stats(address: str) -> dict[str, Any]:
    with grpcclient.InferenceServerClient(address) as client:
        stats = client.get_inference_statistics(MODEL, as_json=True)
    return dict(stats["model_stats"][0])


async def infer_concurrently(address: str, images: list[Image]) -> list[np.ndarray]:
    client = aiogrpcclient.InferenceServerClient(address)
    try:

        async def one(image: Image) -> np.ndarray:
            tensor = aiogrpcclient.InferInput(IMAGE, [1, *image.shape], "UINT8")
            tensor.set_data_from_numpy(image[None])
            result = await client.infer(MODEL, [tensor])
            probs = result.as_numpy(PROBS)
            assert probs is not None
            return probs

        return list(await asyncio.gather(*(one(image) for image in images)))
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("photo", "expected"),
    [("squirrel_cls.jpg", "fox squirrel"), ("orange.jpg", "orange")],
)
def test_server_classifies_real_photo_top1(
    server: TritonServer, opencv_data: Path, labels: list[str], photo: str, expected: str
) -> None:
    # Given a real photo prepared exactly as the worker prepares frames
    image = load_photo(opencv_data / photo)

    # When it is classified by the server
    probs = infer_probs(server.grpc_address, image[None])

    # Then the top-1 class is the photo's subject, from a proper distribution
    assert probs.shape == (1, 1000)
    assert probs.dtype == np.float32
    assert probs.sum() == pytest.approx(1.0, abs=1e-4)
    top1 = labels[int(probs[0].argmax())]
    assert top1.split(",")[0].strip() == expected, top1


def test_batched_request_matches_single_requests(server: TritonServer, opencv_data: Path) -> None:
    # Given two photos
    images = [load_photo(opencv_data / p) for p in ("squirrel_cls.jpg", "orange.jpg")]

    # When they are sent as one batch and one at a time
    batched = infer_probs(server.grpc_address, np.stack(images))
    singles = np.concatenate([infer_probs(server.grpc_address, i[None]) for i in images])

    # Then the answers agree row for row
    np.testing.assert_allclose(batched, singles, atol=1e-5)


def test_malformed_request_is_rejected_and_server_still_answers(
    server: TritonServer, opencv_data: Path
) -> None:
    # Given a request whose image has the wrong shape
    wrong = np.zeros((1, 100, 100, 3), dtype=np.uint8)

    # When it is sent, then it fails alone ...
    with pytest.raises(InferenceServerException):
        infer_probs(server.grpc_address, wrong)

    # ... and a good request right after still answers
    probs = infer_probs(server.grpc_address, load_photo(opencv_data / "orange.jpg")[None])
    assert probs.shape == (1, 1000)


def _settled_stats(address: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """The model's statistics once two reads 0.3 s apart agree (Triton counts a request
    a moment after it answers it)."""
    deadline = time.monotonic() + timeout_s
    stats = model_stats(address)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        again = model_stats(address)
        if again["inference_count"] == stats["inference_count"]:
            return again
        stats = again
    raise AssertionError(f"Triton's statistics kept changing for {timeout_s} s: {stats}")


def _executions_by_batch_size(stats: dict[str, Any]) -> dict[int, int]:
    """Model executions per batch size, from Triton's own statistics."""
    return {
        int(entry["batch_size"]): int(entry["compute_infer"]["count"])
        for entry in stats.get("batch_stats", [])
    }


def test_concurrent_single_requests_are_dynamically_batched(
    server: TritonServer, opencv_data: Path, labels: list[str]
) -> None:
    # Given 64 batch-1 requests in flight at once, of two photos whose single-request
    # answers are known
    names = ("squirrel_cls.jpg", "orange.jpg")
    photos = [load_photo(opencv_data / p) for p in names]
    images = [photos[i % 2] for i in range(64)]
    before = _settled_stats(server.grpc_address)

    # When they are all sent concurrently
    started = time.perf_counter()
    results = asyncio.run(infer_concurrently(server.grpc_address, images))
    elapsed = time.perf_counter() - started
    after = _settled_stats(server.grpc_address)
    # (sent alone after the statistics were read: Triton counts a request a moment after
    # answering it, so one sent just before ``before`` could land in the difference)
    alone = [infer_probs(server.grpc_address, photo[None])[0] for photo in photos]
    assert [labels[int(a.argmax())].split(",")[0] for a in alone] == ["fox squirrel", "orange"]

    # Then every one gets its own photo's answer (the same probabilities as when it was
    # sent alone: a server answering with another row's result would fail here) ...
    assert len(results) == 64
    for i, result in enumerate(results):
        assert result.shape == (1, 1000)
        np.testing.assert_allclose(result[0], alone[i % 2], atol=1e-5, err_msg=f"request {i}")
    # ... in fewer model executions than inferences: Triton's statistics show
    # executions of several rows each
    inferences = int(after["inference_count"]) - int(before["inference_count"])
    executions = int(after["execution_count"]) - int(before["execution_count"])
    assert inferences == 64
    assert executions < inferences, f"{executions} executions for {inferences} inferences"
    was, now = _executions_by_batch_size(before), _executions_by_batch_size(after)
    grown = {size: now[size] - was.get(size, 0) for size in now if now[size] > was.get(size, 0)}
    assert sum(size * count for size, count in grown.items()) == 64, grown
    assert max(grown) > 1, grown
    # A rough figure (2 shared cores: not asserted), logged for the record.
    log.info(
        "triton.batching_measured",
        inferences=inferences,
        executions=executions,
        batch_sizes=grown,
        images_per_s=round(64 / elapsed, 1),
        startup_s=server.startup_s,
    )


def test_stop_leaves_no_process_and_no_shared_memory(exported_model: Path, tmp_path: Path) -> None:
    # Given a running server that has served a request (so its shm regions exist)
    triton = TritonServer(
        MODEL_REPOSITORY, cache_dir=CACHE_DIR, log_dir=tmp_path, ready_models=(MODEL,)
    ).start()
    try:
        pid = triton.pid
        infer_probs(triton.grpc_address, np.zeros((1, 224, 224, 3), dtype=np.uint8))
        assert list(SHM_DIR.glob(f"{triton.shm_prefix}*")), "expected python-backend shm"
    finally:
        # When it is stopped
        triton.stop()

    # Then the server and its stubs are gone, and they removed their shared memory
    assert not triton.running()
    assert not Path(f"/proc/{pid}").exists()
    stray = subprocess.run(
        ["pgrep", "-f", triton.shm_prefix],  # the server's argv and its stubs' hold it
        capture_output=True,
        text=True,
        check=False,
    )
    assert stray.stdout.strip() == "", f"tritonserver still running: {stray.stdout}"
    assert triton.leaked_shm == [], f"server left shared memory: {triton.leaked_shm}"
    assert not list(SHM_DIR.glob(f"{triton.shm_prefix}*"))


def test_start_fails_clearly_for_missing_repository(tmp_path: Path) -> None:
    # Given a model repository that does not exist
    triton = TritonServer(tmp_path / "nope", cache_dir=CACHE_DIR, log_dir=tmp_path)

    # When started, then it says so
    with pytest.raises(ServiceError, match="does not exist"):
        triton.start()
