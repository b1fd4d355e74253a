"""Models: `camstream export`, `quantize` and `drift baseline` (the pretrained model and its drift
reference, made in the model environment), the registry's `models list|show`, and the
gated `promote` of a registered version to champion and into the Triton repository."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from camstream import modelrepo
from camstream.cli.common import new_app, out, settings
from camstream.settings import REPO_ROOT

if TYPE_CHECKING:
    from camstream import gate
    from camstream.registry import Registry, Version
    from camstream.settings import Settings

app = new_app()
drift_app = new_app(help="Drift reference profiles.", no_args_is_help=True)
models_app = new_app(
    help="The model registry: versions, aliases and their history.", no_args_is_help=True
)
app.add_typer(models_app, name="models")

AsJson = Annotated[bool, typer.Option("--json", help="One JSON document.")]
CHAMPION = "champion"
EVALUATION = "evaluation"
# The python-backend model that serves any IMAGE -> PROBS model.onnx.
GENERIC_MODEL_PY = REPO_ROOT / "triton_repo" / "efficientnet_lite0" / "1" / modelrepo.MODEL_PY_FILE


@app.command()
def export() -> None:
    """Export the pretrained classifier to the Triton model repository (model env)."""
    from camstream.stack.assets import ensure_assets
    from camstream.stack.setup import ensure_model
    from camstream.stack.triton import locate_model_env

    config = settings()
    ensure_model(config, locate_model_env(), ensure_assets(config.cache_dir))
    out(str(config.model_repo / config.model_name))


@app.command()
def quantize(
    ref: Annotated[
        str, typer.Argument(help="MODEL or MODEL:VERSION in the Triton repository.")
    ] = "",
    dataset: Annotated[
        str | None,
        typer.Option(help="A trained model's dataset (macro-F1 on test); default: its registry's."),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Make the INT8 variant of an exported version (model env, training.quantize):
    static quantization calibrated on the sample frames, kept as model_int8.onnx only if
    its top-1 agrees with FP32 on >= 99% of held-out frames and a trained model's
    macro-F1 drops <= 1 point; reports both and the speed-up (quantize_report.json).
    A refusal exits 1 naming the figures. CAMSTREAM_MODEL_PRECISION=int8 serves it."""
    from camstream.datasets import dataset_dir
    from camstream.stack.assets import ensure_assets
    from camstream.stack.setup import ensure_conveyor, run_in_model_env
    from camstream.stack.triton import locate_model_env

    config = settings()
    model, _, number_text = (ref or config.model_name).partition(":")
    folder = modelrepo.version_dir(config.model_repo, model, number_text)
    assets = ensure_assets(config.cache_dir)
    frames = [assets.vtest_video, assets.bikes_video, ensure_conveyor(config.cache_dir)]
    args = ["training.quantize", "--onnx", str(folder / modelrepo.ONNX_FILE), "--frames"]
    args += [*map(str, frames), *map(str, assets.photos.values())]
    name = dataset or _registered_dataset(config, model, int(folder.name))
    if name:
        args += ["--dataset-dir", str(dataset_dir(config.datasets_path, name))]
    run_in_model_env(
        locate_model_env(), args + (["--json"] if as_json else []), "quantize", capture=False
    )


def _registered_dataset(config: Settings, model: str, number: int) -> str:
    """The dataset a registered version was evaluated on; "" for a model outside the
    registry (the pretrained one: no test split, agreement only)."""
    from camstream.registry import Registry

    registry = Registry(config.registry_path)
    if model not in registry.models():
        return ""
    return str(registry.resolve(f"{model}:{number}").report().get("dataset") or "")


@drift_app.command("baseline")
def drift_baseline(
    sources: Annotated[list[Path], typer.Argument(help="Calibration videos or image folders.")],
    frames: Annotated[int, typer.Option(help="Frames sampled per video.")] = 200,
) -> None:
    """Build the reference profile of the current model version (CAMSTREAM_MODEL_VERSION,
    else the latest) from real frames."""
    from camstream.stack.setup import run_in_model_env
    from camstream.stack.triton import locate_model_env

    config = settings()
    version = config.model_version_dir()
    run_in_model_env(
        locate_model_env(),
        [
            "training.baseline",
            "--model",
            str(version.parent),
            "--version",
            version.name,
            "--out",
            str(config.reference_profile_path),
            "--frames",
            str(frames),
            *map(str, sources),
        ],
        "build the drift reference profile",
    )
    out(str(config.reference_profile_path))


