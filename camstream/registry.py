"""The model registry: immutable, content-addressed versions of each model, the aliases
that point at them, and the append-only history of every alias change.

    <root>/<model>/versions/<digest>/     one version's files (chmod 0444) + MANIFEST.json
    <root>/<model>/index.jsonl            {"number", "digest", "created_ms"}, one a line
    <root>/<model>/aliases.json           {"champion": 2, "candidate": 3}
    <root>/<model>/history.jsonl          one line per alias change or refused promotion,
                                          never rewritten
    <root>/<model>/reports/<number>/<dataset>-<split>/   later evaluations (mutable)
    <root>/<model>/.staging-<uuid>/       a version being written (ignored by listing)

Training writes a version's files into ``staging(model)`` and calls ``register``, which
hashes them, writes MANIFEST.json and renames the folder into ``versions/<digest>``:
nothing is copied, and a version is either wholly there or not at all. The digest
covers every file and the dataset manifest hash, so the same content registers as the
same version. Numbers (1, 2, 3, ...) and alias changes are made under an fcntl lock.

``resolve`` verifies what it returns: a version whose files no longer match its
manifest (corrupted, truncated) or that lacks its manifest or a required file
(half-written) raises a RegistryError naming the model, the version and the file.

Imported by both Python environments (training registers, the CLI promotes): stdlib only.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from camstream.errors import ConfigError
from camstream.modelrepo import parse_labels

REPO = Path(__file__).resolve().parent.parent

MANIFEST_FILE = "MANIFEST.json"
INDEX_FILE = "index.jsonl"
ALIASES_FILE = "aliases.json"
HISTORY_FILE = "history.jsonl"
LOCK_FILE = ".lock"
VERSIONS_DIR = "versions"
REPORTS_DIR = "reports"
STAGING_PREFIX = ".staging-"
DIGEST_CHARS = 16
MIN_PREFIX = 4  # shortest digest prefix a reference may use

REQUIRED_FILES = (
    "model.onnx",
    "labels.txt",
    "reference_profile.json",
    "card.json",
    "card.md",
    "training_config.json",
    "evaluation/report.json",
    "evaluation/predictions.jsonl",
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_HEX = re.compile(r"^[0-9a-f]+$")


class RegistryError(ConfigError):
    """A registry entry that cannot be used: the message names the model, the version
    and the file, and what to do."""


@dataclass(frozen=True)
class Version:
    """One registered version of a model: its number, content digest and folder."""

    model: str
    number: int
    digest: str
    path: Path
    created_ms: int

    @property
    def ref(self) -> str:
        return f"{self.model}:{self.number}"

    def labels(self) -> list[str]:
        return parse_labels((self.path / "labels.txt").read_text())

    def card(self) -> dict[str, Any]:
        return _read_json(self.path / "card.json")

    def manifest(self) -> dict[str, Any]:
        return _read_json(self.path / MANIFEST_FILE)

    def report(self) -> dict[str, Any]:
        """The evaluation made at training time (``evaluation/report.json``)."""
        return _read_json(self.path / "evaluation" / "report.json")


class Registry:
    """The registry at ``root``; every method reads the folder afresh (no caching), so
    several processes may share it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    # Writing ----------------------------------------------------------------------

    def staging(self, model: str) -> Path:
        """A fresh, empty folder to write one version's files into before ``register``."""
        path = self._model_dir(model) / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
        path.mkdir(parents=True)
        return path

    def register(
        self,
        model: str,
        staging: Path,
        dataset: str,
        dataset_manifest_sha256: str,
        code_version: str,
    ) -> Version:
        """Make ``staging`` an immutable version of ``model`` (the folder moves; nothing is
        copied). The same content registered again returns the existing version and
        removes ``staging``. RegistryError, with nothing changed, when a required file
        is missing."""
        model_dir = self._model_dir(model)
        if (
            not staging.name.startswith(STAGING_PREFIX)
            or staging.resolve().parent != model_dir.resolve()
        ):
            raise RegistryError(
                f"{staging} is not a staging folder of model {model}: write the version "
                f"into Registry.staging({model!r})"
            )
        missing = [name for name in REQUIRED_FILES if not (staging / name).is_file()]
        if missing:
            raise RegistryError(
                f"cannot register a version of model {model} from {staging}: missing "
                f"{', '.join(missing)}; nothing was registered"
            )
        files = _hash_tree(staging)
        digest = content_digest(files, dataset_manifest_sha256)
        manifest = {
            "model": model,
            "files": files,
            "dataset": dataset,
            "dataset_manifest_sha256": dataset_manifest_sha256,
            "code_version": code_version,
            "created_ms": _now_ms(),
        }
        _write_atomic(staging / MANIFEST_FILE, json.dumps(manifest, indent=2, sort_keys=True))
        for path in staging.rglob("*"):
            if path.is_file():
                path.chmod(0o444)
        with self._lock(model):
            entries = self._index(model)
            known = {e["digest"]: e for e in entries}
            target = model_dir / VERSIONS_DIR / digest
            if target.exists():
                shutil.rmtree(staging)  # read-only files go with their writable folder
            else:
                target.parent.mkdir(exist_ok=True)
                staging.rename(target)
            if digest in known:
                entry = known[digest]
            else:  # new, or moved in by a process that died before indexing it
                created = int(_read_json(target / MANIFEST_FILE).get("created_ms", _now_ms()))
                number = max((int(e["number"]) for e in entries), default=0) + 1
                entry = {"number": number, "digest": digest, "created_ms": created}
                _append_line(model_dir / INDEX_FILE, entry)
        return self._version(model, entry)

    def set_alias(
        self,
        model: str,
        alias: str,
        number: int,
        reason: str,
        metrics: dict[str, Any],
        forced: bool = False,
    ) -> None:
        """Point ``alias`` at version ``number``; the change goes into the history first
        (time, from, to, reason, forced, metrics), then aliases.json is replaced."""
        if not _ALIAS.match(alias):
            raise RegistryError(
                f"alias {alias!r} of model {model}: use lower-case letters, digits, '_' "
                "or '-', starting with a letter"
            )
        model_dir = self._model_dir(model)
        with self._lock(model):
            numbers = [int(e["number"]) for e in self._index(model)]
            if number not in numbers:
                raise RegistryError(
                    f"model {model} has no version {number} (it has {numbers}); nothing was changed"
                )
            aliases = self.aliases(model)
            entry = {
                "time_ms": _now_ms(),
                "event": "alias",
                "alias": alias,
                "from": aliases.get(alias),
                "to": number,
                "reason": reason,
                "forced": forced,
                "metrics": metrics,
            }
            _append_line(model_dir / HISTORY_FILE, entry)
            aliases[alias] = number
            _write_atomic(model_dir / ALIASES_FILE, json.dumps(aliases, indent=2, sort_keys=True))

    def record_refusal(
        self, model: str, alias: str, number: int, reasons: list[str], metrics: dict[str, Any]
    ) -> None:
        """Record in the history that version ``number`` was refused for ``alias`` (the
        gate said no): the alias does not move, so ``from`` and ``to`` are where it is."""
        model_dir = self._model_dir(model)
        with self._lock(model):
            current = self.aliases(model).get(alias)
            entry = {
                "time_ms": _now_ms(),
                "event": "refused",
                "alias": alias,
                "candidate": number,
                "from": current,
                "to": current,
                "reason": "; ".join(reasons),
                "forced": False,
                "metrics": metrics,
            }
            _append_line(model_dir / HISTORY_FILE, entry)

    # Reading ----------------------------------------------------------------------

    def models(self) -> list[str]:
        """Models with at least one registered version, by name."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and _NAME.match(p.name) and (p / INDEX_FILE).is_file()
        )

    def versions(self, model: str) -> list[Version]:
        """The registered versions of ``model``, by number (staging folders are not)."""
        return [self._version(model, e) for e in self._index(model)]

    def aliases(self, model: str) -> dict[str, int]:
        path = self._model_dir(model) / ALIASES_FILE
        if not path.is_file():
            return {}
        return {str(k): int(v) for k, v in _read_json(path).items()}

    def history(self, model: str) -> list[dict[str, Any]]:
        """Every alias change (``event`` "alias") and refused promotion ("refused") of
        ``model``, oldest first."""
        return _read_lines(self._model_dir(model) / HISTORY_FILE)

    def resolve(self, ref: str) -> Version:
        """The verified version ``ref`` names: ``m:3`` (number), ``m:champion`` (alias),
        ``m:<digest prefix>`` (4+ hex digits, not all of them decimal: those read as a
        number), or ``m`` (the champion, else the latest)."""
        model, _, selector = ref.partition(":")
        versions = self.versions(model)
        if not versions:
            known = ", ".join(self.models()) or "none"
            raise RegistryError(
                f"model {model} has no registered version in {self.root} (models: {known}); "
                f"train one with `camstream train --model {model}`"
            )
        aliases = self.aliases(model)
        by_number = {v.number: v for v in versions}
        found: Version | None
        if not selector:
            found = by_number.get(aliases["champion"]) if "champion" in aliases else versions[-1]
        elif selector.isdigit():
            found = by_number.get(int(selector))
        elif selector in aliases:
            found = by_number.get(aliases[selector])
        else:
            matches = [
                v
                for v in versions
                if len(selector) >= MIN_PREFIX
                and _HEX.match(selector)
                and v.digest.startswith(selector)
            ]
            if len(matches) > 1:
                raise RegistryError(
                    f"{ref} is ambiguous: digest prefix {selector} matches versions "
                    f"{[v.number for v in matches]}; give more of the digest"
                )
            found = matches[0] if matches else None
        if found is None:
            raise RegistryError(
                f"model {model} has no version {selector!r}: it has versions "
                f"{sorted(by_number)} and aliases {aliases or '{}'} (a digest prefix needs "
                f"at least {MIN_PREFIX} hex digits)"
            )
        self.verify(found)
        return found

    def verify(self, version: Version) -> None:
        """Raise RegistryError naming the model, version and file unless every file of
        ``version`` is present and matches the sha256 its manifest records."""
        name = f"model {version.model} version {version.number} ({version.digest})"
        refuse = "refusing to use it; register it again from training"
        manifest_path = version.path / MANIFEST_FILE
        if not manifest_path.is_file():
            raise RegistryError(f"{name} is half-written: {manifest_path} is missing; {refuse}")
        try:
            manifest = json.loads(manifest_path.read_text())
            files = {str(k): str(v) for k, v in manifest["files"].items()}
            dataset_hash = str(manifest["dataset_manifest_sha256"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RegistryError(
                f"{name}: {manifest_path} is not a valid manifest ({exc}); {refuse}"
            ) from exc
        for required in REQUIRED_FILES:
            if required not in files or not (version.path / required).is_file():
                raise RegistryError(
                    f"{name} is half-written: {version.path / required} is missing; {refuse}"
                )
        for rel, expected in sorted(files.items()):
            path = version.path / rel
            if not path.is_file():
                raise RegistryError(f"{name}: file {path} is missing; {refuse}")
            actual = _sha256(path)
            if actual != expected:
                raise RegistryError(
                    f"{name}: file {path} is corrupted or truncated ({path.stat().st_size} "
                    f"bytes, sha256 {actual[:16]}..., its manifest says {expected[:16]}...); "
                    f"{refuse}"
                )
        extra = sorted(set(_relative_files(version.path)) - set(files) - {MANIFEST_FILE})
        if extra:
            raise RegistryError(
                f"{name}: file {version.path / extra[0]} is not in its manifest (a version "
                f"never changes); {refuse}"
            )
        if content_digest(files, dataset_hash) != version.digest:
            raise RegistryError(
                f"{name}: {manifest_path} does not match the version's digest; {refuse}"
            )

    def report_dir(self, version: Version, dataset: str, split: str) -> Path:
        """Where a later evaluation of ``version`` on ``dataset``/``split`` goes (not
        created here: the evaluation writes it)."""
        if not _NAME.match(dataset):
            raise RegistryError(f"dataset name {dataset!r} is not a valid name")
        return (
            self._model_dir(version.model)
            / REPORTS_DIR
            / str(version.number)
            / f"{dataset}-{split}"
        )

    # Internals ----------------------------------------------------------------------

    def _model_dir(self, model: str) -> Path:
        if not _NAME.match(model):
            raise RegistryError(
                f"model name {model!r}: use letters, digits, '.', '_' or '-' (at most 64, "
                "starting with a letter or digit)"
            )
        return self.root / model

    def _index(self, model: str) -> list[dict[str, Any]]:
        return _read_lines(self._model_dir(model) / INDEX_FILE)

    def _version(self, model: str, entry: dict[str, Any]) -> Version:
        digest = str(entry["digest"])
        return Version(
            model=model,
            number=int(entry["number"]),
            digest=digest,
            path=self._model_dir(model) / VERSIONS_DIR / digest,
            created_ms=int(entry["created_ms"]),
        )

    @contextlib.contextmanager
    def _lock(self, model: str) -> Iterator[None]:
        """An exclusive lock on ``model`` across processes (numbers, aliases)."""
        model_dir = self._model_dir(model)
        model_dir.mkdir(parents=True, exist_ok=True)
        with (model_dir / LOCK_FILE).open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def content_digest(files: dict[str, str], dataset_manifest_sha256: str) -> str:
    """A version's identity: the first 16 hex of the sha256 of the canonical JSON of its
    files' hashes and its dataset manifest hash."""
    canonical = json.dumps(
        {"files": files, "dataset_manifest_sha256": dataset_manifest_sha256},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:DIGEST_CHARS]


