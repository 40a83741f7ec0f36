"""The images install what the tests run: the project itself with its extras (pyproject.toml), not a list kept by
hand; the GPU image a CUDA torch inside the torch extra's range; the CPU image no torch. Plus what a container
needs: the right Python, a non-root user, the entrypoint, and COPY sources that exist and reach the context."""

from __future__ import annotations

import re
import shlex
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {"gpu": ROOT / "docker" / "Dockerfile.gpu", "cpu": ROOT / "docker" / "Dockerfile.cpu"}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRAS = {"gpu": {"torch", "gcs"}, "cpu": {"gcs"}}
PYTORCH_INDEX = "https://download.pytorch.org/whl/cu"
GENERATED = re.compile(r"(^|/)(__pycache__|[^/]+\.egg-info)(/|$)|\.py[cod]$")


@dataclass
class Stage:
    base: str
    name: str | None
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
            name, _, default = rest.partition("=")
            scope[name] = default.strip('"')
            if stages:
                stages[-1].instructions.append((keyword, rest))
            continue
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=expand(words[0], global_args), name=name))
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


def pip_installs(dockerfile: Dockerfile) -> list[list[str]]:
    """Every `pip install ...` in any RUN, as argument lists (after `install`)."""
    found = []
    for stage in dockerfile.stages:
        for run in stage.all("RUN"):
            for words in commands(run):
                for i in range(len(words) - 1):
                    if words[i].endswith("pip") and words[i + 1] == "install":
                        found.append(words[i + 2 :])
    return found


OPTIONS_WITH_VALUES = {"--index-url", "-i", "--extra-index-url", "-c", "--constraint", "-r", "--requirement"}


def split_pip(args: list[str]) -> tuple[list[str], dict[str, str]]:
    targets: list[str] = []
    options: dict[str, str] = {}
    words = iter(args)
    for word in words:
        if word in OPTIONS_WITH_VALUES:
            options[word] = next(words)
        elif word.startswith("-"):
            name, _, value = word.partition("=")
            options[name] = value
        else:
            targets.append(word)
    return targets, options


def project_extras(target: str) -> set[str] | None:
    """`.[a,b]` -> {"a", "b"}; `.` -> set(); anything else (a package name) -> None."""
    match = re.fullmatch(r"\.(?:\[([\w,\s-]*)\])?", target)
    if match is None:
        return None
    return {e.strip() for e in (match.group(1) or "").split(",") if e.strip()}


def torch_range() -> SpecifierSet:
    for requirement in PYPROJECT["project"]["optional-dependencies"]["torch"]:
        parsed = Requirement(requirement)
        if parsed.name == "torch":
            return parsed.specifier
    raise AssertionError("pyproject's torch extra has no torch requirement")


@pytest.fixture(params=sorted(DOCKERFILES), scope="module")
def image(request: pytest.FixtureRequest) -> tuple[str, Dockerfile]:
    return request.param, parse(DOCKERFILES[request.param])


def test_every_pip_install_installs_the_project_with_its_extras(image: tuple[str, Dockerfile]) -> None:
    kind, dockerfile = image
    installs = pip_installs(dockerfile)
    assert installs, "no pip install found"
    project_installs = 0
    for args in installs:
        targets, options = split_pip(args)
        extras = [project_extras(t) for t in targets]
        if kind == "gpu" and targets and targets[0].startswith("torch=="):
            assert targets == [targets[0]], f"the CUDA torch install installs torch alone: {args}"
            assert options.get("--index-url", "").startswith(PYTORCH_INDEX), f"torch from the PyTorch index: {args}"
            continue
        assert len(targets) == 1, f"one target, the project: {args}"
        assert extras[0] is not None, f"`pip install` of something else than the project: {args}"
        assert extras[0] == EXTRAS[kind], f"{kind} image extras {extras[0]}, expected {EXTRAS[kind]}"
        assert not (options.keys() & {"--index-url", "-i", "--extra-index-url"}), f"the project from PyPI: {args}"
        assert extras[0] <= set(PYPROJECT["project"]["optional-dependencies"])
        project_installs += 1
    assert project_installs == 1


def test_the_gpu_image_installs_a_cuda_torch_inside_the_extras_range() -> None:
    dockerfile = parse(DOCKERFILES["gpu"])
    torch_installs = [split_pip(a) for a in pip_installs(dockerfile) if any(w.startswith("torch") for w in a)]
    assert len(torch_installs) == 1
    targets, options = torch_installs[0]
    version = Version(targets[0].removeprefix("torch=="))
    assert version in torch_range(), f"torch {version} is outside pyproject's {torch_range()}"
    index = options["--index-url"]
    cuda = re.fullmatch(r"https://download\.pytorch\.org/whl/cu(\d+)/?", index)
    assert cuda is not None, index
    # Cloud Run's L4 driver is the 535 series (CUDA 12.2): CUDA 12 wheels run there, CUDA 13 ones do not.
    assert cuda.group(1).startswith("12"), f"{index}: a CUDA 12 build runs on Cloud Run's L4 driver"
    # ... and the project install after it keeps it (the extra includes torch; the build checks torch.version.cuda)
    assert "torch.version.cuda" in " ".join(dockerfile.stages[0].all("RUN"))


def test_the_cpu_image_never_installs_torch() -> None:
    dockerfile = parse(DOCKERFILES["cpu"])
    for args in pip_installs(dockerfile):
        targets, options = split_pip(args)
        assert not any(t.startswith("torch") for t in targets)
        assert all("torch" not in (project_extras(t) or set()) for t in targets)
        assert "--index-url" not in options


def test_python_matches_requires_python_and_the_tests(image: tuple[str, Dockerfile]) -> None:
    _, dockerfile = image
    requires = SpecifierSet(PYPROJECT["project"]["requires-python"])
    for stage in dockerfile.stages:
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
        assert env["GNOSIS_ENGINE"] == "tesseract"
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
