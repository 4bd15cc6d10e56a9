/*
 * faultfs: a FUSE file system for fault tests. It mirrors a backing directory
 * (every call goes to the same path under it) and, while a control file
 * exists, answers EIO to every call that writes (create, write, flush, fsync,
 * truncate, rename, unlink): a disk that fails on demand, for a kernel
 * without device mapper or fault injection.
 *
 *   faultfs BACKING CONTROL MOUNTPOINT     (foreground, single-threaded)
 *
 * Compiled and run by the sink tests (Tests/SinkTests/FaultSupport.swift).
 */
#define FUSE_USE_VERSION 31
#include <fuse.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

static const char *backing;
static const char *control;

static void real(char out[PATH_MAX], const char *path) {
    snprintf(out, PATH_MAX, "%s%s", backing, path);
}

static int failing(void) { return access(control, F_OK) == 0; }

static void *ff_init(struct fuse_conn_info *conn, struct fuse_config *cfg) {
    (void)conn;
    cfg->direct_io = 1;       /* every write reaches us: no page cache in between */
    cfg->attr_timeout = 0;
    cfg->entry_timeout = 0;
    cfg->negative_timeout = 0;
    cfg->use_ino = 1;
    return NULL;
}

static int ff_getattr(const char *path, struct stat *st, struct fuse_file_info *fi) {
    if (fi) return fstat((int)fi->fh, st) == 0 ? 0 : -errno;
    char p[PATH_MAX]; real(p, path);
    return lstat(p, st) == 0 ? 0 : -errno;
}

static int ff_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off,
                      struct fuse_file_info *fi, enum fuse_readdir_flags flags) {
    (void)off; (void)fi; (void)flags;
    char p[PATH_MAX]; real(p, path);
    DIR *dir = opendir(p);
    if (!dir) return -errno;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        struct stat st = {0};
        st.st_ino = entry->d_ino;
        st.st_mode = (mode_t)entry->d_type << 12;
        if (fill(buf, entry->d_name, &st, 0, 0)) break;
    }
    closedir(dir);
    return 0;
}

static int ff_open(const char *path, struct fuse_file_info *fi) {
    if (failing() && (fi->flags & (O_WRONLY | O_RDWR | O_TRUNC))) return -EIO;
    char p[PATH_MAX]; real(p, path);
    int fd = open(p, fi->flags);
    if (fd < 0) return -errno;
    fi->fh = (uint64_t)fd;
    return 0;
}

static int ff_create(const char *path, mode_t mode, struct fuse_file_info *fi) {
    if (failing()) return -EIO;
    char p[PATH_MAX]; real(p, path);
    int fd = open(p, fi->flags, mode);
    if (fd < 0) return -errno;
    fi->fh = (uint64_t)fd;
    return 0;
}

static int ff_read(const char *path, char *buf, size_t size, off_t off, struct fuse_file_info *fi) {
    (void)path;
    ssize_t n = pread((int)fi->fh, buf, size, off);
    return n < 0 ? -errno : (int)n;
}

static int ff_write(const char *path, const char *buf, size_t size, off_t off, struct fuse_file_info *fi) {
    (void)path;
    if (failing()) return -EIO;
    /* With O_APPEND the backing fd appends whatever the offset says. */
    ssize_t n = pwrite((int)fi->fh, buf, size, off);
    return n < 0 ? -errno : (int)n;
}

static int ff_flush(const char *path, struct fuse_file_info *fi) {
    (void)path; (void)fi;
    return failing() ? -EIO : 0;
}

static int ff_fsync(const char *path, int datasync, struct fuse_file_info *fi) {
    (void)path; (void)datasync;
    if (failing()) return -EIO;
    return fsync((int)fi->fh) == 0 ? 0 : -errno;
}

static int ff_release(const char *path, struct fuse_file_info *fi) {
    (void)path;
    close((int)fi->fh);
    return 0;
}

static int ff_truncate(const char *path, off_t size, struct fuse_file_info *fi) {
    if (failing()) return -EIO;
    if (fi) return ftruncate((int)fi->fh, size) == 0 ? 0 : -errno;
    char p[PATH_MAX]; real(p, path);
    return truncate(p, size) == 0 ? 0 : -errno;
}

static int ff_unlink(const char *path) {
    if (failing()) return -EIO;
    char p[PATH_MAX]; real(p, path);
    return unlink(p) == 0 ? 0 : -errno;
}

static int ff_rename(const char *from, const char *to, unsigned int flags) {
    if (flags) return -EINVAL;
    if (failing()) return -EIO;
    char a[PATH_MAX], b[PATH_MAX]; real(a, from); real(b, to);
    return rename(a, b) == 0 ? 0 : -errno;
}

static int ff_mkdir(const char *path, mode_t mode) {
    if (failing()) return -EIO;
    char p[PATH_MAX]; real(p, path);
    return mkdir(p, mode) == 0 ? 0 : -errno;
}

static int ff_utimens(const char *path, const struct timespec tv[2], struct fuse_file_info *fi) {
    if (fi) return futimens((int)fi->fh, tv) == 0 ? 0 : -errno;
    char p[PATH_MAX]; real(p, path);
    return utimensat(AT_FDCWD, p, tv, AT_SYMLINK_NOFOLLOW) == 0 ? 0 : -errno;
}

static int ff_statfs(const char *path, struct statvfs *st) {
    char p[PATH_MAX]; real(p, path);
    return statvfs(p, st) == 0 ? 0 : -errno;
}

static const struct fuse_operations operations = {
    .init = ff_init, .getattr = ff_getattr, .readdir = ff_readdir, .open = ff_open,
    .create = ff_create, .read = ff_read, .write = ff_write, .flush = ff_flush,
    .fsync = ff_fsync, .release = ff_release, .truncate = ff_truncate, .unlink = ff_unlink,
    .rename = ff_rename, .mkdir = ff_mkdir, .utimens = ff_utimens, .statfs = ff_statfs,
};

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s BACKING CONTROL MOUNTPOINT\n", argv[0]);
        return 2;
    }
    backing = argv[1];
    control = argv[2];
    char *args[] = {argv[0], "-f", "-s", "-o", "fsname=faultfs", argv[3], NULL};
    return fuse_main(6, args, &operations, NULL);
}
