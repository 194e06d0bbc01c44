"""The VM (issue 2, item 5): vagrant/Vagrantfile validates, rejects a bad driver, and
vagrant/egress-proxy relays from a private network namespace to the host only for allowed hosts.

`vagrant validate` needs vagrant (skipped where it is not installed); the proxy tests need root
and `ip netns` and use only loopback addresses (a local http.server as the "mirror").
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

VAGRANT_DIR = Path(__file__).resolve().parent.parent / "vagrant"

needs_vagrant = pytest.mark.skipif(
    shutil.which("vagrant") is None,
    reason="vagrant is not installed (apt-get install vagrant vagrant-libvirt)",
)


def vagrant_validate(**env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("STACKFS_")}
    environ.update(env, VAGRANT_CWD=str(VAGRANT_DIR))
    return subprocess.run(["vagrant", "validate"], cwd=VAGRANT_DIR, env=environ,
                          capture_output=True, text=True, timeout=100)


@needs_vagrant
@pytest.mark.timeout(120)
def test_vagrantfile_validates() -> None:
    proc = vagrant_validate()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validated successfully" in proc.stdout


@needs_vagrant
@pytest.mark.timeout(120)
def test_vagrantfile_rejects_unknown_libvirt_driver() -> None:
    proc = vagrant_validate(STACKFS_LIBVIRT_DRIVER="bogus")
    assert proc.returncode != 0
    assert "STACKFS_LIBVIRT_DRIVER must be kvm or qemu" in proc.stdout + proc.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("script", ["run-tests", "build-box"])
def test_scripts_parse_and_print_usage(script: str) -> None:
    path = VAGRANT_DIR / script
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    proc = subprocess.run(["bash", str(path), "--help"], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout


class _Mirror(BaseHTTPRequestHandler):
    """A stand-in package mirror on the host's loopback."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = f"mirror saw {self.path} host={self.headers['Host']}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def netns_proxy(tmp_path: Path):
    """A fresh network namespace with egress-proxy listening in it; yields (netns, port, mirror)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and ip(8) for a network namespace")
    ns = f"stackfs-t-{uuid.uuid4().hex[:8]}"
    if subprocess.run(["ip", "netns", "add", ns], capture_output=True).returncode != 0:
        pytest.skip("cannot create a network namespace here")
    mirror = ThreadingHTTPServer(("127.0.0.1", 0), _Mirror)
    serving = threading.Thread(target=mirror.serve_forever, daemon=True)
    serving.start()
    mirror_port = mirror.server_address[1]
    pidfile = tmp_path / "proxy.pid"
    proxy = None
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        proxy = subprocess.Popen(
            [sys.executable, str(VAGRANT_DIR / "egress-proxy"), "--netns", ns, "--port", "3128",
             "--allow", "127.0.0.1", "--http-ports", str(mirror_port), "--pidfile", str(pidfile)],
            stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 10
        while not pidfile.exists():
            assert proxy.poll() is None, proxy.stderr.read()
            assert time.monotonic() < deadline, "egress-proxy did not start"
            time.sleep(0.05)
        yield ns, mirror_port
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(timeout=10)
        mirror.shutdown()
        subprocess.run(["ip", "netns", "del", ns], check=True)


def fetch_in_netns(ns: str, url: str, proxy: str | None) -> str:
    """GET url from inside ns (through proxy if given); returns 'STATUS BODY' or 'ERR ...'."""
    code = (
        "import sys, urllib.request, urllib.error\n"
        "p = sys.argv[2]\n"
        "h = urllib.request.ProxyHandler({'http': p} if p else {})\n"
        "try:\n"
        "    r = urllib.request.build_opener(h).open(sys.argv[1], timeout=5)\n"
        "    print(r.status, r.read().decode())\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code)\n"
        "except OSError as e:\n"
        "    print('ERR', e)\n"
    )
    proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code, url, proxy or ""],
                          capture_output=True, text=True, timeout=30)
    return proc.stdout.strip()


@pytest.mark.timeout(60)
def test_egress_proxy_relays_allowed_host_out_of_the_namespace(netns_proxy) -> None:
    ns, mirror_port = netns_proxy
    url = f"http://127.0.0.1:{mirror_port}/debian/dists/bookworm/Release"
    # Inside the namespace the host's loopback is unreachable on its own ...
    assert fetch_in_netns(ns, url, None).startswith("ERR")
    # ... and reachable through the proxy: it listens in the namespace, connects from the host.
    out = fetch_in_netns(ns, url, "http://127.0.0.1:3128")
    assert out == f"200 mirror saw /debian/dists/bookworm/Release host=127.0.0.1:{mirror_port}"


@pytest.mark.timeout(60)
def test_egress_proxy_refuses_other_hosts_and_ports(netns_proxy) -> None:
    ns, mirror_port = netns_proxy
    proxy = "http://127.0.0.1:3128"
    assert fetch_in_netns(ns, f"http://localhost:{mirror_port}/x", proxy) == "403"  # host
    assert fetch_in_netns(ns, "http://127.0.0.1:9/x", proxy) == "403"  # port


def _egress_proxy(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith(("PIP_", "STACKFS_VM_PROXY"))}
    environ.update(env)
    return subprocess.run([sys.executable, str(VAGRANT_DIR / "egress-proxy"), *args],
                          capture_output=True, text=True, timeout=60, env=environ)


@pytest.mark.timeout(120)
def test_egress_proxy_allow_list_comes_from_the_hosts_configuration() -> None:
    proc = _egress_proxy("--print-allow", PIP_INDEX_URL="https://pip-mirror.invalid/simple",
                         PIP_EXTRA_INDEX_URL="http://extra.invalid/x file:///opt/local")
    assert proc.returncode == 0, proc.stderr
    allow = proc.stdout.split()
    assert "pip-mirror.invalid" in allow and "extra.invalid" in allow
    apt = subprocess.run(["apt-get", "indextargets", "--format", "$(REPO_URI)"],
                         capture_output=True, text=True) if shutil.which("apt-get") else None
    for uri in (apt.stdout.split() if apt else []):
        host = uri.split("/")[2].split(":")[0].lower()
        assert host in allow, f"{host} (an apt source of this host) is not allowed"
    proc = _egress_proxy("--print-allow", STACKFS_VM_PROXY_ALLOW="a.invalid,b.invalid")
    assert proc.stdout.split() == ["a.invalid", "b.invalid"]


@pytest.mark.timeout(60)
def test_no_package_host_is_named_in_the_repository() -> None:
    """The mirror, the proxy's allow list and pip's index come from the host's configuration;
    the names checked are the ones this host's pip and apt use by default (not written here)."""
    from pip._internal.models.index import PyPI

    names = {PyPI.netloc, PyPI.file_storage_domain}
    if shutil.which("apt-get"):
        out = subprocess.run(["apt-get", "indextargets", "--format", "$(REPO_URI)"],
                             capture_output=True, text=True).stdout
        names |= {uri.split("/")[2].split(":")[0] for uri in out.split()}
    top = VAGRANT_DIR.parent
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=top,
                           capture_output=True, text=True).stdout.split()
    if not files:
        pytest.skip("not a git checkout")
    hits = []
    for name in files:
        path = top / name
        if not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        text = path.read_bytes().decode("utf-8", "replace")
        hits += [f"{name}: {host}" for host in names if host and host in text]
    assert not hits, hits


@pytest.mark.timeout(60)
def test_provision_lists_its_packages_for_the_box_and_the_hosts() -> None:
    script = VAGRANT_DIR.parent / "provision.sh"

    def packages(*args: str) -> list[str]:
        proc = subprocess.run(["bash", str(script), "--print-packages", *args],
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split()

    base = packages()
    assert "fuse3" in base and "qemu-system-x86" not in base  # the box gets exactly these
    vm = packages("--with", "vm")
    assert set(base) < set(vm) and {"qemu-system-x86", "busybox-static", "udev"} <= set(vm)
    assert {"vagrant", "vagrant-libvirt", "debootstrap"} <= set(packages("--with", "vagrant"))
    bad = subprocess.run(["bash", str(script), "--with", "nothing"], capture_output=True,
                         text=True, timeout=30)
    assert bad.returncode == 2 and "--with takes vm or vagrant" in bad.stderr