@models_app.command("list")
def list_models(as_json: AsJson = False) -> None:
    """Every registered model: its versions, aliases and the champion's metrics."""
    from camstream.registry import Registry

    registry = Registry(settings().registry_path)
    rows = [_model_summary(registry, model) for model in registry.models()]
    if as_json:
        out(json.dumps(rows, indent=2))
        return
    if not rows:
        out(f"no models in {registry.root}: `camstream train --dataset D --model M` makes one")
    for row in rows:
        aliases = ", ".join(f"{k}={v}" for k, v in sorted(row["aliases"].items())) or "none"
        out(f"{row['model']}  ({len(row['versions'])} versions; aliases: {aliases})")
        out(
            f"  {'version':<9}{'digest':<18}{'created':<21}{'macro_f1':>9}{'accuracy':>10}  aliases"
        )
        for version in row["versions"]:
            out(
                f"  {version['number']:<9}{version['digest']:<18}"
                f"{_when(version['created_ms']):<21}{_figure(version['macro_f1']):>9}"
                f"{_figure(version['accuracy']):>10}  {', '.join(version['aliases'])}"
            )


@models_app.command("show")
def show(
    ref: Annotated[str, typer.Argument(help="MODEL, MODEL:NUMBER, MODEL:ALIAS or MODEL:DIGEST.")],
    as_json: AsJson = False,
) -> None:
    """One version, verified: card, metrics, files, digest, and the model's history."""
    from camstream.registry import Registry

    registry = Registry(settings().registry_path)
    version = registry.resolve(ref)
    detail = _version_detail(registry, version)
    if as_json:
        out(json.dumps(detail, indent=2))
        return
    aliases = ", ".join(detail["aliases"]) or "none"
    out(f"{version.ref}  digest {version.digest}  aliases: {aliases}")
    out(f"  path      {version.path}")
    out(f"  created   {_when(version.created_ms)}  code {detail['code_version']}")
    out(f"  dataset   {detail['dataset']} (manifest {detail['dataset_manifest_sha256'][:16]})")
    for key, value in detail["card"].items():
        if isinstance(value, str | int | float | bool):
            out(f"  card      {key}: {value}")
    report = detail["report"]
    out(
        f"  metrics   macro_f1 {_figure(report.get('macro_f1'))}  accuracy "
        f"{_figure(report.get('accuracy'))}  ece {_figure(report.get('ece'))}  "
        f"n {report.get('n', '-')} ({report.get('split', '-')})"
    )
    for name, base in (report.get("baselines") or {}).items():
        if isinstance(base, dict):
            out(f"  baseline  {name}: macro_f1 {_figure(base.get('macro_f1'))}")
    for label, row in (report.get("per_class") or {}).items():
        out(
            f"  class     {label:<20} precision {_figure(row.get('precision'))}  recall "
            f"{_figure(row.get('recall'))}  f1 {_figure(row.get('f1'))}  "
            f"support {row.get('support', '-')}"
        )
    for rel, info in detail["files"].items():
        out(f"  file      {rel:<40}{info['bytes']:>12} bytes  {info['sha256'][:16]}")
    for entry in detail["history"]:
        forced = " (forced)" if entry.get("forced") else ""
        out(
            f"  history   {_when(entry['time_ms'])}  {entry['alias']}: {entry['from']} -> "
            f"{entry['to']}{forced}  {entry.get('reason', '')}"
        )


Cameras = Annotated[
    list[str] | None,
    typer.Option(
        "--camera", help="Only these cameras (repeat the flag); default: the whole model."
    ),
]
WaitS = Annotated[
    float, typer.Option(help="Wait this long for another rollout's lock, then refuse.")
]
LoadTimeoutS = Annotated[
    float, typer.Option(help="Longest Triton may take to load the versions, then roll back.")
]