def code_version(root: Path = REPO) -> str:
    """What code made a version: ``git describe`` of the checkout at ``root`` (with a
    hash of the package files when it has uncommitted changes), else that hash alone."""
    files = _code_hash(root)
    if (root / ".git").exists():
        try:
            result = subprocess.run(
                ["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
                capture_output=True,
                text=True,
                check=True,
                timeout=10,
                env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},  # read only: no index refresh
            )
        except (OSError, subprocess.SubprocessError):
            return files
        described = result.stdout.strip()
        return f"{described}+{files}" if described.endswith("-dirty") else described
    return files


def _code_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for package in ("camstream", "training"):
        for path in sorted((root / package).rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(path.read_bytes())
    return f"files-{digest.hexdigest()[:DIGEST_CHARS]}"


def _relative_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _hash_tree(folder: Path) -> dict[str, str]:
    """relpath -> sha256 of every file under ``folder`` but the manifest; links refused."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            raise RegistryError(f"{path} is a link: a version holds its own files")
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and rel != MANIFEST_FILE:
            files[rel] = _sha256(path)
    return files


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise RegistryError(f"{path} is missing") from exc
    except ValueError as exc:
        raise RegistryError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise RegistryError(f"{path} must hold a JSON object")
    return value


def _read_lines(path: Path) -> list[dict[str, Any]]:
    """A JSON-lines file's objects; a last line cut short by a crash is skipped."""
    if not path.is_file():
        return []
    text = path.read_text()
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError as exc:
            if number == len(lines):  # no newline after it: a torn append
                continue
            raise RegistryError(f"{path}:{number} is not valid JSON ({exc})") from exc
    return rows


def _append_line(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(row, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with tmp.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
