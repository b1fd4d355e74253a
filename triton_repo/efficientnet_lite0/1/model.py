"""EfficientNet-Lite0 on onnxruntime inside Triton's python backend.

Names (camstream.modelrepo's IMAGE and PROBS: a unit test keeps config.pbtxt equal to
them), dtypes and the onnxruntime thread count come from config.pbtxt; this file runs in
Triton's stub, where camstream is not importable. All requests of one dynamic batch run
as a single onnxruntime call; a request whose input tensor is malformed gets its own
TritonError while the others still answer.

Precision: CAMSTREAM_MODEL_PRECISION (camstream.settings' model_precision; the stub
inherits the server's environment) "int8" serves model_int8.onnx, the variant
`camstream quantize` writes only when it passed its gate, if it is present and was made
from this folder's model.onnx (its sidecar's hash); otherwise model.onnx, logged.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

PRECISION_VARIABLE = "CAMSTREAM_MODEL_PRECISION"
INT8_FILE = "model_int8.onnx"  # training.quantize.INT8_FILE (a unit test keeps them equal)


class TritonPythonModel:
    """One instance per instance_group entry; each owns one onnxruntime session."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        (image,) = config["input"]
        (probs,) = config["output"]
        self._input = str(image["name"])
        self._output = str(probs["name"])
        self._image_dims = tuple(int(d) for d in image["dims"])
        self._image_dtype = pb_utils.triton_string_to_numpy(image["data_type"])
        self._probs_dtype = pb_utils.triton_string_to_numpy(probs["data_type"])
        self._max_rows = max(int(config.get("max_batch_size", 0)), 1)

        params = config.get("parameters", {})
        threads = int(params.get("ORT_INTRA_OP_THREADS", {}).get("string_value", "1"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL

        # The same file serves the GPU image: CUDA first when onnxruntime has it.
        providers: list[Any] = ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" in ort.get_available_providers():
            device = int(args.get("model_instance_device_id", "0"))
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device}))

        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        if not path.is_file():
            raise pb_utils.TritonModelException(
                f"{path} not found: run `python -m training.export --repo <repo> "
                "--labels <labels>` in the model environment first"
            )
        path = self._chosen_model(path, os.environ.get(PRECISION_VARIABLE) or "fp32")
        self._session = ort.InferenceSession(str(path), options, providers=providers)
        self._output_index = [o.name for o in self._session.get_outputs()].index(self._output)
        pb_utils.Logger.log_info(
            f"{args['model_name']}/{args['model_instance_name']}: {path.name} on "
            f"{self._session.get_providers()[0]}, {threads} intra-op thread(s)"
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        images: list[np.ndarray] = []
        owners: list[int] = []
        for index, request in enumerate(requests):
            image, problem = self._image_of(request)
            if problem is not None:
                responses[index] = pb_utils.InferenceResponse(error=pb_utils.TritonError(problem))
            else:
                images.append(image)
                owners.append(index)

        if images:
            batch = images[0] if len(images) == 1 else np.concatenate(images)
            try:
                probs = self._session.run(None, {self._input: batch})[self._output_index]
            except Exception as exc:  # one failed run fails its requests, not the server
                error = pb_utils.TritonError(f"onnxruntime failed: {type(exc).__name__}: {exc}")
                for index in owners:
                    responses[index] = pb_utils.InferenceResponse(error=error)
            else:
                probs = probs.astype(self._probs_dtype, copy=False)
                start = 0
                for index, image in zip(owners, images, strict=True):
                    rows = probs[start : start + len(image)]
                    start += len(image)
                    tensor = pb_utils.Tensor(self._output, np.ascontiguousarray(rows))
                    responses[index] = pb_utils.InferenceResponse(output_tensors=[tensor])
        return responses

    def finalize(self) -> None:
        self._session = None

    def _image_of(self, request: Any) -> tuple[np.ndarray, str | None]:
        """The request's input as [n, *dims] of the configured dtype, or why not."""
        name = self._input
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            return np.empty(0), f"missing input {name}"
        image = tensor.as_numpy()
        if image.dtype != self._image_dtype:
            return image, f"{name} must be {self._image_dtype.__name__}, got {image.dtype}"
        if image.ndim != len(self._image_dims) + 1 or image.shape[1:] != self._image_dims:
            expected = ", ".join(str(d) for d in self._image_dims)
            return image, f"{name} must have shape [N, {expected}], got {list(image.shape)}"
        if not 1 <= image.shape[0] <= self._max_rows:
            return image, f"{name} batch must be 1..{self._max_rows}, got {image.shape[0]}"
        return image, None

    @staticmethod
    def _chosen_model(fp32: Path, precision: str) -> Path:
        """model.onnx, or for "int8" its accepted INT8 variant when it belongs to it."""
        if precision not in ("fp32", "int8"):
            raise pb_utils.TritonModelException(
                f"{PRECISION_VARIABLE}={precision!r}: use fp32 or int8"
            )
        if precision == "fp32":
            return fp32
        int8 = fp32.with_name(INT8_FILE)
        try:
            made_from = json.loads(int8.with_name(f"{INT8_FILE}.json").read_text())["fp32_sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            made_from = None
        if int8.is_file() and made_from == hashlib.sha256(fp32.read_bytes()).hexdigest():
            return int8
        pb_utils.Logger.log_warn(
            f"{PRECISION_VARIABLE}=int8 but {int8} is missing or was not made from {fp32.name} "
            "(run `camstream quantize`): serving FP32"
        )
        return fp32
