"""Readers for the deployment files, shared by the tests in tests/deploy.

Nothing here talks to a cluster or to Docker: the manifests are YAML, the
Dockerfile is parsed for the few things the tests need (stages, their base,
USER, ENV, ENTRYPOINT, CMD, RUN and COPY lines), and the command-line
contract is read from the tables of docs/architecture.md.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
MANIFESTS = sorted(K8S.glob("*.yaml"))
DAEMONSET = K8S / "daemonset.yaml"
AGENT_EXAMPLE = K8S / "agent-example.yaml"
NETWORKPOLICY = K8S / "networkpolicy.yaml"
DOCKERFILE = REPO / "Dockerfile"
ARCHITECTURE = REPO / "docs" / "architecture.md"
DEPLOY_DOC = REPO / "docs" / "deploy.md"

Obj = dict[str, Any]


# -- manifests ---------------------------------------------------------------


@cache
def _docs(path: Path) -> tuple[Obj, ...]:
    with path.open() as f:
        return tuple(d for d in yaml.safe_load_all(f) if d)


def load_docs(path: Path) -> list[Obj]:
    """The non-empty YAML documents of ``path`` (a fresh copy each call)."""
    return json.loads(json.dumps(_docs(path)))  # type: ignore[no-any-return]


def find(path: Path, kind: str) -> Obj:
    """The one object of ``kind`` in ``path``."""
    found = [d for d in load_docs(path) if d["kind"] == kind]
    assert len(found) == 1, f"{path.name}: expected one {kind}, found {len(found)}"
    return found[0]


def workload(path: Path) -> Obj:
    """The DaemonSet, Deployment or Pod of ``path``."""
    found = [d for d in load_docs(path) if d["kind"] in ("DaemonSet", "Deployment", "Pod")]
    assert len(found) == 1, f"{path.name}: expected one workload, found {len(found)}"
    return found[0]


def pod_spec(obj: Obj) -> Obj:
    spec: Obj = obj["spec"] if obj["kind"] == "Pod" else obj["spec"]["template"]["spec"]
    return spec


def pod_labels(obj: Obj) -> dict[str, str]:
    meta: Obj = obj["metadata"] if obj["kind"] == "Pod" else obj["spec"]["template"]["metadata"]
    return dict(meta.get("labels", {}))


def main_container(obj: Obj) -> Obj:
    containers: list[Obj] = pod_spec(obj)["containers"]
    assert len(containers) == 1, "one container per pod"
    return containers[0]


def all_containers(obj: Obj) -> Iterator[tuple[str, Obj]]:
    """("init" | "main", container) for every container of the pod."""
    spec = pod_spec(obj)
    for c in spec.get("initContainers", []):
        yield "init", c
    for c in spec["containers"]:
        yield "main", c


def volumes(obj: Obj) -> dict[str, Obj]:
    return {v["name"]: v for v in pod_spec(obj).get("volumes", [])}


def env_list(container: Obj) -> list[Obj]:
    return list(container.get("env", []))


def env_values(container: Obj) -> dict[str, str]:
    """Plain ``value`` env entries of a container."""
    return {e["name"]: e["value"] for e in env_list(container) if "value" in e}


def container_port(container: Obj, port: int | str) -> Obj:
    """The ports entry a probe's ``port`` (number or name) refers to."""
    for p in container.get("ports", []):
        if port in (p.get("name"), p["containerPort"]):
            return p  # type: ignore[no-any-return]
    raise AssertionError(f"no container port {port!r} in {container['name']}")


def image_name(image: str) -> str:
    """``registry/path/name:tag`` -> ``name``."""
    return image_ref(image).split(":", 1)[0]


def image_tag(image: str) -> str:
    last = image_ref(image)
    return last.split(":", 1)[1] if ":" in last else "latest"


