"""Hosts on a private network made of Linux network namespaces (iproute2), for multi-host tests.

    with Topology.create(["coordinator", "hospital-a", "bank"]) as net:
        net.address("coordinator")                  # "10.x.y.1": eth0 of that host
        net.popen("bank", [sys.executable, ...])    # a process inside the bank's namespace
        net.cut("bank"); net.restore("bank")        # unplug / replug its cable at the switch

Layout: one namespace holds a bridge (the switch); each host is a namespace whose ``eth0`` is one
end of a veth pair, the other end plugged into the bridge. Every address and interface lives
inside namespaces created here, nothing touches the caller's network, and every name carries a
per-run tag so that concurrent runs cannot collide. ``close()`` (or leaving the ``with``) kills
the processes started here and deletes every namespace, which takes the veths and the bridge
with it; it never raises, so it is safe in ``finally``.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field


class NetnsUnavailable(RuntimeError):
    """``ip netns`` cannot be used here (not root, no iproute2, no CAP_SYS_ADMIN/CAP_NET_ADMIN)."""


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip() or result.returncode}")


def check_available() -> None:
    """Raise NetnsUnavailable, with the reason, unless a namespace can be created and deleted."""
    if shutil.which("ip") is None:
        raise NetnsUnavailable("iproute2's `ip` is not installed")
    probe = f"fmprobe-{os.getpid()}-{secrets.token_hex(3)}"
    result = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise NetnsUnavailable(f"`ip netns add` is not permitted here: {result.stderr.strip()}")
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True, timeout=30)


@dataclass
class Topology:
    hosts: dict[str, str]  # host name -> namespace
    addresses: dict[str, str]  # host name -> IPv4 address of its eth0
    ports: dict[str, str]  # host name -> its port (veth end) on the bridge
    switch: str  # the namespace holding the bridge
    processes: list[subprocess.Popen] = field(default_factory=list)

    @classmethod
    def create(cls, names: Sequence[str]) -> Topology:
        tag = f"fm-{os.getpid()}-{secrets.token_hex(3)}"
        # A private /24 (RFC 1918); it exists only inside these namespaces, so any one will do.
        subnet = ipaddress.ip_network(f"10.{secrets.randbelow(200) + 50}.{secrets.randbelow(250)}.0/24")
        hosts = list(subnet.hosts())
        topology = cls({}, {}, {}, f"{tag}-switch")
        try:
            _ip("netns", "add", topology.switch)
            _ip("-n", topology.switch, "link", "set", "lo", "up")
            _ip("-n", topology.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", topology.switch, "link", "set", "br0", "up")
            for index, name in enumerate(names):
                namespace, port = f"{tag}-h{index}", f"port{index}"
                _ip("netns", "add", namespace)
                topology.hosts[name] = namespace
                _ip(
                    "-n",
                    topology.switch,
                    "link",
                    "add",
                    port,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    namespace,
                )
                topology.ports[name] = port
                _ip("-n", topology.switch, "link", "set", port, "master", "br0", "up")
                address = str(hosts[index])
                _ip("-n", namespace, "addr", "add", f"{address}/{subnet.prefixlen}", "dev", "eth0")
                _ip("-n", namespace, "link", "set", "eth0", "up")
                _ip("-n", namespace, "link", "set", "lo", "up")
                topology.addresses[name] = address
        except BaseException:
            topology.close()
            raise
        return topology

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def address(self, name: str) -> str:
        return self.addresses[name]

    def popen(self, name: str, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        """Start ``argv`` inside host ``name``'s namespace; it is killed by ``close()``."""
        process = subprocess.Popen(["ip", "netns", "exec", self.hosts[name], *argv], **kwargs)
        self.processes.append(process)
        return process

    def cut(self, name: str) -> None:
        """Unplug ``name`` at the switch: its packets go nowhere, silently, like a pulled cable."""
        _ip("-n", self.switch, "link", "set", self.ports[name], "down")

    def restore(self, name: str) -> None:
        _ip("-n", self.switch, "link", "set", self.ports[name], "up")

    def namespaces(self) -> list[str]:
        return [self.switch, *self.hosts.values()]

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                pass
        for namespace in [*self.hosts.values(), self.switch]:
            subprocess.run(["ip", "netns", "delete", namespace], capture_output=True, timeout=30)


def existing_namespaces() -> set[str]:
    result = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30)
    return {line.split()[0] for line in result.stdout.splitlines() if line.strip()}