@app.command()
def promote(
    ref: Annotated[str, typer.Argument(help="MODEL:VERSION to put on the cameras.")],
    force: Annotated[
        bool, typer.Option(help="Promote even if the gate refuses (needs --reason).")
    ] = False,
    reason: Annotated[
        str | None, typer.Option(help="Why; recorded in the history (required with --force).")
    ] = None,
    margin: Annotated[
        float, typer.Option(help="How much the gate metric must beat champion and baselines.")
    ] = 0.01,
    alpha: Annotated[float, typer.Option(help="McNemar's significance level.")] = 0.05,
    camera: Cameras = None,
    wait_s: WaitS = 0.0,
    watch_s: Annotated[
        float, typer.Option(help="Watch the new version this long after the switch; 0: no watch.")
    ] = 60.0,
    canary_tolerance: Annotated[
        float, typer.Option(help="Largest live-vs-offline top-1 probability difference.")
    ] = 0.02,
    max_latency_ms: Annotated[
        float, typer.Option(help="Watch: mean request latency that rolls the version back.")
    ] = 500.0,
    max_error_rate: Annotated[
        float, typer.Option(help="Watch: share of failed requests that rolls it back.")
    ] = 0.01,
    load_timeout_s: LoadTimeoutS = 120.0,
    no_live: Annotated[
        bool,
        typer.Option("--no-live", help="Gate and install only: what serves does not change."),
    ] = False,
) -> None:
    """Put MODEL:VERSION on the cameras: the gate (it must beat the champion by the margin
    with McNemar's test on the same test images, and the baselines), the install into
    the Triton repository, then, when Triton answers, the live rollout: load it beside
    the version serving, a canary of its own evaluation images through the live server,
    the switch (the model's default, or --camera's routes in Feast), the drain and
    unload of the old version, and a watch that rolls it back by itself. A refusal at
    any step prints the reason, exits 1, is recorded in the histories and leaves the
    old version serving. A model outside the registry (the pretrained one) can be
    routed to; it has no gate and no canary."""
    from camstream.registry import Registry

    started = time.monotonic()
    if force and not reason:
        raise typer.BadParameter(
            "--force needs --reason TEXT for the history", param_hint="--reason"
        )
    model, _, number_text = ref.partition(":")
    number = modelrepo.version_number(number_text)
    if number is None:
        raise typer.BadParameter(f"name the version to promote: {model}:NUMBER", param_hint="REF")
    config = settings()
    registry = Registry(config.registry_path)
    cameras = list(camera or [])
    command = " ".join(["camstream promote", ref, *(f"--camera {c}" for c in cameras)])
    options = RolloutOptions(
        wait_s, watch_s, canary_tolerance, max_latency_ms, max_error_rate, load_timeout_s, no_live
    )
    if model not in registry.models() and (config.model_repo / model / str(number)).is_dir():
        out(f"{ref} is not in the registry: routing to the installed version (no gate, no canary)")
        _promote_rollout(
            config,
            registry,
            model,
            number,
            cameras,
            None,
            command,
            started,
            options,
            None,
        )
        return
    candidate = registry.resolve(ref)
    champion_number = registry.aliases(candidate.model).get(CHAMPION)
    already = champion_number == candidate.number
    serving = modelrepo.default_version(config.model_repo, model)
    if already and not cameras and serving == candidate.number:
        out(f"{candidate.ref} is already the champion and the default version; nothing changed")
        return
    set_champion: Callable[[], None] | None = None
    if already:
        out(f"{candidate.ref} is the champion already (the gate passed then)")
    else:
        decision, against = _gate(
            registry, config, candidate, champion_number, force, margin, alpha
        )
        metrics = {
            **decision.metrics,
            "gate": "accepted" if decision.accepted else "refused",
            "gate_reasons": decision.reasons,
            "digest": candidate.digest,
        }
        why = reason or f"passed the gate against {against}"
        if not cameras:

            def set_champion() -> None:
                registry.set_alias(
                    candidate.model, CHAMPION, candidate.number, why, metrics, forced=force
                )
                was = f" (was {model}:{champion_number})" if champion_number else ""
                history = registry.root / model / "history.jsonl"
                out(f"champion of {model} is now {candidate.ref}{was}; recorded in {history}")

        if decision.accepted:
            out(f"{candidate.ref} passed the gate against {against}")
        else:
            out(f"{candidate.ref} forced past the gate ({why}); the gate said:")
            for line in decision.reasons:
                out(f"  - {line}")
    _promote_rollout(
        config,
        registry,
        model,
        number,
        cameras,
        candidate,
        command,
        started,
        options,
        set_champion,
    )


@dataclass(frozen=True)
class RolloutOptions:
    wait_s: float
    watch_s: float
    canary_tolerance: float
    max_latency_ms: float
    max_error_rate: float
    load_timeout_s: float
    no_live: bool


