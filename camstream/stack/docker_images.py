"""Images for docker-compose's ``cpu`` profile, built on a machine that reaches no
container registry (``docker/build-local.sh``, i.e. ``python -m
camstream.stack.docker_images build``).

1. ``camstream-base:bookworm``: Debian bookworm ``debootstrap --variant=minbase`` from
   the Debian mirror this machine's apt uses, then ``docker import`` (skipped when the
   image exists). It stands in for the public ``debian:bookworm-slim`` and
   ``python:3.11-slim-bookworm`` (Debian's python3 is 3.11).
2. ``camstream-app:local`` and ``camstream-triton-cpu:local``: docker/app.Dockerfile and
   docker/triton-cpu.Dockerfile with ``BASE_IMAGE`` set to that base. pip and uv run
   inside those builds; behind a TLS-intercepting proxy they need its CA, which is
   served to the build on loopback (``--network host``, ``BUILD_CA_URL``) and fetched,
   used and deleted within each RUN step (docker/with-build-ca.sh), so it is in no
   layer and in no file of the repository.
3. ``camstream-kafka:local``: a JRE from Debian plus the broker jars that
   camstream.stack.kafka resolves from Maven Central for the local stack (the same
   cached folder), with the official image's interface (KAFKA_* variables,
   ``/opt/kafka/bin/kafka-broker-api-versions.sh``).
4. ``camstream-redis:local`` and ``camstream-prometheus:local``: Debian's packages, with
   the official images' interfaces.

docker/compose.local.yml points compose's kafka, redis and prometheus at these images;
docker/compose-local.sh runs ``docker compose`` with it and the ``cpu`` profile.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from camstream.errors import ServiceError
from camstream.settings import REPO_ROOT, load_settings
from camstream.stack.kafka import (
    LOG4J2_PROPERTIES,
    MAVEN_DEPENDENCY_PLUGIN,
    ensure_kafka_libs,
    kafka_version,
)
from camstream.stack.process import free_port

DOCKER_DIR = REPO_ROOT / "docker"
LOCAL_DIR = DOCKER_DIR / "local"
BASE_TAG = "camstream-base:bookworm"
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
# A fixed port keeps BUILD_CA_URL, and so the layer cache, the same from build to build.
DEFAULT_CA_PORT = 38471
CUSTOM_CA_DIR = Path("/usr/local/share/ca-certificates")
SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

# What debian:bookworm-slim sets up for apt in a container: no recommends, no service
# starts from maintainer scripts, no docs or man pages.
BASE_FILES = {
    "usr/sbin/policy-rc.d": "#!/bin/sh\n# no services start inside an image build\nexit 101\n",
    "etc/apt/apt.conf.d/90camstream-image": (
        'APT::Install-Recommends "false";\n'
        'APT::Install-Suggests "false";\n'
        'Acquire::Languages "none";\n'
        'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb '
        '/var/cache/apt/*.bin || true"; };\n'
    ),
    "etc/dpkg/dpkg.cfg.d/90camstream-slim": (
        "path-exclude /usr/share/doc/*\n"
        "path-include /usr/share/doc/*/copyright\n"
        "path-exclude /usr/share/man/*\n"
        "path-exclude /usr/share/info/*\n"
        "path-exclude /usr/share/groff/*\n"
        "path-exclude /usr/share/lintian/*\n"
        "path-exclude /usr/share/locale/*\n"
    ),
}
BASE_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["bash"]',
)


@dataclass(frozen=True)
class Image:
    """One image this module builds: its tag, Dockerfile, and how its context is made."""

    name: str
    tag: str
    dockerfile: Path
    context: str  # "repo", "local" (docker/local) or "kafka" (assembled in the cache)
    needs_ca: bool  # pip / uv run in the build


IMAGES: tuple[Image, ...] = (
    Image("kafka", "camstream-kafka:local", LOCAL_DIR / "kafka.Dockerfile", "kafka", False),
    Image("redis", "camstream-redis:local", LOCAL_DIR / "redis.Dockerfile", "local", False),
    Image(
        "prometheus",
        "camstream-prometheus:local",
        LOCAL_DIR / "prometheus.Dockerfile",
        "local",
        False,
    ),
    Image("app", "camstream-app:local", DOCKER_DIR / "app.Dockerfile", "repo", True),
    Image(
        "triton-cpu",
        "camstream-triton-cpu:local",
        DOCKER_DIR / "triton-cpu.Dockerfile",
        "repo",
        True,
    ),
)
IMAGE_NAMES = tuple(image.name for image in IMAGES)


@dataclass
class BuildResult:
    name: str
    tag: str
    seconds: float
    size_bytes: int
    skipped: bool = False


# Docker ---------------------------------------------------------------------------------


def docker(
    *args: str, check: bool = True, capture: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run the docker CLI (DOCKER_HOST as set by docker/engine.sh env)."""
    if shutil.which("docker") is None:
        raise ServiceError("the docker CLI is not installed: run docker/install-engine.sh")
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}  # no buildx here: the classic builder
    proc = subprocess.run(
        ["docker", *args], capture_output=capture, text=True, env=env, check=False
    )
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout or "")[-3000:] if capture else ""
        raise ServiceError(
            f"`docker {' '.join(args[:3])} ...` failed ({proc.returncode}): {detail}"
        )
    return proc


