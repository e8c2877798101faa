"""Structure of the Kubernetes manifests, checked against the project's contract.

Nothing runs here: the manifests are read as YAML and compared with
docs/architecture.md (option and env names, defaults), the Dockerfile (user,
entrypoints) and the SPEC's facts the brief of each file states.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest

from .kube import (
    AGENT_EXAMPLE,
    DAEMONSET,
    DEPLOY_DOC,
    MANIFESTS,
    NETWORKPOLICY,
    Obj,
    all_containers,
    container_argv,
    container_port,
    contract,
    dockerfile,
    env_list,
    env_values,
    find,
    image_name,
    image_tag,
    image_uid_gid,
    load_docs,
    main_container,
    option_values,
    pod_labels,
    pod_spec,
    project_version,
    volumes,
    workload,
)

WORKLOADS = [DAEMONSET, AGENT_EXAMPLE]
#: How long clawtermd takes to stop after SIGTERM (its shutdown budget).
DAEMON_SHUTDOWN_SECONDS = 5


def daemonset() -> Obj:
    return find(DAEMONSET, "DaemonSet")


def daemon() -> Obj:
    return main_container(daemonset())


def daemon_argv() -> list[str]:
    c = daemon()
    return container_argv(c, dockerfile().stage_for_image(c["image"]))


def daemon_setting(name: str) -> str | None:
    """An option's value as the daemon sees it: command line first, then env."""
    opt = contract().daemon_option(name)
    given = option_values(daemon_argv()[1:])
    for n in opt.names:
        if n in given:
            return given[n]
    return env_values(daemon()).get(opt.env)


def mount_for(container: Obj, path: str) -> Obj:
    for m in container.get("volumeMounts", []):
        if PurePosixPath(path).is_relative_to(m["mountPath"]):
            return m  # type: ignore[no-any-return]
    raise AssertionError(f"{path} is not on a volume of {container['name']}")


# -- objects -------------------------------------------------------------------


