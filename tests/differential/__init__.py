"""Differential test: unionfs against kernel overlayfs, operation by operation.

How it works
------------
``model.py`` generates a seeded stack of 2..4 lower layers (sometimes a pre-populated upper):
files with random, empty and sparse content, nested dirs, symlinks, hardlinks within a layer,
fifos, ``user.*``/``trusted.*`` xattrs, setuid/setgid/sticky modes, several owners, names that
collide across layers (overrides, file<->dir replacements), char 0/0 whiteouts and
``trusted.overlay.opaque=y`` directories inside the lowers, and names starting with ``.wh.``
(ordinary names in the kernel format).  ``build.py`` materialises it once per mount.

``opgen.py`` generates a seeded op sequence: create, pwrite, O_APPEND, O_TRUNC, truncate, mkdir,
rmdir, unlink, rename (incl. RENAME_NOREPLACE / RENAME_EXCHANGE, over existing targets, across
dirs), link, symlink, chmod, chown, utimes, set/removexattr, mkfifo, mknod, read, open handles
kept across ops (open, write, read, fstat, ftruncate, close), open-unlink-write-read; a fifth of
the path operations run as an unprivileged user (``ops.AsUser``: permission checks, ownership
of new files, setuid clearing).

``harness.py`` runs each op on a kernel ``mount -t overlay ...,index=on,redirect_dir=off,
metacopy=off`` and on the other side (unionfs through its CLI, or a second kernel mount for the
self-test) and compares, after every step, the op's errno and observed value and the whole
merged tree (``snapshot.py`` lists the fields and the mtime rule).  After the sequence it
compares the two upper directories (whiteouts, opaque markers, content, modes, owners, xattrs),
and finally swaps: each side's layers+upper+workdir are mounted by the *other* implementation
and must show the same final tree ("cross-a": unionfs reading the kernel's upper; "cross-b":
the kernel reading unionfs's upper).  One pair of mounts serves a batch of up to 100 cases (one
directory per case), so 300 sequences cost 3 batches of mounts.  A per-step watchdog aborts a
hung FUSE connection.  A failure is shrunk by delta debugging (``shrink.py``), re-run once to
flag timing-dependent ones, and printed as a readable op list with the seed, the layer entries
involved, the first differing field and a replay command (``report.py``).

Running
-------
CI (pytest, root + /dev/fuse + overlay): ``pytest tests/differential`` runs 300 sequences x 30
ops against unionfs, cross-mount stage included (9,300 steps at 7-8 ms: about 75 s on 2 cores
when nothing differs) plus kernel-vs-kernel self-tests with planted differences (about 10 s).  Skips
happen only when not root, without overlayfs, or (unionfs test) without /dev/fuse.
The command line (run it with the project's venv python; exit status 0 = no difference)::

    python scripts/difftest.py --seeds 0-5000 --ops 60              # a long campaign
    python scripts/difftest.py --seeds 0-299 --no-shrink --max-failures 1000   # triage: kinds
    python scripts/difftest.py --ignore dir-nlink --no-hardlinks --no-cross   # look past
                                                                    # known kinds
    python scripts/difftest.py --against kernel --seeds 0-999       # the harness checks itself
    python scripts/difftest.py --seeds 17 --ops 30 --keep-ops=3,9   # replay a reproducer

The generator is prefix-stable (``--ops 60`` extends the ``--ops 30`` sequence of a seed), but a
change to the generator changes every seed's case: replay reproducers with the same revision.

Deliberate and known differences (unionfs vs kernel)
----------------------------------------------------
The project README lists them with their reasons ("Deliberate differences from kernel
overlayfs", "Known differences").  How the harness treats each one:

* setxattr with XATTR_CREATE/XATTR_REPLACE that fails: pyfuse3 answers the flags itself, the
  kernel copies up first.  ``ops.SetXattr`` checks the flags in user space on both sides.
* which name of a lower hardlink is copied up by a request that carries only an inode: shows
  in the upper's entries (and link counts that follow); not masked, it should stay rare.

Anything else the harness reports is a bug in unionfs or in the harness (the kernel-vs-kernel
self-test: ``--against kernel``).  A new deliberate difference goes into the README first, with
its reason, and then into the harness as narrowly as it can (never a blanket ``--ignore`` in
CI).

Not compared, on purpose: atime and ctime; st_ino values (only which paths share an inode);
``st_size`` of directories; mtimes set to "now" (only old-vs-now and exact old values);
``trusted.overlay.*`` bookkeeping xattrs in the upper other than ``opaque``; ``st_nlink`` in
the upper (the kernel's index adds links); the kernel's workdir/index itself.
"""
