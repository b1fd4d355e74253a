"""A deliberately slow EfficientNet-Lite0 for the fault tests, run by Triton's python
backend as a model.py: the real model (tests build its repository with
``slow_model_repository``) behind a sleep of SECONDS_PER_IMAGE for every image."""

from __future__ import annotations

import importlib.util
import json
import time
from typing import Any

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        params = json.loads(args["model_config"])["parameters"]
        spec = importlib.util.spec_from_file_location(
            "camstream_real_model", params["REAL_MODEL"]["string_value"]
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        self._real = module.TritonPythonModel()
        self._real.initialize(args)
        self._per_image = float(params["SECONDS_PER_IMAGE"]["string_value"])

    def execute(self, requests: list[Any]) -> list[Any]:
        images = 0
        for request in requests:
            tensor = pb_utils.get_input_tensor_by_name(request, "IMAGE")
            images += tensor.as_numpy().shape[0] if tensor is not None else 0
        time.sleep(images * self._per_image)
        return list(self._real.execute(requests))

    def finalize(self) -> None:
        self._real.finalize()