def image_exists(tag: str) -> bool:
    return docker("image", "inspect", tag, check=False).returncode == 0


def image_size(tag: str) -> int:
    out = docker("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip()
    return int(out or 0)


# The Debian base ------------------------------------------------------------------------


@dataclass(frozen=True)
class Mirrors:
    main: str
    security: str


def debian_mirrors(apt_dir: Path = Path("/etc/apt")) -> Mirrors:
    """The Debian mirrors this machine's apt uses for bookworm and bookworm-security
    (one-line ``sources.list`` entries and deb822 ``.sources`` files), else
    deb.debian.org."""
    entries: list[tuple[str, list[str]]] = []  # (uri, suites)
    files = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*"))]
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line:
                        continue
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
                if "deb" not in fields.get("types", "deb").split():
                    continue
                entries += [
                    (uri, fields.get("suites", "").split())
                    for uri in fields.get("uris", "").split()
                ]
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb":
                    entries.append((words[1], [words[2]]))
    main = next((u for u, s in entries if SUITE in s and "debian" in u), DEFAULT_MIRROR)
    security = next((u for u, s in entries if f"{SUITE}-security" in s), DEFAULT_SECURITY_MIRROR)
    return Mirrors(main.rstrip("/"), security.rstrip("/"))


def _unmount_below(root: Path) -> None:
    """debootstrap mounts /proc and /sys in the target; a failed run may leave them."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines() if line]
    for point in sorted((m for m in mounts if Path(m).is_relative_to(root)), reverse=True):
        subprocess.run(["umount", "-l", point], check=False)


def ensure_base(workdir: Path, tag: str = BASE_TAG, rebuild: bool = False) -> BuildResult:
    """``tag``: a Debian bookworm minbase imported into Docker, made once."""
    if image_exists(tag) and not rebuild:
        return BuildResult("base", tag, 0.0, image_size(tag), skipped=True)
    if shutil.which("debootstrap") is None:
        raise ServiceError("debootstrap is not installed: run docker/install-engine.sh")
    mirrors = debian_mirrors()
    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    rootfs = Path(tempfile.mkdtemp(prefix="rootfs-bookworm-", dir=workdir))
    log_path = workdir / "debootstrap.log"
    print(f"build-local: debootstrap {SUITE} from {mirrors.main} (log {log_path})", flush=True)
    try:
        with log_path.open("w") as log_file:
            proc = subprocess.run(
                ["debootstrap", "--variant=minbase", SUITE, str(rootfs), mirrors.main],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                check=False,
            )
        if proc.returncode != 0:
            raise ServiceError(
                f"debootstrap failed ({proc.returncode}); see {log_path}:\n"
                + "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
            )
        (rootfs / "etc/apt/sources.list").write_text(
            f"deb {mirrors.main} {SUITE} main\n"
            f"deb {mirrors.main} {SUITE}-updates main\n"
            f"deb {mirrors.security} {SUITE}-security main\n"
        )
        for relative, content in BASE_FILES.items():
            target = rootfs / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
            if relative.startswith("usr/sbin/"):
                target.chmod(0o755)
        # What debootstrap left that an image does not need.
        for pattern in (
            "var/lib/apt/lists/*",
            "var/cache/apt/*.bin",
            "var/cache/apt/archives/*.deb",
            "var/log/*.log",
            "usr/share/doc/*",
            "usr/share/man/*",
            "usr/share/info/*",
            "usr/share/locale/*",
        ):
            for path in rootfs.glob(pattern):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                elif path.name != "lock":
                    path.unlink()
        tar = subprocess.Popen(
            ["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE
        )
        assert tar.stdout is not None
        changes = [arg for change in BASE_CHANGES for arg in ("--change", change)]
        env = {**os.environ, "DOCKER_BUILDKIT": "0"}
        message = f"debootstrap --variant=minbase {SUITE} {mirrors.main}"
        imported = subprocess.run(
            ["docker", "import", *changes, "--message", message, "-", tag],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        tar.stdout.close()
        if tar.wait() != 0 or imported.returncode != 0:
            raise ServiceError(f"docker import of the rootfs failed: {imported.stderr[-2000:]}")
    finally:
        _unmount_below(rootfs)
        shutil.rmtree(rootfs, ignore_errors=True)
    return BuildResult("base", tag, time.monotonic() - started, image_size(tag))


# Build contexts ---------------------------------------------------------------------------


def ensure_kafka_tools(cache_dir: Path) -> Path:
    """kafka-tools (BrokerApiVersionsCommand, the healthcheck's tool), which the broker's
    own dependency tree does not include; its dependencies are in the broker's libs."""
    version = kafka_version()
    tools = cache_dir / f"kafka-{version}" / "tools"
    jar = tools / f"kafka-tools-{version}.jar"
    if jar.is_file():
        return tools
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ServiceError("Maven (mvn) is needed once for kafka-tools: apt-get install maven")
    staging = Path(tempfile.mkdtemp(prefix="tools.tmp-", dir=tools.parent))
    try:
        proc = subprocess.run(
            [
                mvn,
                "-q",
                "-B",
                f"{MAVEN_DEPENDENCY_PLUGIN}:copy",
                f"-Dartifact=org.apache.kafka:kafka-tools:{version}",
                f"-DoutputDirectory={staging}",
            ],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if proc.returncode != 0 or not (staging / jar.name).is_file():
            raise ServiceError(
                f"resolving kafka-tools {version} from Maven Central failed:\n"
                f"{(proc.stdout + proc.stderr)[-2000:]}"
            )
        staging.rename(tools)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return tools


def _copy_tree(source: Path, target: Path) -> None:
    """Hard links where the file system allows (the jars are large), else copies."""
    try:
        shutil.copytree(source, target, copy_function=os.link)
    except OSError:
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)


@contextlib.contextmanager
def kafka_context(cache_dir: Path, workdir: Path) -> Iterator[Path]:
    """A build context with the broker's jars, kafka-tools, the log4j2 configuration
    camstream's local broker uses and docker/local's scripts; removed afterwards."""
    libs = ensure_kafka_libs(cache_dir)
    tools = ensure_kafka_tools(cache_dir)
    workdir.mkdir(parents=True, exist_ok=True)
    context = Path(tempfile.mkdtemp(prefix="context-kafka-", dir=workdir))
    try:
        _copy_tree(libs, context / "libs")
        _copy_tree(tools, context / "tools")
        (context / "log4j2.properties").write_text(LOG4J2_PROPERTIES)
        for script in LOCAL_DIR.glob("kafka-*.sh"):
            shutil.copy2(script, context / script.name)
        yield context
    finally:
        shutil.rmtree(context, ignore_errors=True)


# The build-time CA ----------------------------------------------------------------------


def build_ca_bundle(choice: str) -> bytes | None:
    """The CA bundle builds need to reach PyPI: ``auto`` is this machine's system bundle
    when a local CA (``/usr/local/share/ca-certificates``) is installed, else none;
    ``none``; or a PEM file."""
    if choice == "none":
        return None
    if choice != "auto":
        return Path(choice).read_bytes()
    custom = sorted(CUSTOM_CA_DIR.glob("**/*.crt")) if CUSTOM_CA_DIR.is_dir() else []
    if not custom:
        return None
    # The system bundle holds the public roots and, after update-ca-certificates, the
    # local ones; append those too in case it was not run.
    parts = [SYSTEM_CA_BUNDLE.read_bytes()] if SYSTEM_CA_BUNDLE.is_file() else []
    parts += [path.read_bytes() for path in custom]
    return b"\n".join(parts)


@contextlib.contextmanager
def serve_ca(bundle: bytes | None, port: int) -> Iterator[str | None]:
    """Serve ``bundle`` at http://127.0.0.1:PORT/ca.pem while builds run; yields the URL
    (None without a bundle). A busy port is replaced by a free one (the URL is a build
    arg, so a new port only costs the layer cache of steps that use it)."""
    if bundle is None:
        yield None
        return
    body: bytes = bundle

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/ca.pem":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/x-pem-file")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    except OSError:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, name="build-ca", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/ca.pem"
    finally:
        server.shutdown()
        server.server_close()


# Building -------------------------------------------------------------------------------


def build_image(
    image: Image,
    context: Path,
    *,
    base: str,
    ca_url: str | None,
    no_cache: bool,
    log_dir: Path,
) -> BuildResult:
    args = ["build", "--network", "host", "-f", str(image.dockerfile), "-t", image.tag]
    args += ["--build-arg", f"BASE_IMAGE={base}"]
    if image.needs_ca and ca_url:
        args += ["--build-arg", f"BUILD_CA_URL={ca_url}"]
    if no_cache:
        args.append("--no-cache")
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{image.name}.log"
    print(f"build-local: {image.name} -> {image.tag} (log {log_path})", flush=True)
    started = time.monotonic()
    with log_path.open("w") as log_file:
        proc = subprocess.run(
            ["docker", *args, str(context)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "DOCKER_BUILDKIT": "0"},
            check=False,
        )
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
        raise ServiceError(f"building {image.tag} failed ({proc.returncode}); {log_path}:\n{tail}")
    return BuildResult(image.name, image.tag, seconds, image_size(image.tag))


def build(
    names: Sequence[str],
    *,
    cache_dir: Path,
    base: str | None,
    rebuild_base: bool,
    no_cache: bool,
    build_ca: str,
    ca_port: int,
) -> list[BuildResult]:
    workdir = cache_dir / "docker" / "build"
    results: list[BuildResult] = []
    if base is None:
        results.append(ensure_base(workdir, rebuild=rebuild_base))
        base = BASE_TAG
    elif not image_exists(base):
        raise ServiceError(f"base image {base} is not in this engine (docker pull it first)")
    wanted = [image for image in IMAGES if image.name in names]
    with serve_ca(build_ca_bundle(build_ca), ca_port) as ca_url:
        for image in wanted:
            with contextlib.ExitStack() as stack:
                if image.context == "kafka":
                    context = stack.enter_context(kafka_context(cache_dir, workdir))
                else:
                    context = REPO_ROOT if image.context == "repo" else LOCAL_DIR
                result = build_image(
                    image,
                    context,
                    base=base,
                    ca_url=ca_url,
                    no_cache=no_cache,
                    log_dir=workdir / "logs",
                )
                results.append(result)
    return results


def _report(results: Sequence[BuildResult], total_s: float) -> None:
    print(f"{'image':<12} {'tag':<30} {'seconds':>8} {'size MB':>8}")
    for r in results:
        seconds = "cached" if r.skipped else f"{r.seconds:.1f}"
        print(f"{r.name:<12} {r.tag:<30} {seconds:>8} {r.size_bytes / 1e6:>8.0f}")
    print(f"total {total_s:.1f} s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="docker/build-local.sh",
        description="Build the images of docker-compose's cpu profile without a registry.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the base (once) and the images")
    b.add_argument(
        "--only",
        default=",".join(IMAGE_NAMES),
        help=f"comma-separated subset of {','.join(IMAGE_NAMES)} (default: all)",
    )
    b.add_argument(
        "--base",
        default=None,
        help=f"an existing base image instead of {BASE_TAG} (e.g. debian:bookworm-slim "
        "where a registry is reachable)",
    )
    b.add_argument("--rebuild-base", action="store_true", help=f"debootstrap {BASE_TAG} again")
    b.add_argument("--no-cache", action="store_true", help="build without the layer cache")
    b.add_argument(
        "--build-ca",
        default="auto",
        help="CA bundle for pip/uv inside builds: auto (the system bundle when "
        f"{CUSTOM_CA_DIR} holds a CA), none, or a PEM file",
    )
    b.add_argument("--ca-port", type=int, default=DEFAULT_CA_PORT)
    sub.add_parser("list", help="the images this builds, and their sizes if built")
    args = parser.parse_args(argv)

    if args.command == "list":
        for image in (Image("base", BASE_TAG, Path(), "", False), *IMAGES):
            size = f"{image_size(image.tag) / 1e6:.0f} MB" if image_exists(image.tag) else "-"
            print(f"{image.name:<12} {image.tag:<30} {size}")
        return 0

    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(IMAGE_NAMES))
    if unknown:
        parser.error(f"unknown images {unknown}; choose from {','.join(IMAGE_NAMES)}")
    started = time.monotonic()
    try:
        results = build(
            names,
            cache_dir=load_settings().cache_dir,
            base=args.base,
            rebuild_base=args.rebuild_base,
            no_cache=args.no_cache,
            build_ca=args.build_ca,
            ca_port=args.ca_port,
        )
    except ServiceError as exc:
        print(f"build-local: {exc}", file=sys.stderr)
        return 1
    _report(results, time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
