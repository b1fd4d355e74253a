"""Faults injected into a running LocalStack, the way real failures look to the worker.

Test-only: the product never injects faults. The stack keeps what the product needs
(start, stop, add_worker, restart_worker for `camstream up`'s supervisor); these act on
its services from outside, by signal or by stopping and starting them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

from camstream.stack.local import LocalStack
from camstream.stack.triton import TritonServer

if TYPE_CHECKING:
    from tests.support.stack import Feed


def _triton(stack: LocalStack) -> TritonServer:
    assert stack.triton is not None, "the stack is not started"
    return stack.triton


def pause_triton(stack: LocalStack) -> None:
    """Freeze the Triton server (SIGSTOP to the tritonserver process): connections hang
    and every request times out, the way a stuck or unreachable server behaves.

    Only the server process: its python-backend stubs go on running, idle. Freezing
    them too (the whole process group) made Triton 2.51 crash on SIGCONT here (SIGSEGV
    in libtriton_python's execute, then boost::interprocess::lock_exception), which
    is a crashed server, the fault ``stop_triton`` stands for, not a frozen one."""
    os.kill(_triton(stack).pid, signal.SIGSTOP)


def resume_triton(stack: LocalStack) -> None:
    os.kill(_triton(stack).pid, signal.SIGCONT)


def stop_triton(stack: LocalStack) -> None:
    """Stop the Triton server: its ports close and every call is refused, the way a
    crashed or redeployed server behaves. A frozen server is thawed first."""
    triton = _triton(stack)
    if triton.running():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(triton.pid, signal.SIGCONT)
    triton.stop()


def start_triton(stack: LocalStack, model_repository: Path | None = None) -> None:
    """Start Triton again on the same ports, serving ``model_repository`` (by default
    the stack's own); returns once its model is ready."""
    triton = _triton(stack)
    triton.model_repository = (model_repository or stack.settings.model_repo).resolve()
    triton.start()
    if stack.info is not None:
        stack.info.pids["triton"] = triton.pid


def kill_worker(stack: LocalStack, index: int = 0) -> None:
    """SIGKILL a worker (no flush, no commit): what a crash or an OOM kill does."""
    process = stack.workers[index]
    process.signal(signal.SIGKILL)
    with contextlib.suppress(Exception):
        process.stop()


def kill_and_restart_worker(stack: LocalStack, feed: Feed) -> None:
    """With ``feed`` running: SIGKILL the worker after 5 s, start it again 2 s later,
    and stop the feed 3 s after that."""
    with feed:
        time.sleep(5)
        kill_worker(stack, 0)
        time.sleep(2)
        stack.restart_worker(0)
        time.sleep(3)
