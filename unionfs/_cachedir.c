/*
 * unionfs._cachedir: lets unionfs have the kernel cache directory listings.
 *
 * FUSE can keep a directory's listing in the page cache (FOPEN_CACHE_DIR); a warm `ls -R`,
 * `find` or `git status` then reads directories without asking the daemon.  pyfuse3 3.x has
 * no way to ask for it.  Loaded with RTLD_GLOBAL before pyfuse3 (see unionfs/cachedir.py), this
 * module's definitions are the ones pyfuse3's references bind to; each forwards to libfuse's
 * own (found with RTLD_NEXT: this module links libfuse3, the one pyfuse3 is built against).
 *
 * fuse_session_new(): see "No-opendir mode" below (the normal way).
 * fuse_reply_open(): the fallback.  A reply whose file handle carries CACHE_DIR_FLAG is sent
 * with the flag removed and cache_readdir + keep_cache set (without keep_cache the kernel drops
 * the cached listing at every opendir).  Only unionfs's opendir sets the flag; every other
 * reply passes unchanged.
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

/*
 * No-opendir mode.  Answering OPENDIR with ENOSYS makes the kernel open directories itself, with
 * FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR, and never send OPENDIR or RELEASEDIR again: a warm walk
 * then costs no request at all.  READDIRPLUS then comes with file handle 0, and pyfuse3 passes
 * the readdir handler only the file handle, not the inode.  So pyfuse3's session is created
 * with our readdirplus in front of its own: a request without a handle gets the directory's
 * inode as its handle.  unionfs only answers ENOSYS once without_opendir() says this is in
 * place and the kernel said at init that it can do without OPENDIR (Linux 5.1 and later); it
 * never hands out file handle 0.
 */
typedef void (*readdirplus_fn)(fuse_req_t, fuse_ino_t, size_t, off_t, struct fuse_file_info *);
typedef struct fuse_session *(*session_new_fn)(struct fuse_args *, const struct fuse_lowlevel_ops *,
                                               size_t, void *);

typedef void (*init_fn)(void *, struct fuse_conn_info *);

static readdirplus_fn pyfuse3_readdirplus;
static init_fn pyfuse3_init;
static struct fuse_lowlevel_ops wrapped_ops;
static unsigned long long sessions;
static int kernel_opens_directories; /* FUSE_CAP_NO_OPENDIR_SUPPORT (Linux 5.1) */

static void init_noting_capabilities(void *userdata, struct fuse_conn_info *conn)
{
    kernel_opens_directories = (conn->capable & FUSE_CAP_NO_OPENDIR_SUPPORT) != 0;
    if (pyfuse3_init != NULL)
        pyfuse3_init(userdata, conn);
}

static void readdirplus_with_inode(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                                   struct fuse_file_info *fi)
{
    struct fuse_file_info with_inode;

    if (fi != NULL && fi->fh == 0) {
        with_inode = *fi;
        with_inode.fh = ino;
        fi = &with_inode;
    }
    pyfuse3_readdirplus(req, ino, size, off, fi);
}

struct fuse_session *fuse_session_new(struct fuse_args *args, const struct fuse_lowlevel_ops *op,
                                      size_t op_size, void *userdata)
{
    static session_new_fn libfuse_session_new;

    if (libfuse_session_new == NULL) {
        libfuse_session_new = (session_new_fn)dlsym(RTLD_NEXT, "fuse_session_new");
        if (libfuse_session_new == NULL)
            return NULL;
    }
    if (op == NULL || op_size != sizeof(wrapped_ops) || op->readdirplus == NULL)
        return libfuse_session_new(args, op, op_size, userdata);
    wrapped_ops = *op;
    pyfuse3_readdirplus = op->readdirplus;
    wrapped_ops.readdirplus = readdirplus_with_inode;
    pyfuse3_init = op->init;
    wrapped_ops.init = init_noting_capabilities;
    sessions++;
    return libfuse_session_new(args, &wrapped_ops, op_size, userdata);
}

static PyObject *without_opendir(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    return PyBool_FromLong(sessions > 0 && kernel_opens_directories);
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
    {"without_opendir", without_opendir, METH_NOARGS,
     "Whether the session has the readdirplus wrapper and the kernel can open directories "
     "itself (FUSE_CAP_NO_OPENDIR_SUPPORT)."},
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
