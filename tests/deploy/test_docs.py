"""docs/DEPLOY.md and docs/OPERATIONS.md name only what exists: every `gnosis-ocr ...` command line parses in the
real CLI, every deploy/cloudrun.sh line runs (dry), every GNOSIS_* variable is a setting, every metric is exported,
every link lands."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from pydantic import AliasChoices
from typer.testing import CliRunner

from gnosis_ocr.cli.main import app
from gnosis_ocr.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "docs" / "DEPLOY.md", ROOT / "docs" / "OPERATIONS.md"]
SCRIPT = ROOT / "deploy" / "cloudrun.sh"
SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")"}
PROSE_FENCES = {"text", "yaml"}  # diagrams and manifests, not shell
REDIRECTS = {">", ">>", "<", ">&", "<&", "&>"}


def code_lines(text: str) -> list[str]:
    """Lines of fenced code blocks (continuations joined), then every inline code span."""
    lines: list[str] = []
    fenced = False
    language = ""
    current = ""
    for raw in text.splitlines():
        if raw.strip().startswith("```"):
            fenced = not fenced
            language = raw.strip().removeprefix("```")
            continue
        if not fenced or language in PROSE_FENCES:
            continue
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        lines.append(current + raw)
        current = ""
    prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    lines += re.findall(r"`([^`\n]+)`", prose)
    return lines


def words(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        return list(lexer)
    except ValueError:  # an inline span that is not a whole command (an unbalanced quote)
        return []


def simple_commands(tokens: list[str]) -> list[list[str]]:
    """Split at &&, ||, ;, | and parentheses; drop redirections (`2>&1`, `> file`) and leading VAR=value words."""
    out: list[list[str]] = [[]]
    skip_next = False
    for token in tokens:
        if skip_next:
            skip_next = False
            continue
        if token in SEPARATORS:
            out.append([])
        elif token in REDIRECTS:
            if out[-1] and out[-1][-1].isdigit():
                out[-1].pop()
            skip_next = True
        else:
            out[-1].append(token)
    commands = []
    for words_ in out:
        start = 0
        while start < len(words_) and re.fullmatch(r"\w+=.*", words_[start]):
            start += 1
        if words_[start:]:
            commands.append(words_[start:])
    return commands


def cli_commands() -> list[tuple[str, list[str]]]:
    """(where, argv after `gnosis-ocr`) for each command the docs show: direct, in `docker run IMAGE ...`, and in
    `gcloud run jobs execute ... --args=...`."""
    found = []
    for doc in DOCS:
        for line in code_lines(doc.read_text()):
            where = f"{doc.name}: {line.strip()}"
            for command in simple_commands(words(line)):
                if command[0] == "gnosis-ocr":
                    found.append((where, command[1:]))
                elif command[:2] == ["docker", "run"]:
                    images = [i for i, w in enumerate(command) if re.fullmatch(r"gnosis-ocr:[\w.-]+", w)]
                    if images:
                        found.append((where, command[images[0] + 1 :]))
                elif command[:3] == ["gcloud", "run", "jobs"]:
                    found += [(where, w.removeprefix("--args=").split(",")) for w in command if w.startswith("--args=")]
    return found


COMMANDS = cli_commands()


def test_the_docs_show_commands() -> None:
    shown = {tuple(argv[:2]) for _, argv in COMMANDS}
    for expected in [("cache", "warm"), ("cache", "push"), ("cache", "verify"), ("cache", "prune"), ("serve",)]:
        assert any(s[: len(expected)] == expected for s in shown), expected


@pytest.mark.parametrize(("where", "argv"), COMMANDS, ids=[f"{i}" for i in range(len(COMMANDS))])
def test_every_gnosis_ocr_command_in_the_docs_parses(where: str, argv: list[str]) -> None:
    result = CliRunner().invoke(app, [*argv, "--help"])
    assert result.exit_code == 0, f"{where}\n-> gnosis-ocr {' '.join(argv)}: {result.output}"


def cloudrun_invocations() -> list[tuple[str, list[str]]]:
    found = []
    for doc in DOCS:
        for line in code_lines(doc.read_text()):
            for command in simple_commands(words(line)):
                if command[0] == "deploy/cloudrun.sh" and len(command) > 1:  # not a mere mention of the script
                    found.append((line.strip(), command[1:]))
    return found


def test_every_deploy_script_line_in_the_docs_runs(tmp_path: Path) -> None:
    invocations = cloudrun_invocations()
    assert invocations
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "PROJECT_ID": "acme",
        "BUCKET": "acme-models",
        "BATCH_SRC": "gs://acme-docs/in",
        "BATCH_DST": "gs://acme-docs/out",
        "VLLM_API_KEY_SECRET": "vllm-key",
    }
    for line, args in invocations:
        argv = ["bash", str(SCRIPT), *([] if "--dry-run" in args else ["--dry-run"]), *args]
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, f"{line}: {proc.stderr}"


def setting_names() -> set[str]:
    names = set()
    prefix = Settings.model_config.get("env_prefix", "")
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {str(choice) for choice in alias.choices}
        else:
            names.add(f"{prefix}{name}".upper())
    return names


def test_every_gnosis_variable_in_the_docs_is_a_setting_or_the_entrypoints() -> None:
    known = setting_names()
    entrypoint = (ROOT / "docker" / "entrypoint.sh").read_text()
    for doc in DOCS:
        for name in sorted(set(re.findall(r"\bGNOSIS_[A-Z0-9_]*[A-Z0-9]\b", doc.read_text()))):
            assert name in known or name in entrypoint, f"{doc.name}: {name} is not a setting"


def test_every_other_variable_the_docs_name_is_read_by_something() -> None:
    sources = "\n".join(p.read_text() for p in (ROOT / "src" / "gnosis_ocr").rglob("*.py"))
    sources += (ROOT / "docker" / "entrypoint.sh").read_text() + SCRIPT.read_text()
    for doc in DOCS:
        text = doc.read_text()
        for name in sorted(set(re.findall(r"\b(?:HF|TRANSFORMERS)_[A-Z_]*[A-Z]\b", text))):
            assert name in sources, f"{doc.name}: {name} is read by nothing"
    assert {"MODEL_CACHE_PATH", "MODEL_NAME", "HF_TOKEN"} <= setting_names()


def exported_metrics() -> set[str]:
    from gnosis_ocr.api.metrics import HttpMetrics
    from gnosis_ocr.jobs.webhooks import WebhookMetrics
    from gnosis_ocr.modelcache.metrics import CacheMetrics

    registry = CollectorRegistry()
    CacheMetrics(registry)
    HttpMetrics(registry)
    WebhookMetrics(registry)
    try:
        from gnosis_ocr.jobs.metrics import JobMetrics
    except ImportError:
        pass
    else:
        JobMetrics(registry)
    names = set()
    for family in registry.collect():
        names.add(family.name)
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [])
        names |= {family.name + s for s in suffixes}
    return names


def test_every_metric_in_the_docs_is_exported() -> None:
    exported = exported_metrics()
    for doc in DOCS:
        for name in sorted(set(re.findall(r"\bgnosis_[a-z_]*[a-z]\b", doc.read_text())) - {"gnosis_ocr"}):
            assert name in exported, f"{doc.name}: {name} is not a metric"


def slug(heading: str) -> str:
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    return {slug(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)}


def test_links_between_the_docs_land() -> None:
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if "://" in target:
                continue
            file, _, anchor = target.partition("#")
            path = (doc.parent / file) if file else doc
            assert path.exists(), f"{doc.name}: link to {target}"
            if anchor:
                assert anchor in anchors(path), f"{doc.name}: no heading for #{anchor} in {path.name}"