def test_namespace_and_service_account() -> None:
    ns = find(DAEMONSET, "Namespace")
    assert ns["metadata"]["name"] == "clawterm"
    sa = find(DAEMONSET, "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False
    for obj in load_docs(DAEMONSET) + load_docs(NETWORKPOLICY):
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "clawterm", obj["kind"]
    spec = pod_spec(daemonset())
    assert spec["serviceAccountName"] == sa["metadata"]["name"]
    assert spec["automountServiceAccountToken"] is False


@pytest.mark.parametrize("path", WORKLOADS, ids=lambda p: p.name)
def test_workload_namespace_is_declared(path: Path) -> None:
    names = {d["metadata"]["name"] for d in load_docs(path) if d["kind"] == "Namespace"}
    assert workload(path)["metadata"]["namespace"] in names


def test_daemonset_selector_matches_template() -> None:
    ds = daemonset()
    assert ds["spec"]["selector"]["matchLabels"].items() <= pod_labels(ds).items()


# -- the daemon: command line, env, ports --------------------------------------


def test_daemon_runs_clawtermd_with_contract_options() -> None:
    argv = daemon_argv()
    assert argv[0] == "clawtermd"
    known = {n for o in contract().daemon for n in o.names}
    for opt in option_values(argv[1:]):
        assert opt in known, f"{opt} is not a clawtermd option in docs/architecture.md"
    assert not [w for w in argv[1:] if not w.startswith("-") and w in contract().daemon_subcommands]


def test_daemon_env_names_are_in_contract() -> None:
    for e in env_list(daemon()):
        assert e["name"] in contract().daemon_env, e["name"]


def test_daemon_ports_match_contract_defaults() -> None:
    c = daemon()
    tls, quic, health = (container_port(c, n) for n in ("tls", "quic", "health"))
    assert (tls["protocol"], quic["protocol"], health["protocol"]) == ("TCP", "UDP", "TCP")
    port_default = int(contract().daemon_option("--port").default)
    quic_default = int(contract().daemon_option("--quic-port").default)
    assert tls["containerPort"] == tls["hostPort"] == port_default == 7220
    assert quic["containerPort"] == quic["hostPort"] == quic_default == 7221
    # The daemon listens where the ports say.
    assert int(daemon_setting("--port") or port_default) == tls["containerPort"]
    assert int(daemon_setting("--quic-port") or quic_default) == quic["containerPort"]
    metrics = daemon_setting("--metrics") or contract().daemon_option("--metrics").default
    assert int(metrics.rsplit(":", 1)[1]) == health["containerPort"] == 9720
    # Health and metrics are never published on the node.
    assert "hostPort" not in health
    assert {p["name"] for p in c["ports"]} == {"tls", "quic", "health"}


def test_metrics_listener_is_reachable_by_the_kubelet() -> None:
    """127.0.0.1 in the pod is unreachable for probes: it must listen wider."""
    metrics = daemon_setting("--metrics")
    assert metrics is not None, "CLAWTERM_METRICS must be set: the default is loopback"
    host = metrics.rsplit(":", 1)[0].strip("[]")
    if not host.startswith("$("):  # the pod IP from the downward API is fine too
        assert not ipaddress.ip_address(host).is_loopback


def test_probes() -> None:
    c = daemon()
    paths = contract().metrics_paths
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = c[probe]["httpGet"]
        assert get["path"] == path and path in paths
        assert get.get("scheme", "HTTP") == "HTTP"
        assert container_port(c, get["port"])["name"] == "health"


def test_prometheus_annotations() -> None:
    ann = daemonset()["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert int(ann["prometheus.io/port"]) == container_port(daemon(), "health")["containerPort"]
    assert ann["prometheus.io/path"] == "/metrics" and "/metrics" in contract().metrics_paths


def test_daemon_host_paths() -> None:
    c = daemon()
    vols = volumes(daemonset())
    host = {n: v["hostPath"] for n, v in vols.items() if "hostPath" in v}
    assert sorted(h["path"] for h in host.values()) == ["/run/claw/sockets", "/var/lib/clawterm"]
    assert all(h["type"] == "DirectoryOrCreate" for h in host.values())

    socket_dir = daemon_setting("--socket-dir")
    assert socket_dir == contract().daemon_option("--socket-dir").default == "/run/claw/sockets"
    m = mount_for(c, socket_dir)
    assert m["mountPath"] == socket_dir and host[m["name"]]["path"] == socket_dir

    state = env_values(c)["CLAWTERM_STATE_DIR"]
    assert state == "/var/lib/clawterm" == dockerfile().stage(None).env["CLAWTERM_STATE_DIR"]
    m = mount_for(c, state)
    assert m["mountPath"] == state and host[m["name"]]["path"] == "/var/lib/clawterm"
    assert not m.get("readOnly", False)


def test_tls_and_tokens_come_from_read_only_secrets() -> None:
    c = daemon()
    vols = volumes(daemonset())
    env = env_values(c)
    secrets = set()
    for name in ("CLAWTERM_CERT", "CLAWTERM_KEY", "CLAWTERM_TOKENS"):
        m = mount_for(c, env[name])
        assert m.get("readOnly") is True, name
        secret = vols[m["name"]]["secret"]
        secrets.add(secret["secretName"])
        filename = str(PurePosixPath(env[name]).relative_to(m["mountPath"]))
        if "items" in secret:
            assert filename in {i["path"] for i in secret["items"]}
        else:  # a kubernetes.io/tls Secret holds tls.crt and tls.key
            assert filename in {"tls.crt", "tls.key"}
        assert secret["defaultMode"] & 0o007 == 0, "Secret files must not be world-readable"
    assert secrets == {"clawterm-tls", "clawterm-tokens"}
    assert (
        pod_spec(daemonset())["securityContext"]["fsGroup"]
        == image_uid_gid(dockerfile().stage(None))[1]
    ), "fsGroup lets the non-root daemon read the 0440 Secret files"


def test_rolling_update_without_surge() -> None:
    strategy = daemonset()["spec"]["updateStrategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 0}


def test_termination_grace_covers_shutdown() -> None:
    grace = pod_spec(daemonset())["terminationGracePeriodSeconds"]
    assert DAEMON_SHUTDOWN_SECONDS < grace <= 30


# -- both workloads: security and resources ------------------------------------


@pytest.mark.parametrize("path", WORKLOADS, ids=lambda p: p.name)
def test_security_context(path: Path) -> None:
    obj = workload(path)
    spec = pod_spec(obj)
    pod_sc = spec.get("securityContext", {})
    assert pod_sc.get("runAsNonRoot") is True
    assert spec.get("automountServiceAccountToken") is False
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
    for role, c in all_containers(obj):
        sc = c["securityContext"]
        where = f"{path.name}:{c['name']}"
        assert sc["allowPrivilegeEscalation"] is False, where
        assert sc["readOnlyRootFilesystem"] is True, where
        assert sc["capabilities"]["drop"] == ["ALL"], where
        assert not sc.get("privileged"), where
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile"))
        assert seccomp == {"type": "RuntimeDefault"}, where
        uid, gid = image_uid_gid(dockerfile().stage_for_image(c["image"]))
        if role == "main":
            assert sc["runAsNonRoot"] is True, where
            assert (sc["runAsUser"], sc["runAsGroup"]) == (uid, gid) != (0, 0), where
            assert (pod_sc["runAsUser"], pod_sc["runAsGroup"]) == (uid, gid), where
            assert "add" not in sc["capabilities"], where
        else:
            check_chown_init(obj, c, uid, gid, where)


def check_chown_init(obj: Obj, c: Obj, uid: int, gid: int, where: str) -> None:
    """The only root container: chown of exactly the hostPath dirs, CAP_CHOWN only."""
    sc = c["securityContext"]
    assert sc["runAsUser"] == 0 and sc["runAsNonRoot"] is False, where
    assert sc["capabilities"]["add"] == ["CHOWN"], where
    vols = volumes(obj)
    host_mounts = [m["mountPath"] for m in c["volumeMounts"] if "hostPath" in vols[m["name"]]]
    assert len(host_mounts) == len(c["volumeMounts"]), f"{where}: mounts only hostPath dirs"
    # ["chown", "U:G", dirs...], or a short `sh -ec` script around that chown.
    command = c["command"]
    if command[:2] == ["sh", "-ec"]:
        assert len(command) == 3, where
        script = command[2]
        assert not re.search(r"ch(own|mod) -", script), f"{where}: never recursive"
        chowns = re.findall(r"\bchown ([^;&|\n]+)", script)
        assert len(chowns) == 1, where
        command = ["chown", *chowns[0].split()]
    assert command == ["chown", f"{uid}:{gid}", *host_mounts], where
    main_mounts = {
        m["name"]: m["mountPath"] for m in main_container(obj)["volumeMounts"]
    }  # the same directories the main container writes
    for m in c["volumeMounts"]:
        assert main_mounts[m["name"]] == m["mountPath"], where
    assert {n for n, v in vols.items() if "hostPath" in v} == {
        m["name"] for m in c["volumeMounts"]
    }, f"{where}: every hostPath volume is handed to the non-root user"


@pytest.mark.parametrize("path", WORKLOADS, ids=lambda p: p.name)
def test_tmp_is_an_empty_dir(path: Path) -> None:
    obj = workload(path)
    m = mount_for(main_container(obj), "/tmp")
    assert m["mountPath"] == "/tmp" and "emptyDir" in volumes(obj)[m["name"]]


@pytest.mark.parametrize("path", WORKLOADS, ids=lambda p: p.name)
def test_resources(path: Path) -> None:
    for _, c in all_containers(workload(path)):
        res = c["resources"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= res[kind].keys(), f"{c['name']} {kind}"


@pytest.mark.parametrize("path", WORKLOADS, ids=lambda p: p.name)
def test_images_are_built_by_the_dockerfile(path: Path) -> None:
    df = dockerfile()
    for _, c in all_containers(workload(path)):
        assert image_name(c["image"]) in df.targets, c["image"]
        assert image_tag(c["image"]) == project_version(), c["image"]
        assert c["imagePullPolicy"] == "IfNotPresent"


# -- network policy --------------------------------------------------------------


def test_network_policy() -> None:
    np = find(NETWORKPOLICY, "NetworkPolicy")
    assert np["metadata"]["namespace"] == daemonset()["metadata"]["namespace"]
    assert np["spec"]["podSelector"]["matchLabels"].items() <= pod_labels(daemonset()).items()
    assert set(np["spec"]["policyTypes"]) >= {"Ingress"}
    c = daemon()
    declared = {(p["containerPort"], p["protocol"]) for p in c["ports"]}
    health = container_port(c, "health")["containerPort"]
    opened: set[tuple[int, str]] = set()
    for rule in np["spec"]["ingress"]:
        ports = {(p["port"], p.get("protocol", "TCP")) for p in rule["ports"]}
        assert ports <= declared
        opened |= ports
        if (health, "TCP") in ports:
            # Metrics only for the monitoring namespace, nothing else in that rule.
            assert ports == {(health, "TCP")}
            monitoring = {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
            assert rule["from"] == [{"namespaceSelector": monitoring}]
    assert opened == declared


# -- the agent example -------------------------------------------------------------


def agent() -> Obj:
    return main_container(workload(AGENT_EXAMPLE))


def test_agent_runs_a_contract_mode() -> None:
    c = agent()
    argv = container_argv(c, dockerfile().stage_for_image(c["image"]))
    assert argv[0] == "clawterm-agent"
    assert argv[1] in contract().agent_modes
    for opt in option_values(argv[2:]):
        assert opt in contract().agent_options
    for e in env_list(c):
        assert e["name"] in contract().agent_env, e["name"]


def test_agent_mounts_only_its_tenant_directory() -> None:
    obj = workload(AGENT_EXAMPLE)
    c = agent()
    env = env_values(c)
    socket_dir, tenant, agent_id = (
        env["CLAWTERM_SOCKET_DIR"],
        env["CLAWTERM_TENANT"],
        env["CLAWTERM_AGENT"],
    )
    assert socket_dir == contract().agent_defaults["socket dir"] == daemon_setting("--socket-dir")
    assert tenant.isdigit() and agent_id.isdigit() and tenant != "0"
    tenant_dir = f"{socket_dir}/{tenant}"

    vols = volumes(obj)
    host = {n: v["hostPath"] for n, v in vols.items() if "hostPath" in v}
    assert list(host.values()) == [{"path": tenant_dir, "type": "DirectoryOrCreate"}]
    for _, cont in all_containers(obj):
        for m in cont["volumeMounts"]:
            if m["name"] in host:
                assert m["mountPath"] == tenant_dir, "the tenant dir, where the agent expects it"
    # Nothing of the socket directory above the tenant's own is visible.
    for m in c["volumeMounts"]:
        assert not PurePosixPath(socket_dir).is_relative_to(m["mountPath"]), m
    # The readiness probe looks for the socket where the daemon will (SPEC §1, §15).
    assert c["readinessProbe"]["exec"]["command"] == [
        "test",
        "-S",
        f"{tenant_dir}/{agent_id}.sock",
    ]


def test_agent_is_pinned_to_a_node() -> None:
    spec = pod_spec(workload(AGENT_EXAMPLE))
    assert spec.get("nodeSelector") or spec.get("affinity", {}).get("nodeAffinity")


def test_agent_never_runs_twice() -> None:
    obj = workload(AGENT_EXAMPLE)
    if obj["kind"] == "Deployment":
        assert obj["spec"]["replicas"] == 1
        assert obj["spec"]["strategy"]["type"] == "Recreate"


# -- docs ------------------------------------------------------------------------------


def test_deploy_doc_matches_the_manifests() -> None:
    doc = DEPLOY_DOC.read_text()
    for path in MANIFESTS:
        assert f"k8s/{path.name}" in doc
    vols = volumes(daemonset())
    for v in vols.values():
        if "secret" in v:
            assert v["secret"]["secretName"] in doc
    assert "kubectl -n clawterm create secret tls clawterm-tls" in doc
    assert "kubectl -n clawterm create secret generic clawterm-tokens" in doc
    assert "clawtermd token new" in doc
    assert "deploy/image_env.py" in doc
    for name, target in dockerfile().targets.items():
        assert name in doc and (not target or f"--target {target}" in doc)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_daemon_init_script_is_idempotent(tmp_path: Path) -> None:
    """The chown initContainer's script, on fresh root-owned dirs and again."""
    init = pod_spec(daemonset())["initContainers"][0]
    uid, gid = image_uid_gid(dockerfile().stage_for_image(init["image"]))
    script = init["command"][2]
    dirs = {m["mountPath"]: tmp_path / m["name"] for m in init["volumeMounts"]}
    for path, stand_in in dirs.items():
        stand_in.mkdir(mode=0o755)
        script = script.replace(path, str(stand_in))
    # With the capabilities the manifest grants and no others, where setpriv exists.
    caps = ",".join(f"+{c.lower()}" for c in init["securityContext"]["capabilities"]["add"])
    setpriv = ["setpriv", f"--bounding-set=-all,{caps}"] if shutil.which("setpriv") else []
    for _ in range(2):  # a new node, then every later start of the pod
        subprocess.run([*setpriv, *init["command"][:2], script], check=True, timeout=10)
        for stand_in in dirs.values():
            st = stand_in.stat()
            assert (st.st_uid, st.st_gid) == (uid, gid)
    state = dirs[env_values(daemon())["CLAWTERM_STATE_DIR"]]
    assert state.stat().st_mode & 0o777 == 0o700
