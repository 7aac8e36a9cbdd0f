"""``python -m mounttool.demo.tour``: the live tour of mounttool on the bundled demo image.

Every step runs the real command (``python -m mounttool --root STORE ...``) and prints it with
its output, so the README can show exactly this run: load, history, create, mount, which layer
each file comes from, a copy-up, a delete (the whiteout in the upper layer), diff, commit, a
mount of the new image, clean up.  Needs root and FUSE for the mount steps.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from mounttool.demo import NAME, write_archive


class Tour:
    def __init__(self, root: Path) -> None:
        self.root = root

    def say(self, text: str) -> None:
        print(f"\n# {text}", flush=True)

    def sh(self, *argv: str) -> str:
        print("$ " + " ".join(shlex.quote(a) for a in argv), flush=True)
        res = subprocess.run(argv, capture_output=True, text=True, check=False)
        out = res.stdout + res.stderr
        print(out, end="" if out.endswith("\n") or not out else "\n", flush=True)
        if res.returncode != 0:
            raise SystemExit(f"tour: step failed (exit {res.returncode})")
        return res.stdout.strip()

    def write(self, path: str, text: str) -> None:
        print(f"$ echo {shlex.quote(text.rstrip())} > {shlex.quote(path)}", flush=True)
        Path(path).write_text(text)

    def mt(self, *args: str) -> str:
        print(f"$ mounttool {' '.join(shlex.quote(a) for a in args)}", flush=True)
        cmd = [sys.executable, "-m", "mounttool", "--root", str(self.root), *args]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        out = res.stdout + res.stderr
        print(out, end="" if out.endswith("\n") or not out else "\n", flush=True)
        if res.returncode != 0:
            raise SystemExit(f"tour: step failed (exit {res.returncode})")
        return res.stdout.strip()


def _upper(tour: Tour, name: str) -> str:
    cmd = [sys.executable, "-m", "mounttool", "--root", str(tour.root), "inspect", name]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return str(json.loads(out)[0]["GraphDriver"]["Data"]["UpperDir"])


def run(tour: Tour, work: Path) -> None:
    archive = work / "demo.tar"
    write_archive(archive)
    tour.say("Load the demo image (an oci-archive built from mounttool/demo/layers)")
    tour.mt("load", "-i", str(archive))
    tour.mt("images")
    tour.mt("history", NAME)
    tour.say("Which layer each file comes from (#1 is the base)")
    tour.mt("tree", NAME)
    tour.say("A container: the image's layers as lowers, plus its own upper dir")
    tour.mt("create", "--name", "demo", NAME)
    mnt = tour.mt("mount", "demo", str(work / "rootfs"))
    tour.sh("ls", "-l", mnt, f"{mnt}/etc")
    tour.sh("cat", f"{mnt}/etc/app.conf")
    tour.say("Write a lower file (copy-up) and delete one (a whiteout in the upper layer)")
    tour.write(f"{mnt}/etc/app.conf", "greeting=hallo\n")
    tour.sh("rm", f"{mnt}/etc/hostname")
    upper = _upper(tour, "demo")
    tour.sh("ls", "-l", f"{upper}/etc")
    tour.mt("tree", "demo", "/etc")
    tour.mt("diff", "demo")
    tour.say("Commit the container's changes as a new image, and mount that read-only")
    tour.mt("commit", "demo", "localhost/mounttool-demo:2.0", "-m", "hallo, no hostname")
    tour.mt("history", "localhost/mounttool-demo:2.0")
    view = work / "view"
    tour.mt("mount", "--image", "localhost/mounttool-demo:2.0", str(view))
    tour.sh("cat", f"{view}/etc/app.conf")
    tour.sh("ls", f"{view}/etc")
    tour.say("Two images, one base: the shared layers are on disk once")
    tour.mt("df")
    tour.mt("df", "-v")
    tour.say("Clean up")
    tour.mt("umount", str(view))
    tour.mt("umount", "demo")
    tour.mt("rm", "demo")
    tour.mt("rmi", "localhost/mounttool-demo:2.0", NAME)
    tour.mt("prune")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mounttool.demo.tour",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--root", type=Path, help="store to use (default: a temporary one)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("tour: run as root (it mounts with FUSE and writes device-node whiteouts)",
              file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="mounttool-tour-") as tmp:
        root = args.root or Path(tmp) / "store"
        try:
            run(Tour(root), Path(tmp))
        except SystemExit as exc:
            print(exc, file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
