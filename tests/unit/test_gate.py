"""camstream.gate and `camstream promote`: a candidate replaces the champion only when it
is better by the margin, significantly so on the same test images (McNemar), and
better than the baselines; a refusal says why and changes nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from camstream import gate, modelrepo
from camstream.cli import app
from camstream.registry import Registry
from tests.unit.test_registry import MODEL, predictions, register, report


def test_a_clearly_better_candidate_is_accepted() -> None:
    # Given a champion right on 210 of 300 test images and a candidate right on 255
    decision = gate.decide(
        report(0.85), report(0.70), predictions(255), predictions(210), margin=0.01
    )
    # Then it passes, and the figures are there for the history
    assert decision.accepted, decision.reasons
    assert decision.reasons == []
    metrics = decision.metrics
    assert (metrics["candidate"], metrics["champion"], metrics["paired"]) == (0.85, 0.70, 300)
    assert (metrics["b"], metrics["c"]) == (45, 0) and metrics["p_value"] < 1e-10
    assert metrics["baselines"] == {"majority": 0.1, "logreg_pixels": 0.4}


def test_a_worse_candidate_is_refused_with_its_figures() -> None:
    decision = gate.decide(report(0.70), report(0.85), predictions(210), predictions(255))
    assert not decision.accepted
    assert decision.reasons == [
        "macro_f1 0.7000 does not beat the champion's 0.8500 by the margin 0.0100 "
        "(difference -0.1500)",
        "on the 300 paired test images the candidate alone is right on 0 and the champion "
        "alone on 45: the candidate is not right more often (McNemar p=5.68e-14)",
    ]


def test_a_better_score_that_may_be_chance_is_refused() -> None:
    # Given a candidate 5 images better on 300: past the margin, but not significant
    cand = predictions(245)
    champ = predictions(240)
    decision = gate.decide(report(245 / 300), report(240 / 300), cand, champ)
    # Then McNemar refuses it, with its counts and p-value
    assert not decision.accepted
    (reason,) = decision.reasons
    assert "candidate alone is right on 5 and the champion alone on 0" in reason
    assert "p=0.0625, not below alpha 0.05" in reason and "may be chance" in reason


def test_without_a_champion_only_the_baselines_count() -> None:
    accepted = gate.decide(report(0.5), None, predictions(150), None)
    assert accepted.accepted and accepted.metrics["champion"] is None
    refused = gate.decide(report(0.405, baselines=(0.1, 0.4)), None, predictions(120), None)
    assert refused.reasons == [
        "macro_f1 0.4050 does not beat the logreg_pixels baseline's 0.4000 by the margin "
        "0.0100 (difference +0.0050)"
    ]


def test_a_report_without_its_baselines_is_refused() -> None:
    candidate = report(0.9)
    del candidate["baselines"]["logreg_pixels"]
    decision = gate.decide(candidate, None, predictions(270), None)
    assert not decision.accepted
    assert "no logreg_pixels baseline macro_f1" in decision.reasons[0]


def test_reports_on_different_test_sets_are_compared_on_the_images_both_have() -> None:
    # Given a champion evaluated on an older manifest holding only the first 200 images
    champion = report(0.99) | {"dataset_manifest_sha256": "older"}
    cand_rows, champ_rows = predictions(290), predictions(150)[:200]
    # When the gate compares them
    decision = gate.decide(report(0.96), champion, cand_rows, champ_rows)
    # Then both scores are recomputed on the 200 shared images (not 0.96 vs 0.99)
    assert decision.accepted, decision.reasons
    assert decision.metrics["paired"] == 200 and decision.metrics["same_test_set"] is False
    assert decision.metrics["candidate_paired"] == 1.0
    assert decision.metrics["champion"] < 0.8


def test_no_shared_test_image_is_refused() -> None:
    champ_rows = [dict(row, sha256="f" + row["sha256"][1:]) for row in predictions(100)]
    decision = gate.decide(report(0.9), report(0.3), predictions(270), champ_rows)
    assert any("no test image was evaluated for both" in r for r in decision.reasons)


def test_mcnemar_is_the_exact_binomial_on_discordant_pairs() -> None:
    b, c, p = gate.mcnemar([True] * 10 + [False] * 5, [False] * 10 + [False] * 5)
    assert (b, c) == (10, 0) and p == pytest.approx(2 * 0.5**10)
    assert gate.mcnemar([True, False], [True, False]) == (0, 0, 1.0)


# `camstream promote` on a registry built from small files (any bytes for the ONNX).


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Settings pointing at empty folders; logging left alone (the CLI would configure it
    onto CliRunner's stderr, closed after the call, where later tests' loggers write)."""
    paths = {"registry": tmp_path / "registry", "repo": tmp_path / "triton", "state": tmp_path}
    monkeypatch.setattr("camstream.observability.configure_logging", lambda *a, **k: None)
    monkeypatch.delenv("CAMSTREAM_CONFIG_FILE", raising=False)
    monkeypatch.setenv("CAMSTREAM_REGISTRY_DIR", str(paths["registry"]))
    monkeypatch.setenv("CAMSTREAM_MODEL_REPO", str(paths["repo"]))
    monkeypatch.setenv("CAMSTREAM_STATE_DIR", str(paths["state"]))
    return paths


