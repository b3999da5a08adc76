"""Per-project sandbox images: the sandbox image plus a project's own test dependencies.

``build_project_image(client, DIR)`` reads what the project declares for its tests (a given
requirements file; else ``[dependency-groups]`` test/tests/testing, else
``[project.optional-dependencies]`` test/tests/testing, else ``setup.cfg``'s ``extras_require``,
else a test requirements file such as ``tests/requirements.txt`` or ``requirements-test.txt``; plus
the runtime ``dependencies`` / ``install_requires`` / ``requirements.txt``), downloads the wheels on
the host with pip for the base image's Python and platform, and builds ``FROM`` the sandbox image
with the docker SDK: the wheels are installed in a first stage, with no network, and only the
resulting site-packages directory is copied into the final stage, which keeps the base's user,
entry point and everything else. The project itself is never installed: its import roots (``src/``
for a src layout, else the root) go into ``RSI_PYTHONPATH`` for the supervisor to put on the path of
the processes that run the candidate (never its own: it runs ``-I``),
and its metadata (name, version) is written as a code-free ``.dist-info`` so that
``importlib.metadata`` finds it. The tag is ``rsi-project-NAME:HASH`` where HASH covers the
dependency specification, the base image's id and this builder's own files, so an unchanged
project reuses its image at once (no download, no build).
"""

from __future__ import annotations

import configparser
import email.parser
import hashlib
import io
import json
import os
import re
import stat
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import docker
import structlog
from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement

log = structlog.get_logger(__name__)

BASE_TAG = "rsi-sandbox:latest"
SPEC_LABEL = "org.rsi-lab.project-spec"
PROJECT_LABEL = "org.rsi-lab.project"
DEPS_STAGE_LABEL = "org.rsi-lab.project-deps-stage"
FORMAT = "rsi-project-image/1"
TEST_NAMES = ("test", "tests", "testing")
TEST_REQUIREMENT_FILES = (
    "requirements-test*.txt", "requirements_test*.txt", "requirements-tests*.txt", "test-requirements*.txt",
    "test_requirements*.txt", "requirements/test*.txt", "tests/requirements*.txt", "test/requirements*.txt",
)
WORKSPACE = "/workspace"

PROBE = r"""
import json, platform, sys, sysconfig
print(json.dumps({"version": "%d.%d" % sys.version_info[:2], "impl": sys.implementation.name,
                  "cache_tag": sys.implementation.cache_tag, "machine": platform.machine(),
                  "libc": platform.libc_ver(), "site": sysconfig.get_paths()["purelib"]}))
"""

DOCKERFILE = """\
# Derived by orchestrator/sandbox/project_image.py: the sandbox image + one project's test dependencies.
ARG BASE_IMAGE
FROM ${BASE_IMAGE} AS deps
ARG SPEC_DIGEST
LABEL org.rsi-lab.project-deps-stage=${SPEC_DIGEST}
USER 0:0
COPY rsi-project/ /tmp/rsi-project/
RUN ["python3", "-I", "/tmp/rsi-project/install.py", "/tmp/rsi-project"]

FROM ${BASE_IMAGE}
ARG SITE_DIR
COPY --from=deps ${SITE_DIR}/ ${SITE_DIR}/
"""

# Runs inside the first build stage (any Python >= 3.8, stdlib only, network none).
INSTALL_PY = r'''
import json, os, shutil, subprocess, sys, glob
ctx = sys.argv[1]
spec = json.load(open(os.path.join(ctx, "spec.json")))
site = spec["site"]
wheels = os.path.join(ctx, "wheels")
pip = sorted(glob.glob(os.path.join(wheels, "pip-*.whl")))
pip_cmd = [sys.executable, os.path.join(pip[-1], "pip")] if pip else [sys.executable, "-m", "pip"]
env = dict(os.environ, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_CACHE_DIR="1",
           PIP_BREAK_SYSTEM_PACKAGES="1", PYTHONDONTWRITEBYTECODE="1")
if spec["requirements"]:
    r = subprocess.run(pip_cmd + ["install", "--no-index", "--find-links", wheels, "--no-warn-script-location",
                                  "--only-binary=:all:", "-r", os.path.join(ctx, "requirements.txt")],
                       env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    print(r.stdout)
    if r.returncode:
        last = [l for l in r.stdout.splitlines() if l.strip().startswith("ERROR")] or r.stdout.splitlines()[-1:]
        sys.exit("rsi-install: pip could not install the dependencies offline: " + " | ".join(last)[:600])
# The project is tested from /workspace, never from an installed copy (a dependency may pull it in).
name = spec["name"].lower().replace("_", "-").replace(".", "-")
for d in glob.glob(os.path.join(site, "*.dist-info")):
    dist = os.path.basename(d)[: -len(".dist-info")].rsplit("-", 1)[0]
    if dist.lower().replace("_", "-").replace(".", "-") == name:
        subprocess.run(pip_cmd + ["uninstall", "-y", "-q", spec["name"]], env=env, check=True)
        print("rsi-install: removed the installed copy of", spec["name"])
        break
os.makedirs(site, exist_ok=True)
info = os.path.join(site, "%s-%s.dist-info" % (spec["name"].replace("-", "_"), spec["version"]))
os.makedirs(info, exist_ok=True)
shutil.copyfile(os.path.join(ctx, "METADATA"), os.path.join(info, "METADATA"))
with open(os.path.join(info, "INSTALLER"), "w") as fh:
    fh.write("rsi-lab (metadata only; the code is the workspace)\n")
open(os.path.join(info, "RECORD"), "w").close()
'''


