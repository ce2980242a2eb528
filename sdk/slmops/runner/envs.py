"""Environments for local steps: what Azure ML builds into an image, materialised here as a virtual environment.

    envs = Environments(store / "envs", RunnerPython.current(), installer="pip")
    plan = envs.plan(node.environment)        # pure: what the definition asks and what this Python already has
    built = envs.build(plan, log)             # layered/fresh plans only: once per definition, under a file lock
    envs.step_layer(plan, built, folder)      # a throw-away venv per step: what the step pip-installs lands there

On Azure ML each environment is an image built from its definition and cached by content hash. Locally:
- A definition's pip requirements (the `pip:` section of a conda file, `-r` files in it, `pip install`s of a Docker
  build context) are checked against this interpreter (`importlib.metadata` + `packaging` specifiers).
  All satisfied: the step runs on this Python (mode "runner"). Some missing: a virtual environment layered on this
  Python gets only the missing ones (mode "layered", installed with pip: uv would reinstall what the layer
  inherits, astral-sh/uv#4466). One installed at a version the definition excludes: a fresh virtual environment
  gets all of them (mode "fresh", installed with uv when it is on PATH, pip otherwise).
- A built environment lives in `<store>/envs/<hash>/` (`venv/`, `build.log`, `env.json`), keyed by what it holds.
  It is built under an exclusive flock on `lock` (several steps or `slmops run`s needing it at once wait for one
  build), and only `env.json`, written last and atomically, makes it usable: a killed build leaves nothing usable.
  Steps using it hold a shared lock, so `slmops env prune` never deletes one in use.
- Every step runs in a throw-away layer of its own (`step_layer`): a venv whose `python`, `pip` and site-packages
  come first, layered over the built environment (if any) and this Python. A `pip install` in a step's command
  lands in that layer, never in this Python's site-packages or in another step's environment.
- What is not built locally is said once per environment (`Plan.notices`): conda packages (conda is not used),
  registered/curated environments (`azureml:name@latest`: their definition lives in the workspace), images and
  the non-pip instructions of Docker build contexts, a declared Python version this interpreter does not match.
  `--env strict` makes those errors; `--env docker` runs steps with an image in Docker (see `docker_argv`).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from slmops.errors import UserError
from slmops.io import write_json

# Conda packages that are part of any Python environment, and conda names whose PyPI distribution differs.
CONDA_BASE = {"python", "pip", "setuptools", "wheel", "ca-certificates", "openssl", "certifi"}
CONDA_TO_PYPI = {"pytorch": "torch", "pytorch-cpu": "torch", "py-xgboost": "xgboost", "matplotlib-base": "matplotlib",
                 "pytorch-lightning": "pytorch-lightning", "tensorflow-base": "tensorflow"}
PIP_VALUE_OPTIONS = {"-i", "--index-url", "--extra-index-url", "-f", "--find-links", "-c", "--constraint",
                     "--trusted-host", "--no-binary", "--only-binary"}
VERSIONS_SCRIPT = ("import json, sys\nfrom importlib import metadata\nout = {}\nfor n in sys.argv[1:]:\n"
                   "    try:\n        out[n] = metadata.version(n)\n    except metadata.PackageNotFoundError:\n"
                   "        out[n] = None\nprint(json.dumps(out))\n")


# ------------------------------------------------------------------------------------------------ the runner's Python

@dataclass(frozen=True)
class RunnerPython:
    """The interpreter `slmops run` runs on, as layers need it: the real binary, and which site-packages it sees."""

    executable: str
    base: str                       # the interpreter binary layers link to (a venv's base interpreter)
    version: str                    # "3.11.7"
    implementation: str             # "cpython"
    system_site: bool               # layers include the base interpreter's site-packages
    sites: tuple[str, ...] = ()     # the runner venv's own site-packages (added in front of the base's)

    @classmethod
    def current(cls) -> "RunnerPython":
        import site

        base = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
        in_venv = sys.prefix != sys.base_prefix
        system_site, sites = True, ()
        if in_venv:
            cfg = _read_cfg(Path(sys.prefix) / "pyvenv.cfg")
            system_site = cfg.get("include-system-site-packages", "false").lower() == "true"
            sites = tuple(site.getsitepackages([sys.prefix]))
        return cls(sys.executable, base, platform.python_version(), sys.implementation.name, system_site, sites)

    @property
    def minor(self) -> str:
        return ".".join(self.version.split(".")[:2])

    @property
    def home(self) -> str:
        return os.path.dirname(self.base)


def _read_cfg(path: Path) -> dict:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition("=") for line in lines) if _}


def make_layer(path: Path, runner: RunnerPython, *, system_site: bool, sites: list[str] | tuple = ()) -> Path:
    """A minimal virtual environment at `path` on the runner's interpreter: `bin/python*` (links), `bin/pip*` (run
    this venv's pip module), an empty site-packages first on sys.path, then `sites` (processed like site-packages:
    their .pth files count), then the base interpreter's site-packages when `system_site`. ~1 ms; no pip of its own
    (pip comes from a lower layer), no activate scripts. Returns `path / "bin" / "python"`."""
    bin_dir = path / "bin"
    site_dir = path / "lib" / f"python{runner.minor}" / "site-packages"
    bin_dir.mkdir(parents=True, exist_ok=True)
    site_dir.mkdir(parents=True, exist_ok=True)
    for name in ("python", "python3", f"python{runner.minor}"):
        link = bin_dir / name
        if not link.exists():
            os.symlink(runner.base, link)
    python = bin_dir / "python"
    for name in ("pip", "pip3", f"pip{runner.minor}"):
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\nexec {shlex.quote(str(python))} -m pip "$@"\n')
        script.chmod(0o755)
    (path / "pyvenv.cfg").write_text(f"home = {runner.home}\ninclude-system-site-packages = "
                                     f"{'true' if system_site else 'false'}\nversion = {runner.version}\n")
    if sites:
        (site_dir / "_slmops_layers.pth").write_text(
            "import site; " + "; ".join(f"site.addsitedir({str(s)!r})" for s in sites) + "\n")
    return python


def site_packages(venv: Path, runner: RunnerPython) -> str:
    return str(venv / "lib" / f"python{runner.minor}" / "site-packages")


# ------------------------------------------------------------------------------------------------ definitions (pure)

@dataclass
class EnvDef:
    """An environment definition as the local runner reads it."""

    kind: str                                   # "none" | "registered" | "inline"
    label: str                                  # how messages name it
    requirements: list[str] = field(default_factory=list)   # pip requirement lines
    pip_options: list[str] = field(default_factory=list)    # --index-url URL, --extra-index-url URL, ...
    python: str | None = None                   # the declared Python (conda spec: "3.7.6", ">=3.9")
    conda: list[str] = field(default_factory=list)          # conda packages other than python/pip
    image: str | None = None
    build: str | None = None                    # a Docker build context folder
    not_built: list[str] = field(default_factory=list)      # Dockerfile instructions not run locally
    unreadable: list[str] = field(default_factory=list)     # `-r FILE` lines whose file is missing


def describe(environment) -> str:
    if isinstance(environment, dict):
        if environment.get("conda_file"):
            return f"inline (image {environment.get('image')}, conda file)" if environment.get("image") \
                else "inline (conda file)"
        if environment.get("build"):
            return f"inline (Docker build context {(environment.get('build') or {}).get('path')})"
        return f"inline (image {environment.get('image')})" if environment.get("image") else "inline"
    return str(environment or "none")


def parse_environment(environment) -> EnvDef:
    """Read an environment as azure-ai-ml dumps it: a registered reference (str), or an inline dict with `image`,
    `conda_file` (a dict; its `-r FILE` lines already expanded by the pipeline front-end) and/or `build`."""
    if not environment:
        return EnvDef("none", "no environment")
    if not isinstance(environment, dict):
        return EnvDef("registered", str(environment))
    env = EnvDef("inline", describe(environment), image=environment.get("image"))
    conda = environment.get("conda_file")
    if isinstance(conda, str):          # a conda file azure-ai-ml kept as text
        import yaml

        conda = yaml.safe_load(conda)
    for dep in (conda or {}).get("dependencies") or []:
        if isinstance(dep, dict):
            for line in dep.get("pip") or []:
                _pip_line(str(line), env)
            continue
        name, spec = conda_name_spec(str(dep))
        if name == "python":
            env.python = spec or None
        elif name not in CONDA_BASE:
            env.conda.append(str(dep))
    build = environment.get("build")
    if isinstance(build, dict) and build.get("path"):
        env.build = str(build["path"])
        _dockerfile(Path(env.build), build.get("dockerfile_path") or "Dockerfile", env)
    return env


def _pip_line(line: str, env: EnvDef) -> None:
    text = re.sub(r"\s+#.*$", "", line).strip()
    if not text or text.startswith("#"):
        return
    if re.match(r"^(-r|--requirement)\b", text):
        env.unreadable.append(text)
    elif text.startswith(("-e ", "--editable")):
        env.requirements.append(text)
    elif text.startswith("-"):
        env.pip_options += shlex.split(text)
    else:
        env.requirements.append(text)


def _dockerfile(context: Path, dockerfile: str, env: EnvDef) -> None:
    """The `pip install`s of a Docker build context's Dockerfile (its other instructions are not run locally)."""
    path = context / dockerfile
    try:
        text = path.read_text()
    except OSError:
        env.not_built.append(f"{path} (not readable)")
        return
    for instruction in re.sub(r"\\\s*\n", " ", text).splitlines():
        words = instruction.strip().split(None, 1)
        if not words or words[0].startswith("#"):
            continue
        if words[0].upper() != "RUN" or len(words) < 2:
            env.not_built.append(instruction.strip()[:60])
            continue
        for part in re.split(r"&&|;|\|\|", words[1]):
            tokens = shlex.split(part, comments=True)
            at = _pip_install_at(tokens)
            if at is None:
                if part.strip():
                    env.not_built.append(f"RUN {part.strip()[:50]}")
                continue
            args = iter(tokens[at:])
            for token in args:
                if token in ("-r", "--requirement"):
                    req = context / next(args, "")
                    if req.is_file():
                        for line in req.read_text().splitlines():
                            _pip_line(line, env)
                    else:
                        env.unreadable.append(f"-r {req}")
                elif token in PIP_VALUE_OPTIONS:
                    env.pip_options += [token, next(args, "")]
                elif not token.startswith("-"):
                    env.requirements.append(token)


