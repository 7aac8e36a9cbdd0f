/*
 * unionfs._cachedir: lets unionfs ask the kernel to cache directory listings.
 *
 * FUSE can keep a directory's listing in the page cache (FOPEN_CACHE_DIR, set through
 * fuse_file_info.cache_readdir in the opendir reply); a warm `ls -R` or `git status` then reads
 * directories without asking the daemon.  pyfuse3 3.x has no way to set that bit: its opendir
 * handler replies with libfuse's fuse_reply_open() on a fuse_file_info Python never sees.
 *
 * This module defines fuse_reply_open() itself.  Loaded with RTLD_GLOBAL before pyfuse3 (see
 * unionfs/cachedir.py), it is the definition pyfuse3's reference binds to; it calls libfuse's
 * own fuse_reply_open() (found with RTLD_NEXT: this module links libfuse3) and changes one
 * thing: a reply whose file handle carries CACHE_DIR_FLAG is sent with the flag removed and
 * cache_readdir + keep_cache set (without keep_cache the kernel drops the cached listing at
 * every opendir).  Only unionfs's opendir sets the flag; every other reply passes unchanged.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define FUSE_USE_VERSION 34
#include <fuse_lowlevel.h>

#include <dlfcn.h> /* RTLD_NEXT: Python.h defines _GNU_SOURCE */
#include <errno.h>
#include <stdint.h>

#define CACHE_DIR_FLAG (UINT64_C(1) << 62)

typedef int (*reply_open_fn)(fuse_req_t, const struct fuse_file_info *);

static unsigned long long cached_replies;

int fuse_reply_open(fuse_req_t req, const struct fuse_file_info *fi)
{
    static reply_open_fn libfuse_reply_open;

    if (libfuse_reply_open == NULL) {
        libfuse_reply_open = (reply_open_fn)dlsym(RTLD_NEXT, "fuse_reply_open");
        if (libfuse_reply_open == NULL)
            return fuse_reply_err(req, EIO);
    }
    if (fi != NULL && (fi->fh & CACHE_DIR_FLAG)) {
        struct fuse_file_info reply = *fi;

        reply.fh &= ~CACHE_DIR_FLAG;
        reply.cache_readdir = 1;
        reply.keep_cache = 1;
        cached_replies++;
        return libfuse_reply_open(req, &reply);
    }
    return libfuse_reply_open(req, fi);
}

static PyObject *replies(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    return PyLong_FromUnsignedLongLong(cached_replies);
}

static PyMethodDef methods[] = {
    {"replies", replies, METH_NOARGS,
     "How many opendir replies asked the kernel to cache the listing."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "unionfs._cachedir",
    "fuse_reply_open() with cache_readdir for flagged directory handles (see _cachedir.c).",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__cachedir(void)
{
    PyObject *mod = PyModule_Create(&module);

    if (mod != NULL && PyModule_AddObject(mod, "CACHE_DIR_FLAG",
                                          PyLong_FromUnsignedLongLong(CACHE_DIR_FLAG)) < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
