"""The GPU config read by a real tritonserver: the pytriton wheel's, the only one here.

That server has no onnxruntime backend, so the GPU config cannot serve on it; but it
selects configs/gpu.pbtxt with --model-config-name=gpu (as docker-compose's Triton is
started), parses and validates it, and must stop at exactly one thing: the backend.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from camstream import modelrepo
from camstream.modelrepo import Target
from camstream.settings import REPO_ROOT, Settings
from camstream.stack.process import free_port
from camstream.stack.triton import _server_environment, locate_model_env, prepare_server_tree

pytestmark = pytest.mark.integration

MODEL = "efficientnet_lite0"


def test_tritonserver_takes_the_gpu_config_and_lacks_only_the_onnxruntime_backend(
    tmp_path: Path,
) -> None:
    # Given a repository holding the exported model with its CPU and GPU configs
    source = REPO_ROOT / "triton_repo" / MODEL
    onnx = modelrepo.onnx_path(REPO_ROOT / "triton_repo", MODEL)
    folder = tmp_path / "repo" / MODEL
    (folder / "1").mkdir(parents=True)
    (folder / "1" / modelrepo.ONNX_FILE).symlink_to(onnx)
    for target in Target:
        path = modelrepo.config_path(folder.parent, MODEL, target)
        path.parent.mkdir(exist_ok=True)
        path.write_text(modelrepo.config_path(source.parent, MODEL, target).read_text())
    (folder / modelrepo.LABELS_FILE).write_text((source / modelrepo.LABELS_FILE).read_text())
    # When the wheel's tritonserver loads it with the GPU config's name
    env = locate_model_env()
    tree = prepare_server_tree(env, Settings().cache_dir)
    result = subprocess.run(
        [
            str(tree / "bin" / "tritonserver"),
            f"--model-repository={folder.parent}",
            f"--backend-directory={tree / 'backends'}",
            "--model-config-name=gpu",
            "--model-control-mode=explicit",
            f"--load-model={MODEL}",
            "--http-address=127.0.0.1",
            f"--http-port={free_port()}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={free_port()}",
            "--allow-metrics=false",
            "--exit-on-error=true",
        ],
        env=_server_environment(env),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    log = result.stdout + result.stderr
    # Then it read the GPU config (its backend is onnxruntime, the CPU one's python) and
    # failed on that backend alone: no parse or validation error came first
    assert result.returncode != 0, log[-3000:]
    assert "unable to find backend library for backend 'onnxruntime'" in log, log[-3000:]
    assert "error parsing" not in log.lower(), log[-3000:]  # protobuf's text-format error
    assert log.count("creating server: Invalid argument - load failed") == 1, log[-3000:]