def _cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def test_promote_refuses_a_worse_candidate_accepts_a_better_one_and_records_both(
    stack: dict[str, Path],
) -> None:
    registry = Registry(stack["registry"])
    register(registry, onnx=b"first", right=210)
    register(registry, onnx=b"worse", right=200)
    register(registry, onnx=b"better", right=260)
    repo = stack["repo"]

    # Given version 1 promoted with no champion: only the baselines gate it
    first = _cli("promote", f"{MODEL}:1")
    assert first.exit_code == 0, first.output
    assert f"installed as Triton model {MODEL} version 1: {repo / MODEL / '1'}" in first.output
    assert registry.aliases(MODEL) == {"champion": 1}

    # When a worse version is promoted, it is refused with reasons: the champion and the
    # Triton repository are unchanged, and the history records the refusal
    before = sorted(p.relative_to(repo) for p in repo.rglob("*"))
    worse = _cli("promote", f"{MODEL}:2")
    assert worse.exit_code == 1, worse.output
    assert f"refused: {MODEL}:2 does not pass the gate against the champion {MODEL}:1" in (
        worse.output
    )
    assert "does not beat the champion's 0.7000" in worse.output
    assert "not right more often" in worse.output
    assert registry.aliases(MODEL) == {"champion": 1}
    assert sorted(p.relative_to(repo) for p in repo.rglob("*")) == before
    refusal = registry.history(MODEL)[-1]
    assert (refusal["event"], refusal["candidate"], refusal["from"], refusal["to"]) == (
        "refused",
        2,
        1,
        1,
    )
    assert "does not beat the champion's 0.7000" in refusal["reason"]

    # When a better version is promoted, it becomes the champion and is installed
    better = _cli("promote", f"{MODEL}:3")
    assert better.exit_code == 0, better.output
    assert f"champion of {MODEL} is now {MODEL}:3 (was {MODEL}:1)" in better.output
    assert registry.aliases(MODEL) == {"champion": 3}
    assert modelrepo.model_versions(repo / MODEL) == (1, 3)
    assert (repo / MODEL / "3" / "model.onnx").read_bytes() == b"better"
    assert (repo / MODEL / "3" / "model.py").read_bytes() == (
        Path("triton_repo/efficientnet_lite0/1/model.py").read_bytes()
    )
    assert (repo / MODEL / modelrepo.CONFIG_FILE).is_file()

    # And the history holds every decision, in order, with the gate's figures
    history = registry.history(MODEL)
    assert [(h["event"], h["from"], h["to"], h["forced"]) for h in history] == [
        ("alias", None, 1, False),
        ("refused", 1, 1, False),
        ("alias", 1, 3, False),
    ]
    assert history[2]["metrics"]["gate"] == "accepted"
    assert history[2]["metrics"]["b"] == 50 and history[2]["metrics"]["c"] == 0
    assert history[2]["reason"] == f"passed the gate against the champion {MODEL}:1"


def test_force_needs_a_reason_and_the_history_says_it_was_forced(
    stack: dict[str, Path],
) -> None:
    registry = Registry(stack["registry"])
    register(registry, onnx=b"good", right=260)
    register(registry, onnx=b"worse", right=200)
    assert _cli("promote", f"{MODEL}:1").exit_code == 0

    no_reason = _cli("promote", f"{MODEL}:2", "--force")
    assert no_reason.exit_code == 2 and "--reason" in no_reason.output
    assert registry.aliases(MODEL) == {"champion": 1}

    forced = _cli("promote", f"{MODEL}:2", "--force", "--reason", "label fix in prod")
    assert forced.exit_code == 0, forced.output
    assert "forced past the gate (label fix in prod)" in forced.output
    assert registry.aliases(MODEL) == {"champion": 2}
    last = registry.history(MODEL)[-1]
    assert (last["reason"], last["forced"], last["metrics"]["gate"]) == (
        "label fix in prod",
        True,
        "refused",
    )
    assert last["metrics"]["gate_reasons"]


def test_promote_refuses_a_truncated_version_with_its_name(stack: dict[str, Path]) -> None:
    registry = Registry(stack["registry"])
    version = register(registry, onnx=b"a model of some length", right=260)
    onnx = version.path / "model.onnx"
    onnx.chmod(0o644)
    onnx.write_bytes(b"a model")
    result = _cli("promote", f"{MODEL}:1")
    assert result.exit_code == 2
    assert f"model {MODEL} version 1 ({version.digest})" in result.output
    assert "model.onnx is corrupted or truncated" in result.output
    assert registry.aliases(MODEL) == {} and not stack["repo"].exists()


def test_models_list_and_show_give_versions_aliases_metrics_and_history(
    stack: dict[str, Path],
) -> None:
    registry = Registry(stack["registry"])
    register(registry, onnx=b"one", right=210)
    two = register(registry, onnx=b"two", right=260)
    registry.set_alias(MODEL, "champion", 2, "test", {"macro_f1": 260 / 300})

    listed = _cli("models", "list", "--json")
    assert listed.exit_code == 0, listed.output
    (row,) = json.loads(listed.output)
    assert row["model"] == MODEL and row["aliases"] == {"champion": 2}
    assert row["champion"]["ref"] == f"{MODEL}:2"
    assert [(v["number"], v["aliases"]) for v in row["versions"]] == [(1, []), (2, ["champion"])]
    assert "champion" in _cli("models", "list").output

    shown = _cli("models", "show", MODEL, "--json")
    assert shown.exit_code == 0, shown.output
    detail = json.loads(shown.output)
    assert (detail["ref"], detail["digest"]) == (f"{MODEL}:2", two.digest)
    assert detail["files"]["model.onnx"]["bytes"] == 3
    assert detail["report"]["macro_f1"] == pytest.approx(260 / 300)
    assert [h["to"] for h in detail["history"]] == [2]
    text = _cli("models", "show", f"{MODEL}:1").output
    assert f"{MODEL}:1  digest" in text and "model.onnx" in text and "history" in text
