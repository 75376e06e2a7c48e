"""A FUSE pass-through file system that loses what was not fsynced, for the power-loss
test (F8): `/usr/bin/python3 lazyfs.py BACKING MOUNTPOINT` (apt: python3-fusepy, fuse3).

File contents written through the mount stay in this process's memory until the file is
fsynced; only then are they written to BACKING and fsynced there. Killing this process
(after the writers) is the power cut: BACKING then holds exactly what was fsynced, as a
disk would after losing its volatile cache. Metadata (create, rename, unlink, mkdir) is
applied to BACKING at once, which is kinder than a real disk; SQLite's WAL and the
agent's `seq.hwm` (write, fsync, rename) do not rely on more.
"""

import errno
import os
import sys
import threading

from fusepy import FUSE, FuseOSError, Operations


class LazyFS(Operations):
    def __init__(self, root):
        self.root = root
        self.mutex = threading.RLock()
        # path -> the file's content as processes see it, while it has unsynced writes
        self.dirty = {}

    def _real(self, path):
        return os.path.join(self.root, path.lstrip("/"))

    def _load(self, path):
        if path not in self.dirty:
            try:
                with open(self._real(path), "rb") as f:
                    self.dirty[path] = bytearray(f.read())
            except OSError as e:
                raise FuseOSError(e.errno)
        return self.dirty[path]

    def getattr(self, path, fh=None):
        with self.mutex:
            try:
                st = os.lstat(self._real(path))
            except OSError as e:
                raise FuseOSError(e.errno)
            attrs = {k: getattr(st, k) for k in (
                "st_mode", "st_nlink", "st_uid", "st_gid", "st_size",
                "st_atime", "st_mtime", "st_ctime")}
            if path in self.dirty:
                attrs["st_size"] = len(self.dirty[path])
            return attrs

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self._real(path))

    def access(self, path, mode):
        if not os.access(self._real(path), mode):
            raise FuseOSError(errno.EACCES)

    def chmod(self, path, mode):
        os.chmod(self._real(path), mode)

    def chown(self, path, uid, gid):
        os.chown(self._real(path), uid, gid)

    def utimens(self, path, times=None):
        os.utime(self._real(path), times)

    def statfs(self, path):
        st = os.statvfs(self._real(path))
        return {k: getattr(st, k) for k in (
            "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree",
            "f_files", "f_flag", "f_frsize", "f_namemax")}

    def mkdir(self, path, mode):
        os.mkdir(self._real(path), mode)

    def rmdir(self, path):
        os.rmdir(self._real(path))

    def open(self, path, flags):
        with self.mutex:
            if flags & os.O_TRUNC:
                self._load(path)[:] = b""
        return 0

    def create(self, path, mode, fi=None):
        with self.mutex:
            fd = os.open(self._real(path), os.O_WRONLY | os.O_CREAT, mode)
            os.close(fd)
            self.dirty[path] = bytearray()
        return 0

    def read(self, path, size, offset, fh):
        with self.mutex:
            if path in self.dirty:
                return bytes(self.dirty[path][offset:offset + size])
            with open(self._real(path), "rb") as f:
                f.seek(offset)
                return f.read(size)

    def write(self, path, data, offset, fh):
        with self.mutex:
            content = self._load(path)
            if len(content) < offset:
                content.extend(b"\0" * (offset - len(content)))
            content[offset:offset + len(data)] = data
            return len(data)

    def truncate(self, path, length, fh=None):
        with self.mutex:
            content = self._load(path)
            if length < len(content):
                del content[length:]
            else:
                content.extend(b"\0" * (length - len(content)))

    def fsync(self, path, datasync, fh):
        with self.mutex:
            content = self.dirty.pop(path, None)
            if content is None:
                return 0
            fd = os.open(self._real(path), os.O_WRONLY)
            try:
                os.pwrite(fd, bytes(content), 0)
                os.ftruncate(fd, len(content))
                os.fsync(fd)
            finally:
                os.close(fd)
            return 0

    def fsyncdir(self, path, datasync, fh):
        return 0

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        return 0

    def unlink(self, path):
        with self.mutex:
            os.unlink(self._real(path))
            self.dirty.pop(path, None)

    def rename(self, old, new):
        with self.mutex:
            os.rename(self._real(old), self._real(new))
            if old in self.dirty:
                self.dirty[new] = self.dirty.pop(old)
            else:
                self.dirty.pop(new, None)


if __name__ == "__main__":
    FUSE(LazyFS(sys.argv[1]), sys.argv[2], foreground=True, nothreads=False,
         allow_other=False)
