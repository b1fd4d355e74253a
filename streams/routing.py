"""Which model and version answer for a camera: its Feast routing, resolved and checked.

A camera's metadata names a model (``model``; '' = the worker's default model) and a
version (``model_version``; '' = the model's default version: ``serving.json`` in its
repository folder, else its latest version folder; see camstream.modelrepo). Every
request is pinned to the version resolved here, so a version loaded beside it (the
overlap of a promote) never answers by accident. Each version's labels and drift
reference profile are read once, when a camera first routes to it.

A route the repository cannot serve (no such model or version, or labels that do not
match what the model returns) is refused with FrameRejected(no_model): those frames go
to the DLQ with the reason, the rest of the batch goes on. The model default versions
are looked up again at most once a second (``serving.json`` changes under a promote).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from camstream import modelrepo
from camstream.errors import ConfigError, DlqKind, FrameRejected
from camstream.records import ModelRef
from streams.drift_stats import ReferenceProfile
from streams.pipeline import load_labels


@dataclass(frozen=True)
class Route:
    """One version of one model: where a camera's frames go."""

    model: str
    version: int

    @functools.cached_property
    def ref(self) -> ModelRef:
        """As records name it (made once per route, not once per frame)."""
        return ModelRef(name=self.model, version=str(self.version))

    def __str__(self) -> str:
        return f"{self.model}:{self.version}"

    @classmethod
    def parse(cls, text: str) -> Route:
        """``NAME:VERSION`` (a shadow model's form)."""
        name, _, version = text.partition(":")
        if not name or not version.isdigit():
            raise ValueError(f"{text!r} is not NAME:VERSION")
        return cls(name, int(version))


class Router:
    def __init__(
        self,
        repo: Path,
        default_model: str,
        default_version: str = "",
        reference_override: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        refresh_s: float = 1.0,
    ) -> None:
        """``default_version`` (CAMSTREAM_MODEL_VERSION) pins the default model's version
        for cameras that name none; ``reference_override`` (CAMSTREAM_DRIFT_REFERENCE)
        replaces the default model's own reference profile."""
        self.repo = repo
        self.default_model = default_model
        self.pinned_default = default_version
        self.reference_override = reference_override
        self._clock = clock
        self._refresh_s = refresh_s
        self._defaults: dict[str, tuple[int | None, float]] = {}
        self._labels: dict[Route, list[str]] = {}
        self._references: dict[Route, ReferenceProfile] = {}

    def default_route(self) -> Route:
        """Where a camera with no routing goes (the worker's start-up check uses it)."""
        return self.resolve({})

    def resolve(self, features: Mapping[str, Any]) -> Route:
        """The route of a camera with these features; FrameRejected(no_model) if none."""
        model = str(features.get("model") or "") or self.default_model
        version = str(features.get("model_version") or "")
        if not version and model == self.default_model and self.pinned_default:
            version = self.pinned_default
        if version:
            if not (version.isascii() and version.isdigit()) or version.startswith("0"):
                raise FrameRejected(
                    DlqKind.NO_MODEL,
                    f"camera routes to model {model} version {version!r}, not a positive "
                    "integer: fix it with `camstream cameras update ID --model-version N`",
                )
            return Route(model, int(version))
        number = self._default_version(model)
        if number is None:
            raise FrameRejected(
                DlqKind.NO_MODEL,
                f"camera routes to model {model}, which has no version in {self.repo}: "
                "promote one (`camstream promote MODEL:VERSION`) or route the camera to "
                "another model (`camstream cameras update ID --model NAME`)",
            )
        return Route(model, number)

    def _default_version(self, model: str) -> int | None:
        now = self._clock()
        cached = self._defaults.get(model)
        if cached is None or now - cached[1] >= self._refresh_s:
            cached = (modelrepo.default_version(self.repo, model), now)
            self._defaults[model] = cached
        return cached[0]

    def labels(self, route: Route) -> list[str]:
        """The route's class names (its version's own labels.txt, else the model's)."""
        labels = self._labels.get(route)
        if labels is None:
            path = modelrepo.labels_path(self.repo, route.model, route.version)
            try:
                labels = load_labels(path)
            except ConfigError as exc:
                raise FrameRejected(DlqKind.NO_MODEL, f"model {route}: {exc}") from exc
            self._labels[route] = labels
        return labels

    def check_classes(self, route: Route, classes: int) -> None:
        """Refuse a route whose model returns another number of classes than its labels."""
        labels = self.labels(route)
        if classes != len(labels):
            raise FrameRejected(
                DlqKind.NO_MODEL,
                f"model {route} returns {classes} probabilities but its labels file has "
                f"{len(labels)} classes: re-export or re-install that version",
            )

    def reference(self, route: Route) -> ReferenceProfile:
        """The drift reference profile of the route's version."""
        profile = self._references.get(route)
        if profile is None:
            path = modelrepo.reference_profile_path(self.repo, route.model, route.version)
            if self.reference_override is not None and route.model == self.default_model:
                path = self.reference_override
            profile = ReferenceProfile.load(path)
            self._references[route] = profile
        return profile