def image_ref(image: str) -> str:
    """``registry/path/name:tag@digest`` -> ``name:tag``."""
    return image.rsplit("/", 1)[-1].split("@", 1)[0]


def project_version() -> str:
    with (REPO / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


# -- the command-line contract (docs/architecture.md) ------------------------


@dataclass(frozen=True)
class Option:
    names: tuple[str, ...]  #: e.g. ("-p", "--port")
    env: str  #: e.g. "CLAWTERM_PORT"
    default: str  #: the default column, backticks removed


@dataclass
class Contract:
    """The option tables and agent usage line of docs/architecture.md."""

    daemon: list[Option] = field(default_factory=list)
    daemon_subcommands: set[str] = field(default_factory=set)
    metrics_paths: set[str] = field(default_factory=set)
    agent_modes: set[str] = field(default_factory=set)
    agent_options: set[str] = field(default_factory=set)
    agent_env: set[str] = field(default_factory=set)
    agent_defaults: dict[str, str] = field(default_factory=dict)

    @property
    def daemon_env(self) -> set[str]:
        return {o.env for o in self.daemon}

    def daemon_option(self, name: str) -> Option:
        """The option with command-line name or env name ``name``."""
        for o in self.daemon:
            if name in o.names or name == o.env:
                return o
        raise KeyError(name)


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    nxt = re.search(r"^#{1,3} ", text[start + len(heading) :], re.M)
    return text[start : start + len(heading) + (nxt.start() if nxt else len(text))]


@cache
def contract() -> Contract:
    text = ARCHITECTURE.read_text()
    c = Contract()

    daemon = _section(text, "### `clawtermd` (daemon)")
    for line in daemon.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith("`-"):
            continue
        chunks = re.findall(r"`([^`]+)`", cells[0])
        names = [n.strip() for chunk in chunks for n in chunk.split(",")]
        envs = re.findall(r"`(CLAWTERM_[A-Z_]+)`", cells[1])
        default = cells[2].replace("`", "")
        longs = [n for n in names if n.startswith("--")]
        shorts = [n for n in names if not n.startswith("--")]
        if len(envs) == len(longs) > 1:  # `--cert`, `--key` | `CLAWTERM_CERT`, `CLAWTERM_KEY`
            c.daemon += [Option((n,), e, default) for n, e in zip(longs, envs, strict=True)]
        else:
            assert len(envs) == 1 and len(longs) == 1, line
            c.daemon.append(Option((*shorts, longs[0]), envs[0], default))
        if "CLAWTERM_METRICS" in envs:
            c.metrics_paths = set(re.findall(r"`(/[a-z]+)`", cells[3]))
    c.daemon_subcommands = set(re.findall(r"`clawtermd (\w+)", daemon))

    agent = _section(text, "### `clawterm-agent`")
    usage = re.search(r"`clawterm-agent \{([a-z,]+)\}([^`]*)`", agent)
    assert usage, "agent usage line not found in docs/architecture.md"
    c.agent_modes = set(usage.group(1).split(","))
    c.agent_options = set(re.findall(r"\[(--[a-z-]+)", usage.group(2)))
    c.agent_env = set(re.findall(r"`(CLAWTERM_[A-Z_]+)`", agent))
    defaults = re.search(r"Defaults: (.*)", agent)
    assert defaults
    for part in defaults.group(1).split(","):  # "socket dir `/run/claw/sockets`", "grace 60 s"
        m = re.match(r"([a-z ]+?) `?([^` ]+)`?(?: s)?$", part.strip().rstrip("."))
        if m:
            c.agent_defaults[m.group(1)] = m.group(2)
    return c


# -- the Dockerfile ----------------------------------------------------------


@dataclass
class Stage:
    name: str
    base: str  #: the FROM argument, ARGs expanded
    parent: Stage | None = None  #: the earlier stage it is FROM, if any
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    user: str = ""
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    runs: list[str] = field(default_factory=list)
    copies: list[str] = field(default_factory=list)
    expose: list[str] = field(default_factory=list)


@dataclass
class Dockerfile:
    stages: list[Stage]
    #: image name (last path component of a `docker build -t`) -> build target
    targets: dict[str, str]

    def stage(self, name: str | None) -> Stage:
        """The named stage; None is the last stage (what `docker build` makes)."""
        if name is None:
            return self.stages[-1]
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    def stage_for_image(self, image: str) -> Stage:
        target = self.targets[image_name(image)]
        return self.stage(target or None)


def _instructions(text: str) -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, argument) pairs; comments dropped, continuations joined."""
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or not line:
            continue  # comments may also sit between continuation lines
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        word, _, rest = full.partition(" ")
        yield word.upper(), rest.strip()


def _exec_form(arg: str) -> list[str]:
    if arg.startswith("["):
        value = json.loads(arg)
        assert isinstance(value, list)
        return [str(v) for v in value]
    return ["/bin/sh", "-c", arg]


def _expand(value: str, variables: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        return variables.get(m.group(1) or m.group(2), "")

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, value)


@cache
def dockerfile() -> Dockerfile:
    text = DOCKERFILE.read_text()
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    cur: Stage | None = None
    for ins, arg in _instructions(text):
        if ins == "ARG" and cur is None:
            name, _, default = arg.partition("=")
            global_args[name] = default
        elif ins == "FROM":
            words = arg.split()
            base = _expand(words[0], global_args)
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            parent = next((s for s in stages if s.name == base), None)
            cur = Stage(name=name, base=base, parent=parent)
            if parent is not None:
                cur.entrypoint, cur.cmd = list(parent.entrypoint), list(parent.cmd)
                cur.user, cur.env, cur.workdir = parent.user, dict(parent.env), parent.workdir
            stages.append(cur)
        elif cur is None:
            continue
        elif ins == "ENTRYPOINT":
            cur.entrypoint = _exec_form(arg)
            cur.cmd = []  # Docker: setting ENTRYPOINT resets an inherited CMD
        elif ins == "CMD":
            cur.cmd = _exec_form(arg)
        elif ins == "USER":
            cur.user = arg
        elif ins == "WORKDIR":
            cur.workdir = arg
        elif ins == "ENV":
            for pair in shlex.split(arg):
                key, _, value = pair.partition("=")
                cur.env[key] = value
        elif ins == "RUN":
            cur.runs.append(arg)
        elif ins == "COPY":
            cur.copies.append(arg)
        elif ins == "EXPOSE":
            cur.expose += arg.split()
    targets = {}
    for m in re.finditer(r"docker build (?:--target (\S+) )?-t (\S+) \.", text):
        targets[image_name(m.group(2))] = m.group(1) or ""
    return Dockerfile(stages, targets)


def image_uid_gid(stage: Stage) -> tuple[int, int]:
    """The numeric USER of a stage (a name would defeat runAsNonRoot)."""
    user, _, group = stage.user.partition(":")
    assert user.isdigit(), f"USER {stage.user!r} of stage {stage.name} is not numeric"
    return int(user), int(group or user)


def container_argv(container: Obj, stage: Stage) -> list[str]:
    """What the container runs, by Kubernetes' rules for command/args."""
    if "command" in container:
        return [*container["command"], *container.get("args", [])]
    if "args" in container:
        return [*stage.entrypoint, *container["args"]]
    return [*stage.entrypoint, *stage.cmd]


def option_values(argv: list[str]) -> dict[str, str]:
    """``--opt value`` / ``--opt=value`` / ``-o value`` pairs of an argv (no flags)."""
    out: dict[str, str] = {}
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            break
        if word.startswith("-") and "=" in word:
            key, _, value = word.partition("=")
            out[key] = value
        elif word.startswith("-") and i + 1 < len(argv):
            out[word] = argv[i + 1]
            i += 1
        i += 1
    return out