class ProjectImageError(RuntimeError):
    """A derived image cannot be built; the message is one line saying why and what to do."""


@dataclass
class ProjectSpec:
    root: Path
    name: str
    version: str
    requirements: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # where the requirements came from
    import_roots: list[str] = field(default_factory=list)  # relative to the project root
    metadata: str = ""

    @property
    def needs_image(self) -> bool:
        """True when the plain sandbox image cannot run this project's tests as they are."""
        return bool(self.requirements) or self.import_roots != ["."]

    @property
    def pythonpath(self) -> str:
        return ":".join(WORKSPACE if r == "." else f"{WORKSPACE}/{r}" for r in self.import_roots)

    def digest(self, base_id: str) -> str:
        h = hashlib.sha256()
        h.update(json.dumps({"format": FORMAT, "base": base_id, "name": self.name, "version": self.version,
                             "requirements": self.requirements, "roots": self.import_roots,
                             "metadata": self.metadata}, sort_keys=True).encode())
        h.update(DOCKERFILE.encode() + INSTALL_PY.encode())
        return h.hexdigest()


_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _req_name(req: str) -> str:
    m = _NAME.match(req)
    return _norm(m.group(1)) if m else ""


def _read_requirements(path: Path, root: Path, seen: set | None = None) -> list[str]:
    """Requirement lines of a pip requirements file, following ``-r``; options, editables and
    local paths are left out (the project itself comes from the workspace)."""
    seen = seen if seen is not None else set()
    path = path.resolve()
    if path in seen:
        return []
    seen.add(path)
    out = []
    for raw in _read_inside(path, root).splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("-r ", "--requirement ", "-r", "--requirement=")):
            target = re.sub(r"^(-r|--requirement)[ =]?", "", line).strip()
            inc = (path.parent / target)
            if not _is_inside(inc, root) or not inc.is_file():
                raise ProjectImageError(f"{path.name} includes a file that is not a regular file inside the "
                                        "project (only files of the project are read): refused")
            out += _read_requirements(inc, root, seen)
        elif line.startswith(("-", ".", "/")):
            continue
        else:
            out.append(line)
    return out


MAX_REQUIREMENTS_BYTES = 1 << 20


def _is_inside(path: Path, root: Path) -> bool:
    """``path`` resolves (links followed) to a place inside ``root``."""
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except (ValueError, OSError, RuntimeError):
        return False


