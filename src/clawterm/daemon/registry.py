"""The pod registry: which agents have a socket the daemon can reach (SPEC §15).

Layout: ``<socket_dir>/<tenant_id>/<agent_id>.sock``, ids in canonical
decimal u32 (``0``, ``17``; never ``017``, ``-1`` or above 4294967295).

How it works. One inotify instance watches ``socket_dir`` (for tenant
directories coming and going) and every tenant directory (for sockets
coming and going). Everything is driven by one idempotent step,
:meth:`AgentRegistry._scan_tenant`: list a tenant directory, diff it with
what is registered, and fix the difference. Events only say *where* to
look again:

* a tenant directory appears → add its watch **first**, then scan it. A
  socket created between the two is seen by the scan; one created after
  the watch also gives an event, which finds it already registered;
* a tenant directory disappears → unregister all its agents;
* a socket appears (IN_CREATE, IN_MOVED_TO) → register it if ``lstat``
  says it is a socket; it disappears (IN_DELETE, IN_MOVED_FROM) →
  unregister;
* the kernel queue overflows (IN_Q_OVERFLOW) or ``socket_dir`` itself is
  deleted or moved → rescan everything (recreating ``socket_dir``). A
  deleted directory sends IN_DELETE_SELF only once no open socket still
  pins it, so a timer also checks every ``check_interval`` seconds that
  ``socket_dir`` is still the inode being watched.

Because every handler converges on "what is on disk now", events that
arrive late or twice do no harm. Agents should bind to a temporary
dot-name in their tenant directory, ``listen()``, then ``rename()`` into
place, so the daemon never sees a socket that is not yet listening; names
starting with ``.`` are ignored silently for that reason. Other names are
ignored and logged once each.

A socket that refuses connections is stale: the daemon calls
:meth:`AgentRegistry.discard` (SPEC §15). It stays unregistered until an
event says the name was created or moved in again; a rescan that finds the
very same inode leaves it discarded.

Only sockets themselves count, not symbolic links to them, and tenant
directories must be real directories: a tenant must not be able to point
its name at another tenant's socket. Registering checks that once; the
daemon connects with :func:`open_agent_socket`, which checks it again on
the file it actually connects to (a name swapped for a symlink between the
two is refused, not followed).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import socket
import stat
from collections.abc import Callable

from asyncinotify import Event, Inotify, Mask, Watch

from ..errors import ClawTermError

__all__ = [
    "MAX_ID",
    "SOCKET_DIR_MODE",
    "AgentRegistry",
    "NotASocket",
    "RegistryError",
    "open_agent_socket",
    "parse_agent_name",
    "parse_id",
    "socket_path",
]

logger = logging.getLogger("clawterm.daemon.registry")

#: Tenant and agent ids are u32 (SPEC §5).
MAX_ID = 0xFFFFFFFF
#: Mode of a socket directory the registry creates.
SOCKET_DIR_MODE = 0o755
#: Longest path a Unix socket address holds on Linux (sun_path less the NUL).
MAX_SOCKET_PATH = 107

_ID = re.compile(r"0|[1-9][0-9]{0,9}")
_SOCK = re.compile(r"(0|[1-9][0-9]{0,9})\.sock")

_ROOT_MASK = (
    Mask.CREATE
    | Mask.MOVED_TO
    | Mask.DELETE
    | Mask.MOVED_FROM
    | Mask.DELETE_SELF
    | Mask.MOVE_SELF
    | Mask.ONLYDIR
    | Mask.DONT_FOLLOW
)
_TENANT_MASK = (
    Mask.CREATE
    | Mask.MOVED_TO
    | Mask.DELETE
    | Mask.MOVED_FROM
    | Mask.ONLYDIR
    | Mask.DONT_FOLLOW
    | Mask.EXCL_UNLINK
)

_Inode = tuple[int, int]  # (st_dev, st_ino)


class RegistryError(ClawTermError):
    """The socket directory cannot be used; the message names it and why."""


class NotASocket(OSError):
    """An agent's socket name now names something else (a symlink, a file)."""