def _gate(
    registry: Registry,
    config: Settings,
    candidate: Version,
    champion_number: int | None,
    force: bool,
    margin: float,
    alpha: float,
) -> tuple[gate.Decision, str]:
    """Today's gate: the decision, or a refusal recorded in the history (exit 1)."""
    from camstream import gate as gates
    from camstream.errors import CamstreamError

    cand_report = candidate.report()
    cand_preds = gates.read_predictions(candidate.path / EVALUATION / "predictions.jsonl")
    champ_report = champ_preds = None
    gate_error = ""
    if champion_number is not None:
        try:
            champion = registry.resolve(f"{candidate.model}:{champion_number}")  # verified
            champ_report, champ_preds = _champion_evaluation(
                registry, config, champion, cand_report
            )
        except CamstreamError as exc:
            if not force:
                raise
            gate_error = str(exc)
    if gate_error:
        decision = gates.Decision(False, [f"no gate: {gate_error}"], {"gate_error": gate_error})
    else:
        decision = gates.decide(
            cand_report, champ_report, cand_preds, champ_preds, margin=margin, alpha=alpha
        )
    against = f"the champion {candidate.model}:{champion_number}"
    if champion_number is None:
        against = "no champion"
    if not decision.accepted and not force:
        metrics = {**decision.metrics, "gate": "refused", "digest": candidate.digest}
        registry.record_refusal(
            candidate.model, CHAMPION, candidate.number, decision.reasons, metrics
        )
        out(f"refused: {candidate.ref} does not pass the gate against {against}:")
        for line in decision.reasons:
            out(f"  - {line}")
        out(
            "the champion and the Triton repository are unchanged; the refusal is in the "
            "history (override with --force --reason TEXT)"
        )
        raise typer.Exit(1)
    return decision, against


def _promote_rollout(
    config: Settings,
    registry: Registry,
    model: str,
    number: int,
    cameras: list[str],
    candidate: Version | None,
    command: str,
    started: float,
    options: RolloutOptions,
    set_champion: Callable[[], None] | None,
) -> None:
    """Lock, install, then the live rollout (or the switch on disk when no Triton
    answers; nothing more with --no-live)."""
    from camstream import rollout
    from camstream.datasets import dataset_dir

    ref = f"{model}:{number}"
    routes = rollout.CameraRoutes(config.feast_repo_path)
    try:
        with rollout.rollout_lock(config.model_repo, options.wait_s, command):
            rollout.pin_serving(config.model_repo, model)
            before = rollout.read_fleet(config, routes)
            switch = rollout.plan_promote(before, model, number, cameras or None)
            snapshot = rollout.RepoSnapshot(config.model_repo, model, number)
            canary = None
            if candidate is not None:
                installed = modelrepo.install_version(
                    config.model_repo,
                    model,
                    number,
                    onnx=candidate.path / "model.onnx",
                    labels=candidate.path / "labels.txt",
                    profile=candidate.path / "reference_profile.json",
                    model_py=GENERIC_MODEL_PY,
                )
                out(f"installed as Triton model {model} version {number}: {installed}")
                report = candidate.report()
                canary = rollout.CanarySource(
                    candidate.path / EVALUATION / "predictions.jsonl",
                    dataset_dir(config.datasets_path, str(report.get("dataset") or "")),
                    options.canary_tolerance,
                )
            if options.no_live:
                if set_champion is not None:
                    set_champion()
                out(f"--no-live: what serves is unchanged; `camstream promote {ref}` puts it live")
                return
            triton = rollout.Triton(config.triton_grpc)
            try:
                if not triton.live():
                    switched = rollout.switch_on_disk(
                        config,
                        routes,
                        before,
                        switch,
                        {"action": "promote", "version": number, "command": command},
                    )
                    if set_champion is not None:
                        set_champion()
                    out(
                        f"Triton at {config.triton_grpc} did not answer: {ref} is switched on "
                        "disk (no canary); a server started on this repository serves it"
                    )
                    report_done(f"promoted {ref}", started, None, switched)
                    return
                scope = f"cameras {', '.join(cameras)}" if cameras else "the whole model"
                out(f"rollout of {ref} to {scope} on Triton {config.triton_grpc}")
                outcome = rollout.Rollout(
                    config,
                    triton,
                    routes,
                    out,
                    command,
                    registry,
                    load_timeout_s=options.load_timeout_s,
                ).promote(
                    model,
                    number,
                    before,
                    switch,
                    snapshot,
                    canary,
                    rollout.WatchLimits(
                        options.watch_s, options.max_latency_ms, options.max_error_rate
                    ),
                    set_champion or (lambda: None),
                    started=started,
                )
            finally:
                triton.close()
    except rollout.RolloutRefused as refused:
        if refused.reason.startswith("lock:"):
            rollout.record_refusal(
                config, registry, model, number, cameras, refused.reason, command
            )
        out(f"refused: {ref}: {refused}")
        serving = modelrepo.default_version(config.model_repo, model)
        if serving is not None:
            out(f"  {model}:{serving} is still the default version and serving")
        where = f"{config.registry_path / rollout.HISTORY_FILE}"
        if model in registry.models():
            where += f" and {registry.root / model / 'history.jsonl'}"
        out(f"  recorded in {where}")
        raise typer.Exit(1) from None
    report_done(f"promoted {ref}", started, outcome.switched_after_s, outcome.switched)


