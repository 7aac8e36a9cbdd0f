"""A live tour of unionfs on the bundled demo layers (demo/layers): mount, merged view, copy-up,
whiteout, and the same directories read back by kernel overlayfs.

Run through scripts/demo.sh (which installs everything first).  Needs root for the kernel
overlay comparison and the char 0/0 whiteouts; everything happens in a temp dir that is removed
at the end.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from unionfs.whiteout import KERNEL_FORMAT, hidden_by_marker, make_whiteout

REPO = Path(__file__).resolve().parent.parent
LAYERS = REPO / "demo" / "layers"


def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m")


def run(cmd: str, cwd: Path) -> str:
    print(f"$ {cmd}")
    out = subprocess.run(cmd, shell=True, cwd=cwd, capture_output=True, text=True)
    text = out.stdout + out.stderr
    print(text, end="" if text.endswith("\n") or not text else "\n")
    if out.returncode != 0:
        raise SystemExit(f"demo: '{cmd}' failed with exit status {out.returncode}")
    return text


def lay_out(src: Path, dst: Path) -> None:
    """Copy one demo layer, turning OCI `.wh.` markers into overlay whiteouts (char 0/0)."""
    for dirpath, _dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for name in filenames:
            hidden = hidden_by_marker(os.fsencode(name))
            if hidden is not None:
                fd = os.open(dst / rel, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    make_whiteout(fd, hidden, KERNEL_FORMAT)
                finally:
                    os.close(fd)
            else:
                shutil.copy2(Path(dirpath) / name, dst / rel / name)


def which_layer(path: str, layers: list[tuple[str, Path]], upper: Path) -> str:
    for label, root in [("upper", upper), *layers]:
        if os.path.lexists(root / path):
            return label
    return "?"


def main() -> int:
    if os.geteuid() != 0:
        print("demo: run as root (whiteouts are device nodes; kernel overlay needs root)",
              file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="unionfs-demo-"))
    mnt = work / "merged"
    unionfs = f"{shlex.quote(sys.executable)} -m unionfs"
    try:
        for name in ("base", "app"):
            lay_out(LAYERS / name, work / name)
        for sub in ("upper", "work", "merged"):
            (work / sub).mkdir()
        step("Two read-only layers: base, and app on top of it (lowerdir lists the top first)")
        run("find base app | sort", work)
        step("Mount them with a writable upper layer")
        run(f"{unionfs} -o lowerdir=app:base,upperdir=upper,workdir=work merged", work)
        step("The merged view: app's motd wins, base shows through, app deleted old.log")
        run("ls -l merged/etc merged/var/log", work)
        layers = [("app", work / "app"), ("base", work / "base")]
        for rel in ("etc/motd", "etc/os-release", "opt/app/run", "var/log/boot.log"):
            print(f"  {rel:<20} comes from layer {which_layer(rel, layers, work / 'upper')}")
        run("cat merged/etc/motd", work)
        step("Copy-up: writing a lower file copies it into the upper layer first")
        run("echo 'edited in the container' >> merged/etc/os-release", work)
        run("cat merged/etc/os-release", work)
        run("ls -l upper/etc && cat base/etc/os-release", work)
        step("Whiteout: deleting a lower file leaves a character device 0/0 in the upper layer")
        run("rm merged/etc/hostname && ls merged/etc", work)
        run("ls -l upper/etc", work)
        step("Unmount; kernel overlayfs mounts the same directories to the same tree")
        run("fusermount3 -u merged", work)
        run("mount -t overlay overlay -o lowerdir=app:base,upperdir=upper,workdir=work merged"
            " && ls merged/etc && umount merged", work)
        print("\ndemo: done")
        return 0
    finally:
        subprocess.run(["fusermount3", "-u", "-q", str(mnt)], capture_output=True)
        subprocess.run(["umount", "-q", str(mnt)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