def _pip_install_at(tokens: list[str]) -> int | None:
    """Index of the first argument after `pip install` / `python -m pip install`, or None."""
    for i, token in enumerate(tokens):
        if os.path.basename(token) in ("pip", "pip3") and tokens[i + 1:i + 2] == ["install"]:
            return i + 2
        if token == "-m" and tokens[i + 1:i + 3] == ["pip", "install"]:
            return i + 3
    return None


def conda_name_spec(dep: str) -> tuple[str, str]:
    """`conda-forge::numpy=1.21` -> ("numpy", "=1.21"); `python 3.8.*` -> ("python", "3.8.*")."""
    dep = dep.split("::", 1)[-1].strip()
    m = re.match(r"^([A-Za-z0-9_.\-]+)\s*(.*)$", dep)
    return (m.group(1).lower(), m.group(2).strip()) if m else (dep.lower(), "")


def conda_specifier(spec: str) -> str:
    """A conda version spec as a PEP 440 specifier: `=1.21` and `1.21` mean 1.21.*; a build string is dropped."""
    spec = spec.strip().split(" ")[0] if " " in spec.strip() and not re.match(r"^[<>=!~]", spec.strip()) \
        else spec.strip()
    if not spec:
        return ""
    if spec.startswith("=") and not spec.startswith("=="):
        version = spec[1:].split("=")[0]
        return f"=={version}" if version.endswith("*") else f"=={version}.*"
    if spec[0].isdigit():
        return f"=={spec}" if spec.endswith("*") else f"=={spec}.*"
    return spec


