"""Run what the manifests say: the DaemonSet's clawtermd and the example agent.

Each container is started on this machine with the program and arguments its
manifest gives (the image's ENTRYPOINT/CMD, parsed from the Dockerfile, where
the manifest leaves them to the image, by Kubernetes' rules) and with its
manifest's environment on top of the image's ENV. Only host-specific values
are rewritten, and every rewrite is recorded and checked to be one of:

* ``path``: a path inside the container moves to a temporary directory that
  stands in for the volume behind it: hostPath ``/X`` is ``<tmp>/host/X`` for
  every pod (so the daemon and the agent share the node's socket directory
  exactly as on a node), a Secret or emptyDir is a directory of its own, and
  a path of the image's own filesystem is ``<tmp>/root-<container>/X``, where
  the container's mounts below it appear as symbolic links;
* ``port``: a declared containerPort becomes a free port of this machine (the
  hostPort mapping a node would do), on the protocol the manifest declares;
* ``address``: a wildcard or pod address becomes 127.0.0.1, so nothing
  listens beyond loopback here (``CLAWTERM_HOST`` may be added for that);
* ``secret-removed`` (zero-config test only): the Secret-backed settings are
  dropped so the daemon makes its own certificate and development token.

The Secrets are files the test makes in their stand-in directories: a
self-signed certificate (``cryptography``, a runtime dependency) and a token
file in the format of docs/architecture.md. The chown initContainers are not
run: the stand-in directories already belong to the user running the tests.

Then the probes of the manifests are run as the kubelet would (HTTP GET on
the probe port, exec of the probe command), and a client attaches through
the daemon's ``tls`` port: TLS 1.3, CONNECT, and an ACCEPT back (SPEC §5).
"""

from __future__ import annotations

import hashlib
import importlib.util
import ipaddress
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath

import pytest
from fastcrc import crc16

from .kube import (
    AGENT_EXAMPLE,
    DAEMONSET,
    Obj,
    Stage,
    container_argv,
    container_port,
    contract,
    dockerfile,
    main_container,
    pod_spec,
    volumes,
    workload,
)

pytest.importorskip(
    "clawterm.daemon.cli",
    reason="the daemon (clawterm.daemon.cli) has not landed yet",
)
if importlib.util.find_spec("clawterm.agent.cli") is None:
    pytest.skip(
        "the agent (clawterm.agent.cli) has not landed yet",
        allow_module_level=True,
    )

encode_frame: Callable[..., bytes] | None
try:
    from clawterm.frame import encode_frame
except ImportError:  # pragma: no cover - the codec is optional for this test
    encode_frame = None

# Wire values (SPEC §2, §3, §5, §12).
FLAG = 0x7E
HEADER = struct.Struct(">BIIBBH")
CONNECT, ACCEPT, RESUME, RESUMED, DISCONNECT, ERROR = 0x01, 0x02, 0x03, 0x04, 0x40, 0xFF
CAPS = 0x01 | 0x02 | 0x04  # ACK, RESUME2, WINSIZE
NO_SUCH_AGENT = 7
ALPN = "clawterm/1"

#: Options and env names whose value is a port number, and the port's protocol.
PORT_SETTINGS = {"--port": "TCP", "--quic-port": "UDP"}
WILDCARDS = {"0.0.0.0", "::", "[::]", ""}
STARTUP_TIMEOUT = 30.0


def frame(type_: int, sid: int, seq: int, payload: bytes = b"", flags: int = 0) -> bytes:
    if encode_frame is not None:
        return encode_frame(type_, sid, seq, payload, flags)
    head = HEADER.pack(FLAG, sid, seq, type_, flags, len(payload))
    return head + payload + crc16.umts(head + payload).to_bytes(2, "big")


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


@dataclass
class Frame:
    type: int
    flags: int
    sid: int
    seq: int
    payload: bytes

    def error(self) -> str:
        code = int.from_bytes(self.payload[:2], "big") if len(self.payload) >= 2 else -1
        return f"ERROR {code}: {self.payload[2:].decode(errors='replace')}"


