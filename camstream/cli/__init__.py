"""`camstream`: the one command-line program. `camstream COMMAND --help` is the reference.

The CLI is the only place that wires the rooms together (producers, streams, training,
benchmarks, the local stack); each command imports what it needs when it runs. One
module per subject:

- stack: ``setup``, ``up``, ``status``;
- run: ``worker``, ``produce``;
- topics: ``tail``, ``schemas``;
- cameras: ``cameras add|list|remove``;
- models: ``export``, ``drift baseline``, ``models list|show``, ``promote``;
- rollout: ``rollback``, ``shadow start|stop|status`` (the live rollout is camstream.rollout);
- datasets: ``datasets fetch|list|show``, ``label import|import-folder``;
- collect: ``collect`` (frames from Kafka with point-in-time Feast features);
- train: ``train``; evaluate: ``evaluate`` (both run in the model environment);
- bench: ``bench pipeline|producer|drift|train|rollout|view``;
- view: ``view`` (the live view in a browser: camstream.view);
- common: settings and logging, signals, output, and the error boundary: a ConfigError
  ends the command with its message and exit 2, any other CamstreamError with exit 1.
"""

from __future__ import annotations

from camstream.cli import (
    bench,
    cameras,
    collect,
    datasets,
    evaluate,
    models,
    rollout,
    run,
    stack,
    topics,
    train,
    view,
)
from camstream.cli.common import new_app

app = new_app(
    name="camstream",
    help="Real-time image classification for camera feeds: Kafka, Faust, Triton, Feast.",
    no_args_is_help=True,
)
for commands in (
    stack.app,
    run.app,
    topics.app,
    models.app,
    rollout.app,
    collect.app,
    train.app,
    evaluate.app,
    view.app,
):
    app.add_typer(commands)
app.add_typer(models.drift_app, name="drift")
app.add_typer(bench.app, name="bench")
app.add_typer(cameras.app, name="cameras")
app.add_typer(datasets.datasets_app, name="datasets")
app.add_typer(datasets.label_app, name="label")


def main() -> None:
    app(prog_name="camstream")