def python_matches(declared: str, version: str) -> bool:
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    try:
        return SpecifierSet(conda_specifier(declared)).contains(version, prereleases=True)
    except InvalidSpecifier:
        return True      # a spec we cannot read is not held against this interpreter


@dataclass
class Check:
    satisfied: dict[str, str] = field(default_factory=dict)   # canonical name -> installed version
    missing: list[str] = field(default_factory=list)          # lines to install (absent, URLs, paths, extras)
    conflicts: list[str] = field(default_factory=list)        # "six==1.15.0 (installed: 1.17.0)"


@functools.lru_cache(maxsize=1)
def _site_dirs() -> tuple[str, ...]:
    """Where this Python's distributions are installed: its site-packages (a venv's and its base's) and the user
    site, not the rest of sys.path (the current folder or a test root may hold a stale `*.egg-info`)."""
    import site

    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        dirs.insert(0, site.getusersitepackages())      # before site-packages, as on sys.path
    return tuple(d for d in dirs if os.path.isdir(d))


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@functools.lru_cache(maxsize=1)
def _dist_index() -> dict[str, tuple[str, str]]:
    """canonical name -> (version, metadata folder) from the `*.dist-info` folder names of the site dirs: a directory
    listing, not a metadata read per distribution (a cached re-run computes reuse keys from it). The first site dir
    wins, as on sys.path."""
    index: dict[str, tuple[str, str]] = {}
    for folder in _site_dirs():
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            continue
        for entry in names:
            stem = entry[: -len(".dist-info")]
            if entry.endswith(".dist-info") and stem.count("-") == 1:
                name, version = stem.split("-")
                index.setdefault(_canonical(name), (version, os.path.join(folder, entry)))
    return index


