"""The images install what the tests run: the project itself with its extras (pyproject.toml), not a list kept by
hand. The GPU image is built around the VLM backend its VLM_BACKEND argument names: vLLM's CUDA 12 build (the one
Cloud Run's L4 driver runs) at a version the vllm extra allows, with the project held to what vLLM installed; or a
CUDA torch inside the torch extra's range. The CPU image has no torch. Plus what a container needs: the right
Python, a non-root user, the entrypoint, and COPY sources that exist and reach the context."""

from __future__ import annotations

import re
import shlex
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from gnosis_ocr.settings import VlmBackend

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {"gpu": ROOT / "docker" / "Dockerfile.gpu", "cpu": ROOT / "docker" / "Dockerfile.cpu"}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Each image's build stages and the extras each installs the project with. The GPU image has one per VLM backend
# (VLM_BACKEND picks one); the CPU image one.
BUILDS = {
    "gpu": {"build-vllm": {"vllm", "gcs"}, "build-transformers": {"torch", "gcs"}},
    "cpu": {"build": {"gcs"}},
}
# What else a build stage may install before the project, alone: the build's CUDA wheels.
PREINSTALLS = {"build-vllm": "vllm", "build-transformers": "torch"}
INDEX_OPTIONS = {"--index-url", "-i", "--extra-index-url"}
PYTORCH_INDEX = "https://download.pytorch.org/whl/cu"
GENERATED = re.compile(r"(^|/)(__pycache__|[^/]+\.egg-info)(/|$)|\.py[cod]$")


@dataclass
class Stage:
    base: str
    name: str | None
    raw_base: str = ""
    instructions: list[tuple[str, str]] = field(default_factory=list)
    args: dict[str, str] = field(default_factory=dict)

    def all(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]


@dataclass
class Dockerfile:
    path: Path
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        matches = [s for s in self.stages if s.name == name]
        assert len(matches) == 1, f"{self.path.name}: {len(matches)} stages named {name}"
        return matches[0]


