# Triton Inference Server for camstream on an NVIDIA GPU.
#
# docker-compose.yml starts it with --model-config-name=gpu: each model is served from
# its configs/gpu.pbtxt by this image's own onnxruntime backend (built with TensorRT),
# in FP16, from the same model.onnx the CPU target serves.
#
# A model with no configs/gpu.pbtxt falls back to its config.pbtxt: the python backend,
# whose model.py runs onnxruntime in the stub with this image's system python3 (3.10 in
# 24.10), so onnxruntime-gpu goes into that environment; model.py puts the session on
# CUDAExecutionProvider when this onnxruntime offers it.
#
# 24.10 ships CUDA 12.6 and cuDNN 9, which onnxruntime-gpu 1.20 (CUDA 12 build, the
# PyPI default since 1.19) is built against. numpy stays below 2, as in the local model
# environment (requirements/model.txt pins numpy 1.26.4).
#
# BASE_IMAGE: NVIDIA's image by default; another tritonserver release, or a mirror of
# it in a private registry, can be passed with --build-arg. Without a GPU, compose's cpu
# profile runs docker/triton-cpu.Dockerfile instead.

ARG BASE_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3
FROM ${BASE_IMAGE}

RUN python3 -m pip install --no-cache-dir \
        "numpy==1.26.4" \
        "onnxruntime-gpu==1.20.1" \
    && python3 -c "import onnxruntime, numpy; print('onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers(), 'numpy', numpy.__version__)"

# The model repository is mounted read-only at /models by docker-compose.yml.
CMD ["tritonserver", "--model-repository=/models"]