def _distribution(name: str):
    from importlib import metadata

    return next(iter(metadata.distributions(name=name, path=list(_site_dirs()))), None)


def installed_version(name: str) -> str | None:
    found = _dist_index().get(_canonical(name))
    if found is not None:
        return found[0]
    dist = _distribution(name)            # egg-info and unusual layouts
    return dist.version if dist is not None else None


def installed_requires(name: str) -> list[str]:
    dist = _distribution(name)
    return list(dist.requires or []) if dist is not None else []


def check_requirements(lines: list[str], version_of=installed_version, requires_of=None) -> Check:
    """Which requirement lines this interpreter satisfies (markers evaluated here; extras followed one level)."""
    found = Check()
    if not lines:
        return found
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    if requires_of is None:
        requires_of = installed_requires
    for line in lines:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            found.missing.append(line)          # a path, URL or editable: pip decides
            continue
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = canonicalize_name(req.name)
        version = version_of(req.name)
        if req.url or version is None:
            found.missing.append(line)
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            found.conflicts.append(f"{line} (installed: {version})")
            continue
        extras_met = True
        for extra in sorted(req.extras):
            for text in requires_of(req.name):
                sub = Requirement(text)
                marker = sub.marker
                if marker is None or not marker.evaluate({"extra": extra}) or marker.evaluate({"extra": ""}):
                    continue
                have = version_of(sub.name)
                if have is None or (sub.specifier and not sub.specifier.contains(have, prereleases=True)):
                    extras_met = False
        if not extras_met:
            found.missing.append(line)
            continue
        found.satisfied[name] = version
    return found


def requirement_names(lines: list[str]) -> list[str]:
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    names = []
    for line in lines:
        try:
            names.append(canonicalize_name(Requirement(line).name))
        except InvalidRequirement:
            continue
    return sorted(set(names))


@functools.lru_cache(maxsize=1)
def slmops_versions() -> dict:
    """What a curated/registered environment is taken to be locally: slmops and its requirements, as installed."""
    found = {"slmops": installed_version("slmops")}
    for text in installed_requires("slmops"):
        name, _, marker = text.partition(";")
        if "extra" in marker:              # optional extras are not part of what a step gets
            continue
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", name)
        if match:
            found[_canonical(match.group(1))] = installed_version(match.group(1))
    return found


# ------------------------------------------------------------------------------------------------ plans

@dataclass
class Plan:
    """How one environment definition runs here."""

    definition: EnvDef
    mode: str                        # "runner" | "layered" | "fresh" | "docker"
    hash: str = ""                   # <store>/envs/<hash>/ for layered/fresh/docker
    install: list[str] = field(default_factory=list)
    check: Check = field(default_factory=Check)
    conda_versions: dict = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)     # what is not built locally
    problems: list[str] = field(default_factory=list)    # errors whatever the --env mode

    @property
    def needs_build(self) -> bool:
        """A virtual environment (layered/fresh) or a Docker image (docker) must exist before its steps start."""
        return self.mode in ("layered", "fresh", "docker")

    @property
    def venv(self) -> bool:
        return self.mode in ("layered", "fresh")


class BuildError(Exception):
    pass