def report_done(
    what: str, started: float, switched_after_s: float | None, switched: list[str]
) -> None:
    """The closing line: time taken (and to the switch) and the cameras switched."""
    took = time.monotonic() - started
    to_switch = f" (switched after {switched_after_s:.1f} s)" if switched_after_s else ""
    cams = ", ".join(switched) if switched else "none (no camera routes to it yet)"
    out(f"{what} in {took:.1f} s{to_switch}; cameras switched: {cams}")


def _champion_evaluation(
    registry: Registry, config: Settings, champion: Version, cand_report: dict[str, Any]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The champion's report and predictions on the candidate's test images: its own
    evaluation when made on the same dataset manifest, else a later one on the
    candidate's dataset, else one made now (in the model environment)."""
    from camstream import gate
    from camstream.datasets import dataset_dir
    from camstream.registry import RegistryError

    wanted = cand_report.get("dataset_manifest_sha256")
    split = str(cand_report.get("split") or "test")
    own = champion.report()
    if own.get("dataset_manifest_sha256") == wanted and own.get("split") == split:
        return own, gate.read_predictions(champion.path / EVALUATION / "predictions.jsonl")
    dataset = str(cand_report.get("dataset") or champion.manifest().get("dataset", ""))
    if not dataset:
        raise RegistryError(
            f"the candidate's evaluation names no dataset to compare {champion.ref} on"
        )
    folder = registry.report_dir(champion, dataset, split)
    report_file = folder / "report.json"
    if not _report_on(report_file, wanted):
        from camstream.stack.setup import run_in_model_env
        from camstream.stack.triton import locate_model_env

        out(f"evaluating the champion {champion.ref} on {dataset} ({split}) into {folder}")
        run_in_model_env(
            locate_model_env(),
            [
                "training.evaluate",
                "--onnx",
                str(champion.path / "model.onnx"),
                "--labels",
                str(champion.path / "labels.txt"),
                "--dataset-dir",
                str(dataset_dir(config.datasets_path, dataset)),
                "--split",
                split,
                "--out",
                str(folder),
                "--ref",
                champion.ref,
            ],
            "evaluate the champion",
            capture=False,
        )
    report = json.loads(report_file.read_text())
    return report, gate.read_predictions(folder / "predictions.jsonl")


def _report_on(path: Path, manifest_sha256: Any) -> bool:
    """Whether ``path`` is an evaluation report made on that dataset manifest."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and report.get("dataset_manifest_sha256") == manifest_sha256


def _model_summary(registry: Registry, model: str) -> dict[str, Any]:
    aliases = registry.aliases(model)
    versions = []
    champion = None
    for version in registry.versions(model):
        report = _report_or_empty(version)
        row = {
            "number": version.number,
            "ref": version.ref,
            "digest": version.digest,
            "created_ms": version.created_ms,
            "aliases": sorted(a for a, n in aliases.items() if n == version.number),
            "macro_f1": report.get("macro_f1"),
            "accuracy": report.get("accuracy"),
        }
        versions.append(row)
        if aliases.get(CHAMPION) == version.number:
            champion = {k: row[k] for k in ("number", "ref", "macro_f1", "accuracy")}
    return {"model": model, "aliases": aliases, "champion": champion, "versions": versions}


def _version_detail(registry: Registry, version: Version) -> dict[str, Any]:
    manifest = version.manifest()
    files = {
        rel: {"sha256": sha, "bytes": (version.path / rel).stat().st_size}
        for rel, sha in sorted(manifest["files"].items())
    }
    aliases = registry.aliases(version.model)
    return {
        "model": version.model,
        "number": version.number,
        "ref": version.ref,
        "digest": version.digest,
        "path": str(version.path),
        "created_ms": version.created_ms,
        "aliases": sorted(a for a, n in aliases.items() if n == version.number),
        "dataset": manifest.get("dataset", ""),
        "dataset_manifest_sha256": manifest.get("dataset_manifest_sha256", ""),
        "code_version": manifest.get("code_version", ""),
        "card": version.card(),
        "report": version.report(),
        "files": files,
        "history": registry.history(version.model),
    }


def _report_or_empty(version: Version) -> dict[str, Any]:
    from camstream.registry import RegistryError

    try:
        return version.report()
    except RegistryError:
        return {}


def _figure(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


def _when(time_ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time_ms / 1000))
