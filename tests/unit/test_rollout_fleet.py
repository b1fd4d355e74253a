"""camstream.rollout.Triton over several servers: what a rollout changes acts on the
live ones; ready means ready on every live server; statistics add up; a canary batch is
split so that each live server answers for its share (fake servers)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from camstream.rollout import Triton, VersionStats


class FakeServer:
    def __init__(self, address: str, ready: list[int], stats: VersionStats | None) -> None:
        self.address = address
        self.is_live = True
        self.ready = ready
        self.version_stats = stats
        self.loads: list[str] = []
        self.classified: list[int] = []

    def live(self) -> bool:
        return self.is_live

    def load(self, model: str, timeout_s: float) -> None:
        self.loads.append(model)

    def unload(self, model: str) -> None:
        self.loads.append(f"-{model}")

    def ready_versions(self, model: str) -> list[int]:
        return self.ready

    def stats(self, model: str, version: int) -> VersionStats | None:
        return self.version_stats

    def classify(
        self, model: str, version: int, images: npt.NDArray[np.uint8]
    ) -> npt.NDArray[np.float32]:
        self.classified.append(len(images))
        return np.full((len(images), 2), float(self.address[-1]), dtype=np.float32)

    def close(self) -> None:
        pass


def _fleet(*servers: FakeServer) -> Triton:
    fleet = Triton(",".join(s.address for s in servers))
    fleet._servers = list(servers)  # type: ignore[assignment]
    return fleet


def test_a_rollout_acts_on_the_live_servers_and_ready_means_ready_on_each() -> None:
    a = FakeServer("h:1", [1, 2], VersionStats(3, 3, 300, 0))
    b = FakeServer("h:2", [2], VersionStats(5, 4, 400, 1))
    down = FakeServer("h:3", [], None)
    down.is_live = False
    fleet = _fleet(a, b, down)
    assert fleet.live()
    fleet.load("m", 10)
    fleet.unload("m")
    assert a.loads == b.loads == ["m", "-m"] and down.loads == []
    assert fleet.ready_versions("m") == [2]
    assert fleet.stats("m", 2) == VersionStats(8, 7, 700, 1)
    a.version_stats = b.version_stats = None
    assert fleet.stats("m", 2) is None


def test_a_canary_batch_is_split_over_the_live_servers_in_order() -> None:
    a, b = FakeServer("h:1", [1], None), FakeServer("h:2", [1], None)
    probs = _fleet(a, b).classify("m", 1, np.zeros((5, 2, 2, 3), dtype=np.uint8))
    assert (a.classified, b.classified) == ([3], [2])
    assert probs[:, 0].tolist() == [1.0, 1.0, 1.0, 2.0, 2.0]
    one = FakeServer("h:3", [1], None)
    _fleet(a, one).classify("m", 1, np.zeros((1, 2, 2, 3), dtype=np.uint8))
    assert one.classified == []  # one image: one server


def test_no_live_server_is_not_live_and_serves_nothing() -> None:
    a = FakeServer("h:1", [1], None)
    a.is_live = False
    fleet = _fleet(a)
    assert not fleet.live()
    assert fleet.ready_versions("m") == []


def test_a_bad_address_list_is_refused_naming_the_setting() -> None:
    with pytest.raises(ValueError, match="CAMSTREAM_TRITON_GRPC"):
        Triton("h:1,nonsense")