class Environments:
    """Plans, builds and layers environments under `<store>/envs/`. `mode`: "auto", "strict" or "docker"."""

    def __init__(self, root: Path, runner: RunnerPython, installer: str = "pip", mode: str = "auto",
                 version_of=installed_version):
        self.root = Path(root)
        self.runner = runner
        self.installer = installer
        self.mode = mode
        self.version_of = version_of
        self._plans: dict[str, Plan] = {}
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self._images: dict[str, dict] = {}

    # ------------------------------------------------------------------------------------------ planning
    def plan(self, environment) -> Plan:
        key = json.dumps(environment, sort_keys=True, default=str)
        if key not in self._plans:
            self._plans[key] = self._plan(environment)
        return self._plans[key]

    def _plan(self, environment) -> Plan:
        env = parse_environment(environment)
        here = f"this Python ({self.runner.implementation} {self.runner.version}, {self.runner.executable})"
        plan = Plan(env, "runner")
        docker = self.mode == "docker" and (env.image or env.build)
        if env.kind == "registered":
            plan.notices.append(f"{env.label} is a registered Azure ML environment: its definition lives in the "
                                f"workspace and is not built here; its steps run in {here}")
        for text in env.unreadable:
            plan.problems.append(f"{env.label}: `{text}`: file not found. Fix: correct the path (relative to the "
                                 "conda file or the build context)")
        if env.python and not python_matches(env.python, self.runner.version) and not docker:
            shown = f"python{env.python}" if env.python[0] in "=<>!~" else f"python {env.python}"
            plan.notices.append(f"{env.label} declares {shown}; its steps run on {here}")
        for dep in env.conda:
            name, spec = conda_name_spec(dep)
            dist = CONDA_TO_PYPI.get(name, name)
            version = self.version_of(dist)
            if version is not None and (not spec or python_matches(spec, version)):
                plan.conda_versions[dist] = version
        unmet = [d for d in env.conda if CONDA_TO_PYPI.get(conda_name_spec(d)[0], conda_name_spec(d)[0])
                 not in plan.conda_versions]
        if unmet and not docker:
            plan.notices.append(f"{env.label}: conda package(s) {', '.join(unmet)} not installed here at that version, "
                                "and conda is not used locally (pip-install them, or use --env docker)")
        if env.build and env.not_built and not docker:
            plan.notices.append(f"{env.label}: only the Dockerfile's pip installs are built locally; not run: "
                                + "; ".join(env.not_built[:3]) + (" ..." if len(env.not_built) > 3 else ""))
        if env.image and not env.conda and not env.requirements and not env.build and not docker:
            plan.notices.append(f"image {env.image} is not used locally (--env docker runs its steps in it); its "
                                f"steps run in {here}")
        if docker:
            plan.mode = "docker"
            plan.hash = _digest(["docker", env.image, env.build, env.requirements, env.pip_options, env.conda,
                                 env.python, (environment or {}).get("version")])
            return plan
        plan.check = check_requirements(env.requirements, self.version_of)
        if plan.check.conflicts:
            plan.mode, plan.install = "fresh", list(env.requirements)
        elif plan.check.missing:
            plan.mode, plan.install = "layered", list(plan.check.missing)
        if plan.needs_build:
            plan.hash = _digest([self.runner.base, self.runner.version, self.runner.sites, plan.mode,
                                 sorted(env.requirements), env.pip_options, sorted(plan.install)])
        return plan

    def problems(self, plans: dict[str, Plan]) -> list[str]:
        """Errors before anything runs: unreadable requirement files; under --env strict, everything not built."""
        found = []
        for where, plan in plans.items():
            found += [f"{where}: {p}" for p in plan.problems]
            if self.mode == "strict":
                found += [f"{where}: {n} [--env strict: not built locally]" for n in plan.notices]
        return found

    # ------------------------------------------------------------------------------------------ identity
    def identity(self, plan: Plan, built: dict | None) -> dict:
        """The environment part of a step's reuse key: the interpreter, and the versions of what the definition
        declares as they resolve here (for a registered/unknown environment: slmops and its requirements)."""
        found = {"python": f"{self.runner.implementation} {self.runner.version}", "mode": plan.mode}
        if plan.mode == "docker":
            found["image"] = plan.hash
            return found
        env = plan.definition
        if plan.venv:
            found["env"] = plan.hash
            found["resolved"] = dict((built or {}).get("resolved") or {})
        elif env.requirements:
            found["resolved"] = dict(plan.check.satisfied)
        if plan.conda_versions:
            found["conda"] = dict(plan.conda_versions)
        if not env.requirements and not env.conda:
            found["slmops"] = slmops_versions()
        return found

    # ------------------------------------------------------------------------------------------ building
    def folder(self, plan: Plan) -> Path:
        return self.root / plan.hash

    def ready(self, plan: Plan) -> dict | None:
        if plan.mode == "docker":
            return self._images.get(plan.hash)
        try:
            return json.loads((self.folder(plan) / "env.json").read_text())
        except (OSError, ValueError):
            return None

    def build(self, plan: Plan, say=lambda text: None) -> dict:
        """Build the plan's environment once (whoever holds the lock builds; the others wait and reuse it).
        Returns its env.json. Raises BuildError (the log names the cause)."""
        folder = self.folder(plan)
        folder.mkdir(parents=True, exist_ok=True)
        if plan.mode == "docker":
            say(f"environment {plan.hash[:12]}: preparing its Docker image")
            self._images[plan.hash] = {"image": docker_image(plan, folder, folder / "build.log"), "resolved": {}}
            return self._images[plan.hash]
        fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                say(f"environment {plan.hash[:12]}: waiting for another process that is building or pruning it")
                fcntl.flock(fd, fcntl.LOCK_EX)
            done = self.ready(plan)
            if done is not None:
                return done
            return self._build_locked(plan, folder, say)
        finally:
            os.close(fd)        # releases the lock

    def _build_locked(self, plan: Plan, folder: Path, say) -> dict:
        venv = folder / "venv"
        shutil.rmtree(venv, ignore_errors=True)
        log_path = folder / "build.log"
        started = time.monotonic()
        # uv ignores the packages a layered venv inherits (astral-sh/uv#4466): it would install a second copy of
        # every dependency the runner already has. Layered builds use pip, which installs only what is missing.
        installer = self.installer if plan.mode == "fresh" else "pip"
        with open(log_path, "w") as log:
            log.write(f"# slmops: building environment {plan.hash} ({plan.mode}) for {plan.definition.label}\n"
                      f"# on {self.runner.executable} ({self.runner.version}), installer {installer}, "
                      f"pid {os.getpid()}, {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                      f"# install: {' '.join(plan.install)}\n")
            log.flush()
            if plan.mode == "layered":
                python = make_layer(venv, self.runner, system_site=self.runner.system_site, sites=self.runner.sites)
            else:
                self._run([self.runner.base, "-m", "venv", str(venv)], log, "creating the virtual environment")
                python = venv / "bin" / "python"
            requirements = folder / "requirements.txt"
            requirements.write_text("".join(f"{line}\n" for line in option_lines(plan.definition.pip_options)
                                            + plan.install))
            if installer == "uv":
                argv = [shutil.which("uv") or "uv", "pip", "install", "--python", str(python), "-r", str(requirements)]
            else:
                argv = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
                        "--progress-bar", "off", "-r", str(requirements)]
            say(f"environment {plan.hash[:12]}: installing {' '.join(plan.install)} ({plan.mode}, {installer})")
            self._run(argv, log, f"{installer} install")
            names = requirement_names(plan.definition.requirements)
            out = subprocess.run([str(python), "-c", VERSIONS_SCRIPT, *names], capture_output=True, text=True,
                                 timeout=120)
            log.write(out.stdout + out.stderr)
            try:
                resolved = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else None
            except (ValueError, IndexError):
                resolved = None
            if resolved is None:
                raise BuildError(f"the built environment's interpreter does not start (see {log_path})")
            after = check_requirements(plan.definition.requirements, lambda n: resolved.get(_canon(n)),
                                       requires_of=lambda n: [])
            unmet = after.conflicts + [m for m in after.missing
                                       if any(resolved.get(n) is None for n in requirement_names([m]))]
            if unmet:
                raise BuildError(f"after the install, still not satisfied: {', '.join(unmet)} (see {log_path})")
            seconds = round(time.monotonic() - started, 2)
            log.write(f"# built in {seconds} s\n")
        info = {"hash": plan.hash, "mode": plan.mode, "installer": installer, "label": plan.definition.label,
                "requirements": plan.definition.requirements, "installed": plan.install, "resolved": resolved,
                "python": self.runner.version, "interpreter": self.runner.base, "seconds": seconds,
                "built": time.time()}
        write_json(folder / "env.json", info)           # written last: only now is the environment usable
        say(f"environment {plan.hash[:12]}: built in {seconds:.1f} s")
        return info

    def _run(self, argv: list[str], log, what: str) -> None:
        log.write(f"$ {shlex.join(argv)}\n")
        log.flush()
        env = dict(os.environ, PIP_NO_INPUT="1")
        env.pop("VIRTUAL_ENV", None)
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
        with self._lock:
            self._procs.add(proc)
        try:
            code = proc.wait()
        finally:
            with self._lock:
                self._procs.discard(proc)
        if code != 0:
            raise BuildError(f"{what} failed (exit code {code}); see {log.name}")

    def kill_builds(self) -> None:
        """End running installer processes (the runner was interrupted): their environments stay unusable."""
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    # ------------------------------------------------------------------------------------------ using
    def hold(self, plan: Plan) -> int | None:
        """A shared lock on a built environment for the step using it (handed to its processes), or None."""
        if not plan.venv:
            return None
        fd = os.open(self.folder(plan) / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_SH)
        try:
            os.utime(self.folder(plan) / "env.json")          # last use, for `slmops env prune`
        except OSError:
            pass
        return fd

    def step_layer(self, plan: Plan, folder: Path) -> Path:
        """The step's own throw-away virtual environment, over the plan's environment. Returns its bin/ folder."""
        runner = self.runner
        if plan.mode == "layered":
            make_layer(folder, runner, system_site=runner.system_site,
                       sites=[site_packages(self.folder(plan) / "venv", runner), *runner.sites])
        elif plan.mode == "fresh":
            make_layer(folder, runner, system_site=False, sites=[site_packages(self.folder(plan) / "venv", runner)])
        else:
            make_layer(folder, runner, system_site=runner.system_site, sites=runner.sites)
        return folder / "bin"

    def env_bin(self, plan: Plan) -> Path | None:
        """The built environment's bin/ (console scripts its packages installed), for the step's PATH."""
        return self.folder(plan) / "venv" / "bin" if plan.venv else None