def _read_inside(path: Path, root: Path) -> str:
    """A requirements file's text: a regular file inside the project, of bounded size; never a host file
    reached through a link, ``..`` or an absolute path (``-r /proc/self/environ``), never a FIFO."""
    if not _is_inside(path, root):
        raise ProjectImageError(f"{path.name} is not inside the project: refused")
    try:
        fd = os.open(path.resolve(), os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise ProjectImageError(f"cannot read {path.name} ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ProjectImageError(f"{path.name} is not a regular file: refused")
        data = fh.read(MAX_REQUIREMENTS_BYTES + 1)
    if len(data) > MAX_REQUIREMENTS_BYTES:
        raise ProjectImageError(f"{path.name} is larger than {MAX_REQUIREMENTS_BYTES} bytes: refused")
    return data.decode("utf-8", "replace")


def _expand_extras(reqs: list[str], extras: dict, name: str, depth: int = 0) -> list[str]:
    """Inline self-references such as ``attrs[tests-mypy]`` inside attrs's own extras."""
    out = []
    for req in reqs:
        m = re.match(r"^\s*([A-Za-z0-9._-]+)\s*\[([^\]]+)\]\s*(;.*)?$", req)
        if m and _norm(m.group(1)) == _norm(name) and depth < 10:
            for extra in (e.strip() for e in m.group(2).split(",")):
                if extra not in extras:
                    raise ProjectImageError(f"{name} refers to its own extra [{extra}], which it does not define")
                out += _expand_extras(list(extras[extra]), extras, name, depth + 1)
        else:
            out.append(req)
    return out


def _groups(groups: dict, key: str, depth: int = 0) -> list[str]:
    out = []
    for item in groups.get(key, []):
        if isinstance(item, dict) and "include-group" in item and depth < 10:
            out += _groups(groups, item["include-group"], depth + 1)
        elif isinstance(item, str):
            out.append(item)
    return out


def _pkg_info(root: Path) -> dict:
    path = root / "PKG-INFO"
    if not path.is_file():
        return {}
    head = path.read_text(errors="replace").split("\n\n", 1)[0]
    fields = {}
    for line in head.splitlines():
        key, sep, value = line.partition(":")
        if sep and key in ("Name", "Version") and key not in fields:
            fields[key] = value.strip()
    return fields


def _import_roots(root: Path, pyproject: dict, cfg: configparser.ConfigParser) -> list[str]:
    roots = []
    find = pyproject.get("tool", {}).get("setuptools", {}).get("packages", {})
    if isinstance(find, dict):
        roots += [w for w in find.get("find", {}).get("where", []) if w not in (".", "")]
    pkg_dir = pyproject.get("tool", {}).get("setuptools", {}).get("package-dir", {})
    if isinstance(pkg_dir, dict) and pkg_dir.get(""):
        roots.append(pkg_dir[""])
    if cfg.has_option("options", "package_dir"):
        for line in cfg.get("options", "package_dir").splitlines():
            key, sep, value = line.partition("=")
            if sep and not key.strip() and value.strip():
                roots.append(value.strip())
    src = root / "src"
    if src.is_dir() and any(p.suffix == ".py" or (p.is_dir() and not p.name.startswith(".")) for p in src.iterdir()):
        roots.append("src")
    clean = []
    for r in roots:
        r = r.strip().strip("/")
        if r and ".." not in Path(r).parts and not Path(r).is_absolute() and (root / r).is_dir() and r not in clean:
            clean.append(r)
    return clean or ["."]  # a flat layout: the project root itself (the child runs with -P, no cwd)


def check_requirement(req: str) -> None:
    """A dependency must be a name (with a version specifier, extras and markers) that the index serves
    as a wheel, or a direct reference to a wheel. Anything else would be built before it could even be
    inspected, and pip builds by running the package's own code (``setup.py``, a build backend) where
    it runs: a path, a source archive, a directory or a repository is refused here, before pip is
    called, in one line that names it. Nothing of a project or its dependencies runs on the host."""
    try:
        parsed = Requirement(req)
    except InvalidRequirement:
        raise ProjectImageError(f"dependency {req[:80]!r} is not a package name with a version (a path or URL to "
                                "source would be built, running its code, on the host): refused") from None
    if parsed.url and not urlsplit(parsed.url).path.endswith(".whl"):
        raise ProjectImageError(f"dependency {parsed.name} @ {parsed.url} is source (an sdist, a directory or a "
                                "repository): building it would run its code on the host; refused (name a wheel "
                                "or a released version instead)")


def project_spec(root: Path | str, requirements_file: Path | str | None = None) -> ProjectSpec:
    """What a project declares for its tests, read from its files (nothing is executed)."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise ProjectImageError(f"project {root} is not a directory")
    pyproject = {}
    if (root / "pyproject.toml").is_file():
        try:
            pyproject = tomllib.loads((root / "pyproject.toml").read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ProjectImageError(f"pyproject.toml does not parse: {exc}") from exc
    cfg = configparser.ConfigParser(interpolation=None)
    if (root / "setup.cfg").is_file():
        try:
            cfg.read(root / "setup.cfg")
        except configparser.Error:
            cfg = configparser.ConfigParser(interpolation=None)
    project = pyproject.get("project", {})
    pkg = _pkg_info(root)
    name = project.get("name") or pkg.get("Name") or cfg.get("metadata", "name", fallback="") or root.name
    version = pkg.get("Version") or (project.get("version") if isinstance(project.get("version"), str) else "") \
        or cfg.get("metadata", "version", fallback="")
    if not re.fullmatch(r"[A-Za-z0-9.+!_-]+", version or ""):
        version = "0"
    spec = ProjectSpec(root=root, name=name, version=version)

    def cfg_list(section: str, key: str) -> list[str]:
        return [line.strip() for line in cfg.get(section, key, fallback="").splitlines() if line.strip()]

    reqs: list[str] = []
    if requirements_file is not None:
        path = Path(requirements_file)
        path = path if path.is_absolute() else Path.cwd() / path
        if not path.is_file():
            raise ProjectImageError(f"requirements file {requirements_file} does not exist")
        reqs += _read_requirements(path, path.parent)
        spec.sources.append(str(requirements_file))
    else:
        runtime = list(project.get("dependencies", [])) if "dependencies" in project else cfg_list(
            "options", "install_requires")
        if runtime:
            spec.sources.append("pyproject.toml [project] dependencies" if project.get("dependencies")
                                else "setup.cfg install_requires")
        elif (root / "requirements.txt").is_file():
            runtime = _read_requirements(root / "requirements.txt", root)
            spec.sources.append("requirements.txt")
        reqs += runtime
        extras = project.get("optional-dependencies", {})
        groups = pyproject.get("dependency-groups", {})
        test: list[str] = []
        for key in TEST_NAMES:
            if key in groups:
                test, source = _groups(groups, key), f"pyproject.toml [dependency-groups] {key}"
                break
        else:
            for key in TEST_NAMES:
                if key in extras:
                    test, source = list(extras[key]), f"pyproject.toml [project.optional-dependencies] {key}"
                    break
            else:
                for key in TEST_NAMES:
                    if cfg.has_option("options.extras_require", key):
                        test, source = cfg_list("options.extras_require", key), f"setup.cfg extras_require {key}"
                        break
                else:
                    source = ""
                    for pattern in TEST_REQUIREMENT_FILES:
                        hits = sorted(root.glob(pattern))
                        if hits:
                            for hit in hits:
                                test += _read_requirements(hit, root)
                            source = ", ".join(str(h.relative_to(root)) for h in hits)
                            break
        if source:
            spec.sources.append(source)
        reqs += _expand_extras(test, extras, name)
    own = _norm(name)
    seen, clean = set(), []
    for req in reqs:
        req = req.strip()
        if req and _req_name(req) != own and req not in seen:
            seen.add(req)
            clean.append(req)
    for req in clean:
        check_requirement(req)
    spec.requirements = clean
    spec.import_roots = _import_roots(root, pyproject, cfg)
    spec.metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    return spec


def probe_base(client, base: str) -> dict:
    """The base image's Python: version, implementation, machine, libc, default site directory."""
    try:
        out = client.containers.run(base, entrypoint=["python3", "-I", "-c", PROBE], user="0:0",
                                    network_mode="none", remove=True, stdout=True, stderr=True)
        return json.loads(out.decode().strip().splitlines()[-1])
    except (docker.errors.ContainerError, ValueError, IndexError) as exc:
        raise ProjectImageError(f"cannot read the Python of {base}: {str(exc)[:200]}") from exc


def _platform_args(info: dict) -> list[str]:
    if info["impl"] != "cpython":
        raise ProjectImageError(f"the base image runs {info['impl']}; derived images need CPython")
    major, minor = info["version"].split(".")
    machine = info["machine"]
    args = ["--only-binary=:all:", "--python-version", info["version"], "--implementation", "cp",
            "--abi", f"cp{major}{minor}", "--abi", "abi3", "--abi", "none"]
    libc, libc_version = info.get("libc") or ["", ""]
    if libc == "glibc" and libc_version:
        top = int(libc_version.split(".")[1])
        args += [a for g in range(top, 16, -1) for a in ("--platform", f"manylinux_2_{g}_{machine}")]
        args += ["--platform", f"manylinux2014_{machine}"]
    else:
        raise ProjectImageError(f"the base image's libc is {libc or 'unknown'}; derived images need glibc")
    return args


def _pip_error(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("ERROR: No matching distribution found for"):
            return line.removeprefix("ERROR: ")
        if line.startswith("ERROR: Could not find a version"):
            return line.removeprefix("ERROR: ")
    errors = [line for line in lines if line.startswith("ERROR")]
    return (errors[-1] if errors else (lines[-1] if lines else "pip failed")).removeprefix("ERROR: ")[:300]


NOT_FOUND = ("Could not find a version", "No matching distribution")


MAX_RESOLVE_ROUNDS = 40


def _target_environment(info: dict) -> dict:
    """Marker values of the image's Python (what its pip will evaluate), for a wheel's Requires-Dist."""
    env = dict(default_environment())
    env.update({"python_version": info["version"], "python_full_version": info["version"] + ".0",
                "implementation_version": info["version"] + ".0", "platform_machine": info["machine"],
                "implementation_name": "cpython", "platform_python_implementation": "CPython",
                "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix"})
    return env


def requires_dist(wheel: Path) -> list[str]:
    """A wheel's ``Requires-Dist`` lines, read from its METADATA (a zip member; nothing runs)."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = [n for n in zf.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
            if len(names) != 1:
                raise ProjectImageError(f"{wheel.name} has no single METADATA: refused")
            with zf.open(names[0]) as fh:
                data = fh.read(4 << 20)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ProjectImageError(f"{wheel.name} is not a readable wheel ({exc}): refused") from None
    return list(email.parser.BytesParser().parsebytes(data, headersonly=True).get_all("Requires-Dist") or [])


def download_wheelhouse(spec: ProjectSpec, info: dict, dest: Path, python: str = sys.executable) -> list[Path]:
    """Wheels of the requirements, of their dependencies, and of pip, for the base's Python, fetched on
    the host one layer at a time with ``--no-deps --only-binary=:all:``. pip is never left to resolve a
    dependency itself: a wheel's own ``Requires-Dist`` may be a direct reference to source, which pip
    would prepare (run) to learn its metadata; each layer's requirements are read from the wheels'
    METADATA and checked by ``check_requirement`` before pip sees them. So nothing is built, and nothing
    of a project or its dependencies runs, here. The image's offline ``pip install`` resolves among the
    wheels (several versions of one name may be fetched when dependents ask for different ones)."""
    dest.mkdir(parents=True, exist_ok=True)
    env = _target_environment(info)
    extras: dict[str, set[str]] = {}
    asked: set[str] = set()
    inspected: set[str] = set()
    layer = list(spec.requirements) + ["pip"]
    for depth in range(MAX_RESOLVE_ROUNDS):
        todo = []
        for req in layer:
            check_requirement(req)
            parsed = Requirement(req)
            if parsed.marker is not None and not parsed.marker.evaluate(env | {"extra": ""}):
                continue
            extras.setdefault(_norm(parsed.name), set()).update(parsed.extras)
            key = str(parsed)
            if key not in asked:
                asked.add(key)
                todo.append(req)
        if not todo:
            return sorted(dest.glob("*.whl"))
        reqs = dest / f"requirements-{depth}.in"
        reqs.write_text("\n".join(todo) + "\n")
        r = subprocess.run([python, "-m", "pip", "download", "--disable-pip-version-check", "-q", "--no-deps",
                            "-d", str(dest), *_platform_args(info), "-r", str(reqs)], capture_output=True, text=True)
        sources = [p for p in dest.iterdir() if p.is_file() and p.suffix not in (".whl", ".in")]
        for p in sources:
            p.unlink()
        if r.returncode:
            error = _pip_error(r.stderr + r.stdout)
            if any(error.startswith(n) for n in NOT_FOUND):
                raise ProjectImageError(f"a dependency cannot be had as a wheel for CPython {info['version']} on "
                                        f"{info['machine']} (source is never built on the host): {error}")
            raise ProjectImageError(f"pip could not download the dependencies: {error}")
        if sources:
            raise ProjectImageError(f"{', '.join(p.name for p in sources)} come only as source, which is never "
                                    "built on the host: refused")
        layer = []
        for wheel in sorted(dest.glob("*.whl")):
            if wheel.name in inspected:
                continue
            inspected.add(wheel.name)
            wanted = extras.get(_norm(wheel.name.split("-")[0]), set())
            for line in requires_dist(wheel):
                try:
                    dep = Requirement(line)
                except InvalidRequirement:
                    raise ProjectImageError(f"{wheel.name} declares a dependency that does not parse: refused") from None
                if dep.marker is None or any(dep.marker.evaluate(env | {"extra": e}) for e in ({""} | wanted)):
                    dep.marker = None
                    layer.append(str(dep))
    raise ProjectImageError(f"dependencies nest deeper than {MAX_RESOLVE_ROUNDS} layers: refused")


def _image_requirements(spec: ProjectSpec) -> str:
    """The requirements as the image's pip sees them: direct references (``name @ URL``) become
    their name, found in the wheelhouse (the image has no network and no host path)."""
    out = []
    for req in spec.requirements:
        name, sep, rest = req.partition(" @ ")
        marker = rest.partition(";")[2]
        out.append(f"{name.strip()}" + (f" ; {marker.strip()}" if marker.strip() else "") if sep else req)
    return "\n".join(out) + "\n"


def _tar(files: dict[str, bytes], wheels: list[Path]):
    buf = tempfile.TemporaryFile()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        for whl in wheels:
            tar.add(whl, arcname=f"rsi-project/wheels/{whl.name}")
    buf.seek(0)
    return buf


def image_tag(spec: ProjectSpec, digest: str) -> str:
    slug = re.sub(r"[^a-z0-9._-]+", "-", spec.name.lower()).strip("-._") or "project"
    return f"rsi-project-{slug[:60]}:{digest[:16]}"


def _build_log_error(exc: docker.errors.BuildError) -> str:
    lines = []
    for chunk in exc.build_log or []:
        text = chunk.get("stream") or chunk.get("error") or ""
        lines += [t for t in text.splitlines() if t.strip()]
    mine = [t for t in lines if "rsi-install:" in t]
    return (mine[-1].split("rsi-install:", 1)[1].strip() if mine else (lines[-1] if lines else str(exc)))[:600]


def build_project_image(client, root: Path | str, requirements_file: Path | str | None = None,
                        base: str = BASE_TAG, force: bool = False, python: str = sys.executable) -> str:
    """The derived image for ``root`` (built, or found up to date); returns its tag."""
    spec = project_spec(root, requirements_file)
    try:
        base_image = client.images.get(base)
    except docker.errors.ImageNotFound as exc:
        raise ProjectImageError(f"base image {base} not found; run `make images`") from exc
    digest = spec.digest(base_image.id)
    tag = image_tag(spec, digest)
    if not force:
        try:
            if client.images.get(tag).labels.get(SPEC_LABEL) == digest:
                log.info("project_image.up_to_date", tag=tag)
                return tag
        except docker.errors.ImageNotFound:
            pass
    info = probe_base(client, base)
    with tempfile.TemporaryDirectory(prefix="rsi-wheels-") as tmp:
        wheels = download_wheelhouse(spec, info, Path(tmp) / "wheels", python) if spec.requirements else []
        dockerfile = DOCKERFILE
        if spec.import_roots:
            dockerfile += f"ENV RSI_PYTHONPATH={spec.pythonpath}\n"
        files = {
            "Dockerfile": dockerfile.encode(),
            "rsi-project/install.py": INSTALL_PY.encode(),
            "rsi-project/requirements.txt": _image_requirements(spec).encode(),
            "rsi-project/METADATA": spec.metadata.encode(),
            "rsi-project/spec.json": json.dumps({"name": spec.name, "version": spec.version, "site": info["site"],
                                                 "requirements": spec.requirements}).encode(),
        }
        log.info("project_image.build", tag=tag, base=base, wheels=len(wheels), sources=spec.sources)
        context = _tar(files, wheels)
        try:
            client.images.build(fileobj=context, custom_context=True, dockerfile="Dockerfile", tag=tag,
                                buildargs={"BASE_IMAGE": base, "SITE_DIR": info["site"], "SPEC_DIGEST": digest},
                                network_mode="none",
                                labels={SPEC_LABEL: digest, PROJECT_LABEL: spec.name, "org.rsi-lab.role": "sandbox"},
                                rm=True, forcerm=True, pull=False, timeout=1800)
        except docker.errors.BuildError as exc:
            raise ProjectImageError(f"building {tag} failed: {_build_log_error(exc)}") from exc
        except docker.errors.APIError as exc:
            raise ProjectImageError(f"the engine refused to build {tag}: {exc.explanation or exc}") from exc
        finally:
            context.close()
            _remove_deps_stage(client, digest)
    return tag


def _remove_deps_stage(client, digest: str) -> None:
    """The first stage's image (wheels and all) is left untagged by the builder: remove it."""
    for image in client.images.list(filters={"label": f"{DEPS_STAGE_LABEL}={digest}", "dangling": True}):
        try:
            client.images.remove(image.id, noprune=False)
        except docker.errors.APIError:
            pass


def image_for_workspace(client, root: Path | str, base: str = BASE_TAG) -> str:
    """The image the loop should use for ``root``: the derived one when the project declares
    dependencies or a src layout, else ``base``."""
    spec = project_spec(root)
    return build_project_image(client, root, base=base) if spec.needs_image else base
