"""The registry round trip, live: pull -> create -> mount -> commit -> push against a real
registry (Debian's docker-registry, started here on 127.0.0.1 with its own temporary config
and storage, and always stopped), printing each command and its real output.

    .venv/bin/python scripts/registry_demo.py [--port 5000]

Needs root (FUSE mounts), ``docker-registry`` and ``skopeo`` (the image is first pushed by
skopeo, as another tool would).  ``MOUNTTOOL`` overrides the command (default:
``<python> -m mounttool``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REGISTRY = "/usr/bin/docker-registry"


def start_registry(root: Path, port: int) -> subprocess.Popen[bytes]:
    (root / "config.yml").write_text(
        f"version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n")
    proc = subprocess.Popen([REGISTRY, "serve", str(root / "config.yml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                sys.exit(f"registry_demo: docker-registry did not start on port {port}")
            time.sleep(0.05)


def run(cmd: list[str], shown: str) -> None:
    print(f"$ {shown}", flush=True)
    res = subprocess.run(cmd, capture_output=True, text=True)
    sys.stdout.write(res.stdout + res.stderr)
    if res.returncode != 0:
        sys.exit(f"registry_demo: {shown!r} failed with status {res.returncode}")


def tour(mt: list[str], work: Path, host: str) -> None:
    def m(*args: str) -> None:
        run([*mt, *args], "mounttool " + " ".join(args))

    archive = work / "demo.tar"
    subprocess.run([sys.executable, "-m", "mounttool.demo", str(archive)], check=True,
                   stdout=subprocess.DEVNULL)
    run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci-archive:{archive}",
         f"docker://{host}/demo/app:1.0"],
        f"skopeo copy oci-archive:demo.tar docker://{host}/demo/app:1.0")
    m("pull", "--tls-verify=false", f"{host}/demo/app:1.0")
    m("images")
    m("create", "--name", "web", f"{host}/demo/app:1.0")
    mnt = work / "mnt"
    mnt.mkdir()
    m("mount", "web", str(mnt))
    print(f"$ echo 'changed in the container' > {mnt}/etc/motd.local")
    (mnt / "etc" / "motd.local").write_text("changed in the container\n")
    m("umount", "web")
    m("commit", "-m", "add motd.local", "web", f"{host}/demo/app:1.1")
    m("push", "--tls-verify=false", f"{host}/demo/app:1.1")
    os.environ["MOUNTTOOL_ROOT"] = str(work / "elsewhere")
    print("$ export MOUNTTOOL_ROOT=elsewhere   # a fresh store, as on another machine")
    m("pull", "--tls-verify=false", f"{host}/demo/app:1.1")
    view = work / "view"
    view.mkdir()
    m("mount", "--image", f"{host}/demo/app:1.1", str(view))
    print(f"$ cat {view}/etc/motd.local")
    print((view / "etc" / "motd.local").read_text(), end="")
    m("umount", str(view))
    m("search", "--tls-verify=false", f"{host}/demo")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args()
    for tool in (REGISTRY, "skopeo"):
        if shutil.which(tool) is None:
            sys.exit(f"registry_demo: {tool} is missing (apt-get install docker-registry skopeo)")
    mt = shlex.split(os.environ.get("MOUNTTOOL") or f"{sys.executable} -m mounttool")
    with tempfile.TemporaryDirectory(prefix="registry-demo-") as tmp:
        work = Path(tmp)
        os.environ["MOUNTTOOL_ROOT"] = str(work / "store")
        (work / "registry").mkdir()
        proc = start_registry(work / "registry", args.port)
        try:
            tour(mt, work, f"127.0.0.1:{args.port}")
        finally:
            for mnt in ("mnt", "view"):
                subprocess.run(["fusermount3", "-u", str(work / mnt)], capture_output=True)
            proc.terminate()
            proc.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