def _canon(name: str) -> str:
    from packaging.utils import canonicalize_name

    return canonicalize_name(name)


def option_lines(options: list[str]) -> list[str]:
    """pip options as requirements-file lines: `--index-url URL`, `--pre`, ..."""
    lines, tokens = [], iter(options)
    for token in tokens:
        lines.append(shlex.join([token, next(tokens, "")]) if token in PIP_VALUE_OPTIONS else token)
    return lines


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:32]


# ------------------------------------------------------------------------------------------------ docker

def docker_available() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def docker_image(plan: Plan, folder: Path, log_path: Path) -> str:
    """The image a docker-mode step runs in: the inline `image` (pip requirements installed on top), or the build
    context built. Tagged `slmops-env:<hash>`; built once (docker caches layers)."""
    env = plan.definition
    if env.image and not env.requirements and not env.build:
        return env.image
    tag = f"slmops-env:{plan.hash[:16]}"
    if subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0:
        return tag
    folder.mkdir(parents=True, exist_ok=True)
    if env.build:
        argv = ["docker", "build", "-t", tag, env.build]
    else:
        (folder / "requirements.txt").write_text("".join(f"{r}\n" for r in env.requirements))
        (folder / "Dockerfile").write_text(f"FROM {env.image}\nCOPY requirements.txt /tmp/slmops-requirements.txt\n"
                                           "RUN python -m pip install -r /tmp/slmops-requirements.txt\n")
        argv = ["docker", "build", "-t", tag, str(folder)]
    with open(log_path, "a") as log:
        log.write(f"$ {shlex.join(argv)}\n")
        log.flush()
        if subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
            raise BuildError(f"docker build failed; see {log_path}")
    return tag


def docker_argv(image: str, command: str, cwd: Path, env: dict, mounts: list[str]) -> list[str]:
    """`docker run` of a step: every path it uses mounted at the same absolute path (so no path in the command
    changes), the working directory, the variables the runner sets, host networking (MLflow, torchrun)."""
    argv = ["docker", "run", "--rm", "--init", "--network", "host", "-w", str(cwd)]
    for path in sorted(set(mounts)):
        argv += ["-v", f"{path}:{path}"]
    for key in sorted(env):
        argv += ["-e", f"{key}={env[key]}"]
    return argv + [image, "bash", "-c", command]


def format_notices(plans: dict[str, Plan]) -> list[str]:
    """One line per environment with something not built, naming the steps that use it."""
    by_text: dict[str, list[str]] = {}
    for where, plan in plans.items():
        for text in plan.notices:
            by_text.setdefault(text, []).append(where)
    return [f"note: {text} (steps: {', '.join(sorted(steps))})" for text, steps in by_text.items()]


def check_mode(mode: str) -> None:
    if mode not in ("auto", "strict", "docker"):
        raise UserError(f"--env {mode}: not one of auto, strict, docker")