def logical_lines(text: str) -> list[str]:
    """Dockerfile lines with continuations joined and comment lines (also inside continuations) dropped."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current:
        lines.append(current)
    return lines


def expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), text)


def parse(path: Path) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines(path.read_text()):
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        scope = stages[-1].args if stages else global_args
        if keyword == "ARG":
            name, equals, default = rest.partition("=")
            # `ARG NAME` in a stage takes the global default (Docker's rule); `ARG NAME=value` sets its own.
            scope[name] = default.strip('"') if equals else global_args.get(name, "")
            if stages:
                stages[-1].instructions.append((keyword, rest))
            continue
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=expand(words[0], global_args), name=name, raw_base=words[0]))
            continue
        assert stages, f"{path.name}: {keyword} before FROM"
        stages[-1].instructions.append((keyword, expand(rest, {**global_args, **stages[-1].args})))
    return Dockerfile(path, global_args, stages)


def commands(run: str) -> list[list[str]]:
    """A RUN line's simple commands: shell words, split at `&&`, `||`, `;` and `|` outside quotes."""
    lexer = shlex.shlex(run, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    out: list[list[str]] = [[]]
    for token in lexer:
        if token in {"&&", "||", ";", "|"}:
            out.append([])
        else:
            out[-1].append(token)
    return [c for c in out if c]


def pip_installs_in(run: str) -> list[list[str]]:
    """Every `pip install ...` in one RUN, as argument lists (after `install`)."""
    found = []
    for words in commands(run):
        for i in range(len(words) - 1):
            if words[i].endswith("pip") and words[i + 1] == "install":
                found.append(words[i + 2 :])
    return found


def pip_installs(*stages: Stage) -> list[list[str]]:
    return [args for stage in stages for run in stage.all("RUN") for args in pip_installs_in(run)]


OPTIONS_WITH_VALUES = {"--index-url", "-i", "--extra-index-url", "-c", "--constraint", "-r", "--requirement"}


def split_pip(args: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """(targets, option -> its values in order): `--extra-index-url` may come more than once."""
    targets: list[str] = []
    options: dict[str, list[str]] = {}
    words = iter(args)
    for word in words:
        if word in OPTIONS_WITH_VALUES:
            options.setdefault(word, []).append(next(words))
        elif word.startswith("-"):
            name, _, value = word.partition("=")
            options.setdefault(name, []).append(value)
        else:
            targets.append(word)
    return targets, options


def preinstalled(args: list[str]) -> str | None:
    """`pip install torch==X ...` or `vllm==X ...` (a build's CUDA wheel): its name; the project or else: None."""
    targets, _ = split_pip(args)
    for name in ("torch", "vllm"):
        if targets and targets[0].startswith(f"{name}=="):
            return name
    return None


def project_extras(target: str) -> set[str] | None:
    """`.[a,b]` -> {"a", "b"}; `.` -> set(); anything else (a package name) -> None."""
    match = re.fullmatch(r"\.(?:\[([\w,\s-]*)\])?", target)
    if match is None:
        return None
    return {e.strip() for e in (match.group(1) or "").split(",") if e.strip()}


def extra_range(extra: str, package: str) -> SpecifierSet:
    for requirement in PYPROJECT["project"]["optional-dependencies"][extra]:
        parsed = Requirement(requirement)
        if parsed.name == package:
            return parsed.specifier
    raise AssertionError(f"pyproject's {extra} extra has no {package} requirement")


@pytest.fixture(params=sorted(DOCKERFILES), scope="module")
def image(request: pytest.FixtureRequest) -> tuple[str, Dockerfile]:
    return request.param, parse(DOCKERFILES[request.param])


def test_every_pip_install_installs_the_project_with_its_extras(image: tuple[str, Dockerfile]) -> None:
    kind, dockerfile = image
    builds = BUILDS[kind]
    for stage in dockerfile.stages:
        installs = pip_installs(stage)
        if stage.name not in builds:
            assert not installs, f"{stage.name}: pip install outside a build stage"
            continue
        project = [split_pip(args) for args in installs if preinstalled(args) is None]
        assert len(project) == 1, f"{stage.name}: {len(project)} project installs"
        targets, options = project[0]
        assert len(targets) == 1, f"{stage.name}: one target, the project: {targets}"
        extras = project_extras(targets[0])
        assert extras is not None, f"{stage.name}: `pip install` of something else than the project: {targets}"
        assert extras == builds[stage.name], f"{stage.name}: extras {extras}, expected {builds[stage.name]}"
        assert extras <= set(PYPROJECT["project"]["optional-dependencies"])
        assert not (options.keys() & INDEX_OPTIONS), f"{stage.name}: the project's dependencies from PyPI: {options}"
        for args in installs:
            name = preinstalled(args)
            if name is not None:
                assert name == PREINSTALLS.get(stage.name), f"{stage.name} installs {args} before the project"
                targets, _ = split_pip(args)
                assert len(targets) == 1, f"{stage.name}: {name} is installed alone: {targets}"
    assert {s.name for s in dockerfile.stages} >= set(builds)


def test_the_gpu_image_is_built_around_the_backend_its_build_arg_names() -> None:
    dockerfile = parse(DOCKERFILES["gpu"])
    variants = {name.removeprefix("build-") for name in BUILDS["gpu"]}
    assert variants == set(get_args(VlmBackend)) - {"auto"}, "one build per GNOSIS_VLM_BACKEND value"
    assert dockerfile.global_args["VLM_BACKEND"] == "vllm", "vLLM is the default build"
    alias = dockerfile.stage("build")
    assert alias.raw_base == "build-${VLM_BACKEND}", "the build the argument names"
    assert not alias.instructions, "the alias only names the chosen build"
    copies = [shlex.split(c) for c in dockerfile.final.all("COPY")]
    assert ["--from=build", "/opt/venv", "/opt/venv"] in copies


def test_the_transformers_build_installs_a_cuda_torch_inside_the_extras_range() -> None:
    stage = parse(DOCKERFILES["gpu"]).stage("build-transformers")
    torch_installs = [split_pip(a) for a in pip_installs(stage) if preinstalled(a) == "torch"]
    assert len(torch_installs) == 1
    targets, options = torch_installs[0]
    version = Version(targets[0].removeprefix("torch=="))
    assert version in extra_range("torch", "torch"), f"torch {version} is outside pyproject's torch extra"
    (index,) = options["--index-url"]
    cuda = re.fullmatch(r"https://download\.pytorch\.org/whl/cu(\d+)/?", index)
    assert cuda is not None, f"torch from the PyTorch index: {index}"
    # Cloud Run's L4 driver is the 535 series (CUDA 12.2): CUDA 12 wheels run there, CUDA 13 ones do not.
    assert cuda.group(1).startswith("12"), f"{index}: a CUDA 12 build runs on Cloud Run's L4 driver"
    # ... and the project install after it keeps it (the extra includes torch; the build checks torch.version.cuda)
    assert "torch.version.cuda" in " ".join(stage.all("RUN"))


def test_the_vllm_build_takes_vllms_cuda_12_build_at_a_version_the_extra_allows() -> None:
    stage = parse(DOCKERFILES["gpu"]).stage("build-vllm")
    (run,) = [r for r in stage.all("RUN") if any(preinstalled(a) == "vllm" for a in pip_installs_in(r))]
    (args,) = [a for a in pip_installs_in(run) if preinstalled(a) == "vllm"]
    targets, options = split_pip(args)
    version = Version(targets[0].removeprefix("vllm=="))
    assert version in extra_range("vllm", "vllm"), f"vllm {version} is outside pyproject's vllm extra"
    cuda = stage.args["VLLM_CUDA"]
    # The L4's driver (535, CUDA 12.2) runs CUDA 12 builds only; PyPI's default vllm wheel is CUDA 13.
    assert re.fullmatch(r"cu12\d", cuda), f"VLLM_CUDA={cuda}: a CUDA 12 build runs on Cloud Run's L4 driver"
    assert version.local == cuda, f"vllm=={version}: the pin names the {cuda} build, so PyPI's cannot stand in"
    assert version.public == stage.args["VLLM_VERSION"]
    assert not (options.keys() & {"--index-url", "-i"}), "PyPI stays the index for vLLM's other requirements"
    assert sorted(options["--extra-index-url"]) == sorted(
        [f"https://wheels.vllm.ai/{version.public}/{cuda}", f"{PYTORCH_INDEX}{cuda.removeprefix('cu')}"]
    ), "vLLM's own index for its CUDA 12 build, the PyTorch index for the torch it pins, the same CUDA"
    assert "torch.version.cuda" in run, "the build refuses a torch built for another CUDA"
    assert stage.instructions.index(("RUN", run)) < stage.instructions.index(("COPY", "src ./src")), (
        "vLLM's layer does not depend on the source"
    )


def test_the_vllm_build_installs_the_project_into_what_vllm_installed() -> None:
    stage = parse(DOCKERFILES["gpu"]).stage("build-vllm")
    (run,) = [r for r in stage.all("RUN") if any(preinstalled(a) is None for a in pip_installs_in(r))]
    steps = commands(run)
    (install,) = [i for i, c in enumerate(steps) if c[:2] == ["pip", "install"]]
    _, options = split_pip(steps[install][2:])
    (constraint,) = options["--constraint"]
    # The constraint is the environment as vLLM left it, written in the same RUN just before: not a list kept here.
    assert ["pip", "freeze", ">", constraint] in steps[:install]
    assert ["pip", "check"] in steps[install:]
    assert "m.version('vllm')" in run, "the build checks that vLLM's own build survived the project install"


def test_the_cpu_image_never_installs_torch() -> None:
    dockerfile = parse(DOCKERFILES["cpu"])
    for args in pip_installs(*dockerfile.stages):
        targets, options = split_pip(args)
        assert not any(t.startswith("torch") for t in targets)
        assert all("torch" not in (project_extras(t) or set()) for t in targets)
        assert "--index-url" not in options


def test_python_matches_requires_python_and_the_tests(image: tuple[str, Dockerfile]) -> None:
    _, dockerfile = image
    requires = SpecifierSet(PYPROJECT["project"]["requires-python"])
    earlier: set[str | None] = set()
    for stage in dockerfile.stages:
        earlier.add(stage.name)
        if stage.base in earlier:
            continue  # built on a stage above, so on its Python
        match = re.fullmatch(r"python:(\d+\.\d+)(?:\.\d+)?-slim(?:-\w+)?", stage.base)
        assert match is not None, f"{stage.base}: a python:X.Y-slim base"
        version = Version(match.group(1))
        assert version in requires
        assert (version.major, version.minor) == sys.version_info[:2], "the tests run another Python"


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for rest in stage.all("ENV"):
        for word in shlex.split(rest):
            name, _, value = word.partition("=")
            env[name] = value
    return env


def test_the_runtime_stage_is_a_non_root_service(image: tuple[str, Dockerfile]) -> None:
    kind, dockerfile = image
    final = dockerfile.final
    users = final.all("USER")
    assert users, "no USER in the final stage"
    uid = users[-1].split(":")[0]
    assert uid == "10001"
    assert final.all("WORKDIR")
    env = env_of(final)
    assert env["GNOSIS_HOST"] == "0.0.0.0"
    assert env["MODEL_CACHE_PATH"] == "/cache/huggingface"
    assert env["HF_HUB_DISABLE_TELEMETRY"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert "GNOSIS_PORT" not in env, "GNOSIS_PORT would win over the PORT Cloud Run sets"
    assert "HF_HUB_OFFLINE" not in env and "TRANSFORMERS_OFFLINE" not in env, "the entrypoint decides"
    assert env.get("PORT") == "8080"
    assert final.all("EXPOSE") == ["8080"]
    if kind == "cpu":
        assert env["GNOSIS_ENGINE"] == "layout"
    if kind == "gpu":
        assert env["GNOSIS_VLM_BACKEND"] == "auto", "vLLM on the GPU where the image has it, else transformers"
        assert env["VLLM_NO_USAGE_STATS"] == "1"
    healthcheck = " ".join(final.all("HEALTHCHECK"))
    assert "/healthz" in healthcheck
    assert "python" in healthcheck
    assert "curl" not in healthcheck
    assert final.all("ENTRYPOINT") == ['["/usr/local/bin/gnosis-entrypoint"]']
    assert final.all("CMD") == ['["serve"]']
    copies = [shlex.split(c) for c in final.all("COPY")]
    assert ["docker/entrypoint.sh", "/usr/local/bin/gnosis-entrypoint"] in copies


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        glob = line.lstrip("!").strip("/")
        regex = "".join(
            ".*" if part == "**" else "[^/]*" if part == "*" else "[^/]" if part == "?" else re.escape(part)
            for part in re.split(r"(\*\*|\*|\?)", glob)
        )
        patterns.append((negate, re.compile(regex)))
    return patterns


def in_build_context(rel: str) -> bool:
    """Docker's rule: the last pattern that matches the path, or a folder above it, decides."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for negate, pattern in dockerignore_patterns():
        if any(pattern.fullmatch(p) for p in prefixes):
            included = negate
    return included


def test_every_copied_file_exists_and_is_in_the_build_context(image: tuple[str, Dockerfile]) -> None:
    _, dockerfile = image
    for stage in dockerfile.stages:
        for rest in stage.all("COPY"):
            words = [w for w in shlex.split(rest) if not w.startswith("--")]
            if any(w.startswith("--from") for w in shlex.split(rest)):
                continue
            for source in words[:-1]:
                path = ROOT / source
                assert path.exists(), f"COPY {source}: not in the repository"
                files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
                for file in files:
                    rel = file.relative_to(ROOT).as_posix()
                    if GENERATED.search(rel):
                        continue  # build leftovers in this checkout, not in a clean one
                    assert in_build_context(rel), f"{rel} is copied but .dockerignore leaves it out"


def test_the_build_context_leaves_out_what_never_belongs_in_an_image() -> None:
    for rel in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "bench/results/x.json", "src/a/__pycache__/b"):
        assert not in_build_context(rel), rel
    for rel in ("pyproject.toml", "README.md", "src/gnosis_ocr/__init__.py", "docker/entrypoint.sh"):
        assert in_build_context(rel), rel


def test_the_package_files_the_project_ships_are_under_a_copied_folder() -> None:
    """package-data (the web UI's static files) must come along with `COPY src`."""
    for pattern in PYPROJECT["tool"]["setuptools"]["package-data"]["gnosis_ocr"]:
        for file in (ROOT / "src" / "gnosis_ocr").glob(pattern):
            assert in_build_context(file.relative_to(ROOT).as_posix())


def test_the_console_script_the_entrypoint_execs_is_declared() -> None:
    assert PYPROJECT["project"]["scripts"]["gnosis-ocr"] == "gnosis_ocr.cli.main:main"
    assert 'exec gnosis-ocr "$@"' in (ROOT / "docker" / "entrypoint.sh").read_text()