async def open_agent_socket(loop: asyncio.AbstractEventLoop, path: str) -> socket.socket:
    """A connected Unix stream socket to the socket file ``path`` itself.

    The last component is opened with ``O_PATH | O_NOFOLLOW`` and must be a
    socket; the connection goes to that very inode through
    ``/proc/self/fd/N``. So a name swapped for a symlink after it was
    registered is never followed (:class:`NotASocket`), and the path's
    length is not bound by ``sun_path``'s 108 bytes. A missing name raises
    FileNotFoundError and a socket nobody listens on ConnectionRefusedError,
    as a plain connect would.
    """
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISSOCK(mode):
            kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a socket"
            raise NotASocket(errno.ENOTSOCK, f"{path} is {kind}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, f"/proc/self/fd/{fd}")
        except BaseException:
            sock.close()
            raise
    finally:
        os.close(fd)
    return sock


def parse_id(text: str) -> int | None:
    """A canonical decimal u32 (``"0"``, ``"42"``), or None for anything else."""
    if not _ID.fullmatch(text):
        return None
    value = int(text)
    return value if value <= MAX_ID else None


def parse_agent_name(name: str) -> int | None:
    """The agent id of a socket file name ``"<agent_id>.sock"``, or None."""
    m = _SOCK.fullmatch(name)
    if m is None:
        return None
    value = int(m.group(1))
    return value if value <= MAX_ID else None


def socket_path(socket_dir: str | os.PathLike[str], tenant: int, agent: int) -> str:
    """``<socket_dir>/<tenant>/<agent>.sock`` (SPEC §1)."""
    return os.path.join(os.fspath(socket_dir), str(tenant), f"{agent}.sock")


class AgentRegistry:
    """The agents registered under one socket directory (SPEC §15).

    You must ``await start()`` inside the event loop before looking
    anything up, and ``await close()`` when done. ``on_change(tenant,
    agent, present)`` is called, on the loop, for every agent that becomes
    registered or unregistered (:meth:`discard` included); it must not
    block.

    ``max_logged_names`` bounds the set of ignored names remembered so each
    is logged once; beyond it further names are logged at debug level only.
    ``read_batch`` is how many events are read from the kernel at a time.
    Every ``check_interval`` seconds the registry checks that the socket
    directory is still the one it watches (a deleted directory whose
    tenants still hold sockets open reports nothing) and rescans if not.
    """

    def __init__(
        self,
        socket_dir: str | os.PathLike[str],
        *,
        on_change: Callable[[int, int, bool], None] | None = None,
        max_logged_names: int = 1024,
        read_batch: int = 256,
        check_interval: float = 5.0,
    ) -> None:
        self._root = os.fspath(socket_dir)
        self._on_change = on_change
        self.max_logged_names = max_logged_names
        self._read_batch = read_batch
        self.check_interval = check_interval
        self._inotify: Inotify | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._root_watch: Watch | None = None
        self._root_inode: _Inode | None = None
        self._tenant_watch: dict[int, Watch] = {}
        self._wd_tenant: dict[int, int] = {}
        # tenant → agent → inode of its socket
        self._tenants: dict[int, dict[int, _Inode]] = {}
        self._count = 0
        self._discarded: dict[tuple[int, int], _Inode] = {}
        self._logged: set[str] = set()
        self._watch_limit_logged = False
        self._unwatched: set[int] = set()  # tenant directories we could not watch

    # -- public API ----------------------------------------------------------

    @property
    def socket_dir(self) -> str:
        """The watched directory, as given."""
        return self._root

    async def start(self) -> None:
        """Create the socket directory if missing, watch it, scan it.

        Raises :class:`RegistryError` if the directory cannot be created or
        watched (for example a file is in the way).
        """
        if self._inotify is not None:
            raise RuntimeError("registry already started")
        longest = len(os.fsencode(socket_path(self._root, MAX_ID, MAX_ID)))
        if longest > MAX_SOCKET_PATH:
            logger.warning(
                "socket directory %s is long: socket paths can reach %d bytes, over the "
                "%d a Unix socket address holds",
                self._root,
                longest,
                MAX_SOCKET_PATH,
            )
        self._inotify = Inotify(cache_size=self._read_batch)
        try:
            self._full_scan()
        except RegistryError:
            self._inotify.close()
            self._inotify = None
            raise
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._run(self._inotify), name="clawterm-registry"),
            loop.create_task(self._check_root(), name="clawterm-registry-check"),
        ]

    async def close(self) -> None:
        """Stop watching. Lookups keep answering from the last known state."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        inotify, self._inotify = self._inotify, None
        if inotify is not None:
            inotify.close()

    def lookup(self, tenant: int, agent: int) -> str | None:
        """The socket path of a registered agent, or None (SPEC §5: NO_SUCH_AGENT)."""
        agents = self._tenants.get(tenant)
        if agents is None or agent not in agents:
            return None
        return socket_path(self._root, tenant, agent)

    def discard(self, tenant: int, agent: int) -> None:
        """Unregister an agent whose socket refused a connection (SPEC §15).

        It stays unregistered until its name is created or moved in again.
        Call it only for ECONNREFUSED-like failures, not for timeouts of a
        live agent.
        """
        agents = self._tenants.get(tenant)
        if agents is None or agent not in agents:
            return
        self._discarded[(tenant, agent)] = agents[agent]
        logger.info(
            "agent %d/%d refuses connections; unregistered until it binds again", tenant, agent
        )
        self._unset(tenant, agent)

    def agents(self) -> list[tuple[int, int]]:
        """Every registered ``(tenant, agent)``."""
        return [(t, a) for t, agents in self._tenants.items() for a in agents]

    def __len__(self) -> int:
        return self._count

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, tuple) or len(key) != 2:
            return False
        tenant, agent = key
        agents = self._tenants.get(tenant)
        return agents is not None and agent in agents

    # -- registration ----------------------------------------------------------

    def _notify(self, tenant: int, agent: int, present: bool) -> None:
        logger.debug("agent %d/%d %s", tenant, agent, "registered" if present else "unregistered")
        if self._on_change is not None:
            try:
                self._on_change(tenant, agent, present)
            except Exception:
                logger.exception("registry on_change callback failed")

    def _set(self, tenant: int, agent: int, inode: _Inode) -> None:
        agents = self._tenants.setdefault(tenant, {})
        known = agent in agents
        agents[agent] = inode
        if not known:
            self._count += 1
            self._notify(tenant, agent, True)

    def _unset(self, tenant: int, agent: int) -> None:
        agents = self._tenants.get(tenant)
        if agents is None or agents.pop(agent, None) is None:
            return
        self._count -= 1
        if not agents:
            del self._tenants[tenant]
        self._notify(tenant, agent, False)

    def _ignore(self, where: str, why: str) -> None:
        """Log an ignored name once (bounded by ``max_logged_names``)."""
        name = os.path.basename(where)
        if name.startswith("."):
            logger.debug("ignoring %s (hidden name)", where)
            return
        if where in self._logged:
            return
        if len(self._logged) >= self.max_logged_names:
            logger.debug("ignoring %s: %s", where, why)
            return
        self._logged.add(where)
        logger.warning("ignoring %s in the socket directory: %s", where, why)

    # -- scanning --------------------------------------------------------------

    def _tenant_dir(self, tenant: int) -> str:
        return os.path.join(self._root, str(tenant))

    def _full_scan(self) -> None:
        """(Re)create and watch the socket directory, then rescan every tenant."""
        assert self._inotify is not None
        try:
            os.makedirs(self._root, mode=SOCKET_DIR_MODE, exist_ok=True)
        except OSError as exc:
            raise RegistryError(
                f"cannot create socket directory {self._root}: {exc.strerror or exc}"
            ) from None
        try:
            watch = self._inotify.add_watch(self._root, _ROOT_MASK)
        except OSError as exc:
            raise RegistryError(
                f"cannot watch socket directory {self._root}: {exc.strerror or exc}"
            ) from None
        old = self._root_watch
        if old is not None and old.wd != watch.wd:
            self._rm_watch(old)
        self._root_watch = watch
        self._root_inode = self._stat_root()

        present: set[int] = set()
        try:
            entries = list(os.scandir(self._root))
        except OSError as exc:
            logger.error("cannot list socket directory %s: %s", self._root, exc.strerror or exc)
            entries = []
        for entry in entries:
            tenant = parse_id(entry.name)
            if tenant is None:
                self._ignore(entry.name, "not a tenant id")
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if not is_dir:
                self._ignore(entry.name, "not a directory")
                continue
            present.add(tenant)
            self._watch_tenant(tenant)
        for tenant in set(self._tenant_watch) | set(self._tenants):
            if tenant not in present:
                self._drop_tenant(tenant)

    def _watch_tenant(self, tenant: int) -> None:
        """Watch a tenant directory (again), then scan it: in this order (SPEC §15)."""
        assert self._inotify is not None
        try:
            watch = self._inotify.add_watch(self._tenant_dir(tenant), _TENANT_MASK)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                # Gone or replaced already; its removal event follows.
                self._drop_tenant(tenant)
                return
            if exc.errno == errno.ENOSPC:
                if not self._watch_limit_logged:
                    self._watch_limit_logged = True
                    logger.error(
                        "inotify watch limit reached: changes in %s will be missed; raise "
                        "fs.inotify.max_user_watches",
                        self._tenant_dir(tenant),
                    )
            else:
                logger.error("cannot watch %s: %s", self._tenant_dir(tenant), exc.strerror or exc)
            self._unwatched.add(tenant)
            self._scan_tenant(tenant)  # at least what is there now; polled later
            return
        self._unwatched.discard(tenant)
        old = self._tenant_watch.get(tenant)
        if old is not None and old.wd != watch.wd:
            self._wd_tenant.pop(old.wd, None)
            self._rm_watch(old)
        self._tenant_watch[tenant] = watch
        self._wd_tenant[watch.wd] = tenant
        self._scan_tenant(tenant)

    def _scan_tenant(self, tenant: int) -> None:
        """Make the registered agents of ``tenant`` match its directory."""
        directory = self._tenant_dir(tenant)
        found: dict[int, _Inode] = {}
        try:
            entries = list(os.scandir(directory))
        except OSError:
            entries = []  # gone: everything in it unregisters
        for entry in entries:
            agent = parse_agent_name(entry.name)
            where = f"{tenant}/{entry.name}"
            if agent is None:
                self._ignore(where, "not <agent_id>.sock")
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # vanished; its DELETE event follows
            if not stat.S_ISSOCK(st.st_mode):
                self._ignore(where, "not a socket")
                continue
            found[agent] = (st.st_dev, st.st_ino)

        for agent in list(self._tenants.get(tenant, {})):
            if agent not in found:
                self._unset(tenant, agent)
        for key in [k for k in self._discarded if k[0] == tenant and k[1] not in found]:
            del self._discarded[key]
        for agent, inode in found.items():
            stale = self._discarded.get((tenant, agent))
            if stale is not None:
                if stale == inode:
                    continue  # the same socket that refused connections
                del self._discarded[(tenant, agent)]
            self._set(tenant, agent, inode)

    def _drop_tenant(self, tenant: int) -> None:
        self._unwatched.discard(tenant)
        watch = self._tenant_watch.pop(tenant, None)
        if watch is not None:
            self._wd_tenant.pop(watch.wd, None)
            self._rm_watch(watch)
        for agent in list(self._tenants.get(tenant, {})):
            self._unset(tenant, agent)
        for key in [k for k in self._discarded if k[0] == tenant]:
            del self._discarded[key]

    def _rm_watch(self, watch: Watch) -> None:
        if self._inotify is not None:
            # EINVAL: the kernel already dropped it (directory deleted).
            with contextlib.suppress(OSError):
                self._inotify.rm_watch(watch)

    # -- events ----------------------------------------------------------------

    async def _run(self, inotify: Inotify) -> None:
        while True:
            try:
                event = await inotify.get()
            except asyncio.CancelledError:
                raise
            except OSError as exc:
                logger.error("reading inotify events failed: %s; rescanning", exc)
                await asyncio.sleep(1.0)
                self._safe_full_scan()
                continue
            try:
                self._handle(event)
            except Exception:
                logger.exception("registry event %r not handled", event)

    def _stat_root(self) -> _Inode | None:
        try:
            st = os.stat(self._root)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    async def _check_root(self) -> None:
        """Rescan when the socket directory is no longer the one watched.

        A directory deleted while sockets in it are still open (agents
        holding them) sends no IN_DELETE_SELF until the last one closes.
        """
        while True:
            await asyncio.sleep(self.check_interval)
            inode = self._stat_root()
            if inode is None or inode != self._root_inode:
                self._root_lost("was removed or replaced")
            elif self._unwatched:
                self._safe_full_scan()  # some tenants have no watch: poll them

    def _root_lost(self, why: str) -> None:
        """The socket directory went away: forget everything, recreate, rescan."""
        logger.warning("socket directory %s %s; recreating it and rescanning", self._root, why)
        if self._root_watch is not None:
            self._rm_watch(self._root_watch)
            self._root_watch = None
        for gone in set(self._tenant_watch) | set(self._tenants):
            self._drop_tenant(gone)
        self._safe_full_scan()

    def _safe_full_scan(self) -> None:
        try:
            self._full_scan()
        except RegistryError as exc:
            logger.error("%s; no agents are registered until it is back", exc)

    def _handle(self, event: Event) -> None:
        mask = event.mask
        if Mask.Q_OVERFLOW in mask:
            logger.warning("inotify queue overflowed; rescanning %s", self._root)
            self._safe_full_scan()
            return
        watch = event.watch
        if watch is None:
            return
        root = self._root_watch
        if root is not None and watch.wd == root.wd:
            self._handle_root(event, mask)
            return
        tenant = self._wd_tenant.get(watch.wd)
        if tenant is not None:
            self._handle_tenant(tenant, watch, event, mask)
        # else: a watch already dropped; its late events mean nothing

    def _handle_root(self, event: Event, mask: Mask) -> None:
        if event.name is None:
            if mask & (Mask.DELETE_SELF | Mask.MOVE_SELF | Mask.IGNORED):
                self._root_lost("was removed or moved")
            return
        name = str(event.name)
        tenant = parse_id(name)
        if tenant is None:
            if mask & (Mask.CREATE | Mask.MOVED_TO):
                self._ignore(name, "not a tenant id")
            return
        if mask & (Mask.DELETE | Mask.MOVED_FROM):
            self._drop_tenant(tenant)
        elif mask & (Mask.CREATE | Mask.MOVED_TO):
            if Mask.ISDIR in mask:
                self._watch_tenant(tenant)
            else:
                self._ignore(name, "not a directory")

    def _handle_tenant(self, tenant: int, watch: Watch, event: Event, mask: Mask) -> None:
        if event.name is None:
            if Mask.IGNORED in mask:
                # The directory itself is gone (deleted, or its file system unmounted).
                self._wd_tenant.pop(watch.wd, None)
                current = self._tenant_watch.get(tenant)
                if current is not None and current.wd == watch.wd:
                    self._drop_tenant(tenant)
            return
        name = str(event.name)
        agent = parse_agent_name(name)
        where = f"{tenant}/{name}"
        if agent is None:
            if mask & (Mask.CREATE | Mask.MOVED_TO):
                self._ignore(where, "not <agent_id>.sock")
            return
        key = (tenant, agent)
        if mask & (Mask.DELETE | Mask.MOVED_FROM):
            self._discarded.pop(key, None)
            self._unset(tenant, agent)
            return
        if not mask & (Mask.CREATE | Mask.MOVED_TO):
            return
        try:
            st = os.lstat(os.path.join(self._tenant_dir(tenant), name))
        except OSError:
            return  # already gone; its DELETE event follows
        if stat.S_ISSOCK(st.st_mode):
            # A new create or move-in: a discarded name comes back (SPEC §15).
            self._discarded.pop(key, None)
            self._set(tenant, agent, (st.st_dev, st.st_ino))
        else:
            self._discarded.pop(key, None)
            self._unset(tenant, agent)
            self._ignore(where, "not a socket")