def read_frame(sock: socket.socket) -> Frame:
    head = recv_exactly(sock, HEADER.size)
    flag, sid, seq, type_, flags, length = HEADER.unpack(head)
    assert flag == FLAG, f"first byte 0x{flag:02x}"
    rest = recv_exactly(sock, length + 2)
    assert crc16.umts(head + rest[:-2]) == int.from_bytes(rest[-2:], "big"), "bad CRC"
    return Frame(type_, flags, sid, seq, rest[:-2])


# -- the stand-in node -----------------------------------------------------------


@dataclass
class Rewrite:
    kind: str  #: path | port | address | secret-removed
    where: str  #: e.g. "args[4]" or "env CLAWTERM_METRICS"
    old: str | None
    new: str | None


def free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Node:
    """A temporary directory standing in for one node: host paths and ports."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.host = root / "host"
        self.host.mkdir()
        #: (containerPort, protocol) -> the port on this machine
        self.ports: dict[tuple[int, str], int] = {}
        #: Containers started on this node, stopped at the end of the test.
        self.containers: list[Container] = []

    def host_path(self, path: str) -> Path:
        return self.host / path.lstrip("/")

    def port(self, container_port: int, protocol: str) -> int:
        key = (container_port, protocol)
        if key not in self.ports:
            kind = socket.SOCK_DGRAM if protocol == "UDP" else socket.SOCK_STREAM
            self.ports[key] = free_port(kind)
        return self.ports[key]


class Container:
    """One container of a manifest, made runnable on this machine."""

    def __init__(self, node: Node, path: Path, zero_config: bool = False) -> None:
        self.node = node
        self.obj = workload(path)
        self.spec = main_container(self.obj)
        self.name = self.spec["name"]
        self.stage: Stage = dockerfile().stage_for_image(self.spec["image"])
        self.rewrites: list[Rewrite] = []
        self.root = node.root / f"root-{self.name}"
        self.mounts = self._mounts()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = node.root / f"{self.name}.log"

        self.original_argv = container_argv(self.spec, self.stage)
        self.argv = self._rewrite_argv(self.original_argv)
        self.original_env, self.env = self._environment(zero_config)

    # -- volumes and paths

    def _mounts(self) -> list[tuple[PurePosixPath, Path, Obj]]:
        vols = volumes(self.obj)
        out = []
        for m in self.spec.get("volumeMounts", []):
            vol = vols[m["name"]]
            if "hostPath" in vol:
                where = self.node.host_path(vol["hostPath"]["path"])
            elif "secret" in vol:
                where = self.node.root / f"secret-{vol['secret']['secretName']}"
            elif "emptyDir" in vol:
                where = self.node.root / f"empty-{self.name}-{m['name']}"
            else:
                raise AssertionError(f"volume type of {m['name']} not handled")
            where.mkdir(parents=True, exist_ok=True)
            out.append((PurePosixPath(m["mountPath"]), where, vol))
        return out

    def map_path(self, value: str) -> str:
        """Where the container path ``value`` is on this machine."""
        path = PurePosixPath(value)
        on = [(mp, where) for mp, where, _ in self.mounts if path.is_relative_to(mp)]
        if on:
            mp, where = max(on, key=lambda m: len(m[0].parts))
            return str(where / path.relative_to(mp))
        # The image's own filesystem; mounts below the path show through.
        for mp, where, _ in self.mounts:
            if mp.is_relative_to(path):
                link = self.root / str(mp).lstrip("/")
                link.parent.mkdir(parents=True, exist_ok=True)
                if not link.is_symlink():
                    link.symlink_to(where, target_is_directory=True)
        return str(self.root / str(path).lstrip("/"))

    def secret_file(self, env_name: str) -> tuple[Path, Obj] | None:
        """The stand-in file and Secret volume behind a path-valued env var."""
        value = next(
            (e.get("value") for e in self.spec.get("env", []) if e["name"] == env_name), None
        )
        if value is None:
            return None
        for mp, where, vol in self.mounts:
            if "secret" in vol and PurePosixPath(value).is_relative_to(mp):
                return where / PurePosixPath(value).relative_to(mp), vol
        return None

    # -- rewriting

    def _rewrite(self, where: str, value: str, port_protocol: str | None = None) -> str:
        new, kind = value, ""
        if port_protocol is not None:
            declared = {(p["containerPort"], p.get("protocol", "TCP")) for p in self.ports()}
            assert (int(value), port_protocol) in declared, f"{where}: port {value} not declared"
            new, kind = str(self.node.port(int(value), port_protocol)), "port"
        elif value.startswith("/"):
            new, kind = self.map_path(value), "path"
        elif m := re.fullmatch(r"(\[[0-9a-fA-F:]*\]|[0-9.]*|\$\(\w+\)):(\d+)", value):
            host, port = m.groups()
            declared_tcp = {p["containerPort"] for p in self.ports() if p["protocol"] == "TCP"}
            assert int(port) in declared_tcp, f"{where}: listens on undeclared port {port}"
            assert host in WILDCARDS or host.startswith("$("), f"{where}: binds {host}"
            new, kind = f"127.0.0.1:{self.node.port(int(port), 'TCP')}", "address"
        if new != value:
            self.rewrites.append(Rewrite(kind, where, value, new))
        return new

    def ports(self) -> list[Obj]:
        return list(self.spec.get("ports", []))

    def _rewrite_argv(self, argv: list[str]) -> list[str]:
        out = [argv[0]]
        names = {n: o for o in contract().daemon for n in o.names}
        for i, word in enumerate(argv[1:], 1):
            prev = argv[i - 1]
            proto = PORT_SETTINGS.get(names[prev].names[-1]) if prev in names else None
            if word.startswith("-") and "=" in word:
                key, _, value = word.partition("=")
                proto = PORT_SETTINGS.get(names[key].names[-1]) if key in names else None
                out.append(f"{key}={self._rewrite(f'args[{i}]', value, proto)}")
            else:
                out.append(self._rewrite(f"args[{i}]", word, proto))
        return out

    def _environment(self, zero_config: bool) -> tuple[dict[str, str], dict[str, str]]:
        """(what the container would see, what it gets here)."""
        original: dict[str, str] = {}
        here: dict[str, str] = {}
        home = re.search(r"--home-dir (\S+)", " ".join(dockerfile().stage("runtime").runs))
        if home:  # the runtime sets HOME from the image's passwd entry
            original["HOME"] = home.group(1)
        original.update({k: v for k, v in self.stage.env.items() if k != "PATH"})
        env_ports = {
            o.env: PORT_SETTINGS[o.names[-1]]
            for o in contract().daemon
            if o.names[-1] in PORT_SETTINGS
        }
        for e in self.spec.get("env", []):
            name = e["name"]
            if "value" in e:
                value = re.sub(
                    r"\$\((\w+)\)", lambda m: original.get(m.group(1), m.group(0)), e["value"]
                )
            else:
                ref = e["valueFrom"]["fieldRef"]["fieldPath"]
                assert ref in ("status.podIP", "status.hostIP"), f"env {name}: {ref} not handled"
                value = "$(POD_IP)"  # an address: rewritten to loopback below
            original[name] = value
        for name, value in original.items():
            if zero_config and self.secret_file(name) is not None:
                self.rewrites.append(Rewrite("secret-removed", f"env {name}", value, None))
                continue
            here[name] = self._rewrite(f"env {name}", value, env_ports.get(name))
        if self.stage.entrypoint == ["clawtermd"]:
            # Listen on loopback only, unless the manifest chose the address.
            given = set(self.argv) | set(original)
            if not given & {"--host", "CLAWTERM_HOST"}:
                here["CLAWTERM_HOST"] = "127.0.0.1"
                self.rewrites.append(Rewrite("address", "env CLAWTERM_HOST", None, "127.0.0.1"))
        return original, here

    def check_rewrites(self) -> None:
        """Nothing but host-specific values differ from what the manifest says."""
        allowed = {"path", "port", "address", "secret-removed"}
        for r in self.rewrites:
            assert r.kind in allowed, r
            if r.kind == "path":
                assert r.old and r.old.startswith("/") and r.new
                assert Path(r.new).is_relative_to(self.node.root), r
            elif r.kind == "port":
                assert r.new and int(r.new) in self.node.ports.values(), r
            elif r.kind == "address":
                assert r.new and r.new.startswith("127.0.0.1"), r
        assert len(self.argv) == len(self.original_argv)
        for i, (old, new) in enumerate(zip(self.original_argv, self.argv, strict=True)):
            if old != new:
                assert any(r.where == f"args[{i}]" for r in self.rewrites), (old, new)
        for name in set(self.original_env) | set(self.env):
            if self.original_env.get(name) != self.env.get(name):
                assert any(r.where == f"env {name}" for r in self.rewrites), name

    # -- processes

    def process_env(self) -> dict[str, str]:
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("CLAWTERM_", "XDG_")) and k != "HOME"
        }
        # The venv running the tests stands in for the image's /opt/clawterm/bin.
        base["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}"
        return {**base, **self.env}

    def start(self) -> None:
        env = self.process_env()
        exe = shutil.which(self.argv[0], path=env["PATH"])
        assert exe, f"{self.argv[0]} not found on PATH"
        workdir = Path(self.map_path(self.stage.workdir))
        cwd = workdir if workdir.is_dir() else self.node.root
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [exe, *self.argv[1:]], env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT
            )

    def alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def stop(self, timeout: float) -> float:
        """SIGTERM, as the kubelet sends it; returns the seconds it took to exit."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            return 0.0
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return float("inf")
        return time.monotonic() - started

    # -- probes, as the kubelet runs them

    def probe(self, probe: Obj) -> bool:
        if "httpGet" in probe:
            get = probe["httpGet"]
            port = container_port(self.spec, get["port"])
            assert get.get("scheme", "HTTP") == "HTTP"
            url = f"http://127.0.0.1:{self.node.port(port['containerPort'], 'TCP')}{get['path']}"
            return http_status(url) == 200
        if "exec" in probe:
            cmd = [self.map_path(w) if w.startswith("/") else w for w in probe["exec"]["command"]]
            return subprocess.run(cmd, check=False, timeout=10).returncode == 0
        raise AssertionError(f"probe type not handled: {probe}")

    def wait_for(self, probe_name: str, timeout: float = STARTUP_TIMEOUT) -> None:
        probe = self.spec[probe_name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.alive()
            if self.probe(probe):
                return
            time.sleep(0.1)
        pytest.fail(f"{self.name}: {probe_name} never passed:\n{self.log_tail()}")


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return 0


# -- Secrets ---------------------------------------------------------------------


def make_certificate() -> tuple[bytes, bytes]:
    """A self-signed certificate for localhost/127.0.0.1 and its key (PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "clawtermd deploy test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def write_secret(path: Path, vol: Obj, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(vol["secret"].get("defaultMode", 0o644))


def provision_secrets(daemon: Container, tenant: int, agent: int) -> tuple[bytes, Path]:
    """Fill the Secret stand-ins; return a token for (tenant, agent) and the CA file."""
    cert_pem, key_pem = make_certificate()
    cert, key, tokens = (
        daemon.secret_file(n) for n in ("CLAWTERM_CERT", "CLAWTERM_KEY", "CLAWTERM_TOKENS")
    )
    assert cert and key and tokens, "the DaemonSet takes cert, key and tokens from Secrets"
    write_secret(*cert, cert_pem)
    write_secret(*key, key_pem)
    token = secrets.token_bytes(32)
    # The token file format of docs/architecture.md.
    toml = (
        "[[token]]\n"
        f"tenant = {tenant}\n"
        f"agents = [{agent}]\n"
        f'sha256 = "{hashlib.sha256(token).hexdigest()}"\n'
        'label = "deploy test"\n'
    )
    write_secret(*tokens, toml.encode())
    return token, cert[0]


# -- the client ------------------------------------------------------------------


def tls_connect(port: int, cafile: Path | None) -> ssl.SSLSocket:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols([ALPN])
    if cafile is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cafile)
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    tls = ctx.wrap_socket(sock, server_hostname="localhost")
    assert tls.version() == "TLSv1.3"
    assert tls.selected_alpn_protocol() == ALPN
    return tls


def connect_payload(tenant: int, agent: int, token: bytes) -> bytes:
    return struct.pack(">BBII32s16s", 1, CAPS, tenant, agent, token, secrets.token_bytes(16))


def attach(
    port: int, cafile: Path | None, tenant: int, agent: int, token: bytes
) -> tuple[ssl.SSLSocket, Frame]:
    """CONNECT until the daemon has registered the agent; return the socket and answer."""
    deadline = time.monotonic() + 10
    while True:
        tls = tls_connect(port, cafile)
        tls.sendall(frame(CONNECT, 0, 0, connect_payload(tenant, agent, token)))
        answer = read_frame(tls)
        no_agent = answer.type == ERROR and answer.payload[:2] == NO_SUCH_AGENT.to_bytes(2, "big")
        if not no_agent or time.monotonic() > deadline:
            return tls, answer
        tls.close()
        time.sleep(0.2)  # the registry (inotify) has not seen the socket yet


def explain(answer: Frame, node: Node) -> str:
    """An unexpected answer, with the logs of every container on the node."""
    what = answer.error() if answer.type == ERROR else repr(answer)
    logs = "".join(f"\n--- {c.name} log ---\n{c.log_tail()}" for c in node.containers)
    return what + logs


def check_accept(answer: Frame, node: Node) -> tuple[int, bytes]:
    """The ACCEPT of SPEC §5; returns the session id and resume token."""
    assert answer.type == ACCEPT, explain(answer, node)
    assert len(answer.payload) == 24
    sid, version, caps, resume_token, keepalive = struct.unpack(">IBB16sH", answer.payload)
    assert sid == answer.sid != 0
    assert version == 1 and keepalive > 0
    assert caps & 0x01  # the daemon acknowledges
    return sid, resume_token


# -- fixtures ----------------------------------------------------------------------


@pytest.fixture
def node() -> Iterator[Node]:
    # Short: Unix socket paths must fit in 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="ct", dir="/tmp"))
    n = Node(root)
    try:
        yield n
    finally:
        for c in reversed(n.containers):
            if c.proc is not None and c.proc.poll() is None:
                c.stop(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def container(node: Node, path: Path, zero_config: bool = False) -> Container:
    c = Container(node, path, zero_config)
    c.check_rewrites()
    node.containers.append(c)
    return c


def tenant_agent(agent: Container) -> tuple[int, int]:
    return int(agent.original_env["CLAWTERM_TENANT"]), int(agent.original_env["CLAWTERM_AGENT"])


def grace_seconds(path: Path) -> int:
    return int(pod_spec(workload(path)).get("terminationGracePeriodSeconds", 30))


# -- tests -------------------------------------------------------------------------


def test_daemonset_and_agent_example_run(node: Node) -> None:
    daemon = container(node, DAEMONSET)
    agent = container(node, AGENT_EXAMPLE)
    tenant, agent_id = tenant_agent(agent)
    token, cafile = provision_secrets(daemon, tenant, agent_id)

    daemon.start()
    agent.start()
    daemon.wait_for("readinessProbe")
    assert daemon.probe(daemon.spec["livenessProbe"])
    agent.wait_for("readinessProbe")

    # Prometheus scrapes where the annotations say.
    ann = workload(DAEMONSET)["spec"]["template"]["metadata"]["annotations"]
    metrics = node.port(int(ann["prometheus.io/port"]), "TCP")
    assert http_status(f"http://127.0.0.1:{metrics}{ann['prometheus.io/path']}") == 200

    # A client through the node port that maps to containerPort "tls".
    tls_port = node.port(container_port(daemon.spec, "tls")["containerPort"], "TCP")
    tls, answer = attach(tls_port, cafile, tenant, agent_id, token)
    sid, _ = check_accept(answer, node)

    # The session table is on the node (hostPath), where a new daemon finds it.
    state = Path(daemon.env["CLAWTERM_STATE_DIR"])
    assert state.is_relative_to(node.host)
    deadline = time.monotonic() + 5
    while not (state / "sessions.db").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (state / "sessions.db").exists()

    tls.sendall(frame(DISCONNECT, sid, 0))
    tls.close()

    # The daemon stops well within the pod's termination grace period.
    took = daemon.stop(timeout=grace_seconds(DAEMONSET))
    assert took < grace_seconds(DAEMONSET), daemon.log_tail()
    agent.stop(timeout=grace_seconds(AGENT_EXAMPLE))


def test_session_survives_daemon_restart(node: Node) -> None:
    """A rolling update, as the DaemonSet does it: SIGTERM, new daemon, same node."""
    daemon = container(node, DAEMONSET)
    agent = container(node, AGENT_EXAMPLE)
    tenant, agent_id = tenant_agent(agent)
    token, cafile = provision_secrets(daemon, tenant, agent_id)
    daemon.start()
    agent.start()
    daemon.wait_for("readinessProbe")
    agent.wait_for("readinessProbe")
    tls_port = node.port(container_port(daemon.spec, "tls")["containerPort"], "TCP")
    tls, answer = attach(tls_port, cafile, tenant, agent_id, token)
    sid, resume_token = check_accept(answer, node)

    assert daemon.stop(timeout=grace_seconds(DAEMONSET)) < grace_seconds(DAEMONSET)
    tls.close()
    daemon.start()  # the replacement pod: same manifest, same hostPaths
    daemon.wait_for("readinessProbe")

    tls = tls_connect(tls_port, cafile)
    tls.sendall(frame(RESUME, sid, 0, struct.pack(">II16s", sid, 0, resume_token)))
    answer = read_frame(tls)
    assert answer.type == RESUMED, explain(answer, node)
    assert struct.unpack(">I", answer.payload[:4])[0] == sid == answer.sid
    tls.sendall(frame(DISCONNECT, sid, 0))
    tls.close()


def test_zero_config_daemon_makes_dev_token(node: Node) -> None:
    """Without the Secrets the same manifest starts with its own cert and dev token."""
    daemon = container(node, DAEMONSET, zero_config=True)
    removed = {r.where for r in daemon.rewrites if r.kind == "secret-removed"}
    assert removed == {"env CLAWTERM_CERT", "env CLAWTERM_KEY", "env CLAWTERM_TOKENS"}
    daemon.start()
    daemon.wait_for("readinessProbe")

    state = Path(daemon.env["CLAWTERM_STATE_DIR"])
    for name in ("cert.pem", "key.pem", "dev-token"):
        assert (state / name).is_file(), f"{name} not in the state directory"
    for name in ("key.pem", "dev-token"):
        assert (state / name).stat().st_mode & 0o077 == 0, f"{name} readable by others"
    dev_token = (state / "dev-token").read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", dev_token)

    # The development token is for tenant 0; no agent of tenant 0 runs, so the
    # daemon gets past authentication and answers NO_SUCH_AGENT (SPEC §5 order).
    tls_port = node.port(container_port(daemon.spec, "tls")["containerPort"], "TCP")
    tls = tls_connect(tls_port, state / "cert.pem")
    tls.sendall(frame(CONNECT, 0, 0, connect_payload(0, 1, bytes.fromhex(dev_token))))
    answer = read_frame(tls)
    no_agent = NO_SUCH_AGENT.to_bytes(2, "big")
    assert answer.type == ERROR and answer.payload[:2] == no_agent, explain(answer, node)
    tls.close()
    assert daemon.stop(timeout=grace_seconds(DAEMONSET)) < grace_seconds(DAEMONSET)
