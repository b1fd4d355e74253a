"""Live rollouts: a model version goes onto running cameras, and back, with no failed
request. `camstream promote` (after the gate) and `camstream rollback` run one path:

1. lock: one rollout at a time per model repository (fcntl on ``<repo>/.rollout.lock``);
2. versions in use: each registered camera's route (Feast camera metadata: "" model is
   ``settings.model_name``, "" version the model's default, ``serving.json``) and its
   shadow, plus every model's default version;
3. load: the model's ``version_policy`` becomes in-use + new and Triton loads it beside
   the versions serving (Triton 2.51 reloads every version of a model whose config
   changed; the old instances answer until the new ones are ready: measured, no failed
   request); then each wanted version must be ready;
4. canary (promote): up to 32 of the version's own evaluation images, preprocessed as
   the worker does, through the live server pinned to the new version: each must give
   the offline top-1, with its probability within a tolerance (training-serving skew);
5. switch: Feast camera routes and/or the model's serving.json;
6. drain: until Triton's statistics show no new execution of each version that left use
   for ``2 * feature_cache_ttl_s + 2`` s (workers re-read routes every TTL);
7. drop: the policy becomes the versions in use; a model nobody routes to is unloaded;
8. watch (promote): the new version's error rate and mean latency for ``watch_s``;
   crossing a limit rolls back by the same path (``auto_rollback``).

A failure before the switch puts the repository back as it was (config, labels,
serving.json; a version folder this promote installed is removed), so the versions
serving never stopped. Every outcome goes to ``<registry>/rollouts.jsonl``, a refusal
also to the registry's history. The plan (what is in use, what a switch changes, what
a rollback undoes, the canary, drain and watch verdicts) is plain functions.

One module a responsibility; their public names are importable from here (to replace
one in a test, patch it in the module that uses it, not here):

- ``plan``: fleet, routes and switches, versions in use, the history and rollback target;
- ``canary``: the evaluation images replayed and compared with the offline answers;
- ``watch``: the drain and watch verdicts on Triton's statistics;
- ``serving``: Triton, camera routes in Feast, the repository (snapshot, fleet read);
- ``promote``: the lock and the path itself (``Rollout``, ``Outcome``, ``RolloutRefused``,
  ``switch_on_disk`` when no server runs).
"""

from camstream.rollout.canary import (
    CANARY_IMAGES,
    Canary,
    CanarySource,
    canary_images,
    compare_canary,
    pick_canary,
)
from camstream.rollout.plan import (
    HISTORY_FILE,
    Fleet,
    Route,
    Switch,
    append_record,
    leaving,
    parse_ref,
    plan_promote,
    previous_of,
    read_records,
    rollback_target,
    switched_cameras,
    undo_switch,
)
from camstream.rollout.promote import (
    CHAMPION,
    DRAIN_TIMEOUT_S,
    LOCK_FILE,
    Outcome,
    Rollout,
    RolloutRefused,
    record_refusal,
    rollout_lock,
    switch_on_disk,
)
from camstream.rollout.serving import (
    CameraRoutes,
    RepoSnapshot,
    Triton,
    pin_serving,
    read_fleet,
)
from camstream.rollout.watch import (
    WATCH_MIN_REQUESTS,
    Quiet,
    VersionStats,
    WatchLimits,
    watch_verdict,
)

__all__ = [
    "CANARY_IMAGES",
    "CHAMPION",
    "DRAIN_TIMEOUT_S",
    "HISTORY_FILE",
    "LOCK_FILE",
    "WATCH_MIN_REQUESTS",
    "CameraRoutes",
    "Canary",
    "CanarySource",
    "Fleet",
    "Outcome",
    "Quiet",
    "RepoSnapshot",
    "Rollout",
    "RolloutRefused",
    "Route",
    "Switch",
    "Triton",
    "VersionStats",
    "WatchLimits",
    "append_record",
    "canary_images",
    "compare_canary",
    "leaving",
    "parse_ref",
    "pick_canary",
    "pin_serving",
    "plan_promote",
    "previous_of",
    "read_fleet",
    "read_records",
    "record_refusal",
    "rollback_target",
    "rollout_lock",
    "switch_on_disk",
    "switched_cameras",
    "undo_switch",
    "watch_verdict",
]
