//! Opening and reading files without leaving the async runtime's thread, when (and only when)
//! the kernel can answer from its caches.
//!
//! Every trip to tokio's blocking pool is two thread switches, and on a small VM those switches
//! cost more than the work: a pull of a 4 KiB config, or a 1 MiB range, spent most of its
//! server time waking threads (`finish_task_switch`, BENCHMARKS.md). Blobs being pulled are
//! usually in the page cache, and Linux can tell without blocking: `openat2` with
//! `RESOLVE_CACHED` fails with `EAGAIN` instead of reading a directory from disk, and
//! `preadv2` with `RWF_NOWAIT` fails with `EAGAIN` (or reads less) instead of waiting for the
//! disk. Callers try these first and fall back to the blocking pool when they answer `None`.
//! On other platforms, or a kernel or file system without them, they always answer `None`.

use std::fs::File;
use std::io;
use std::path::Path;

#[cfg(target_os = "linux")]
mod imp {
    use std::fs::File;
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Set once the kernel said it does not know a call (old kernel, seccomp filter, file
    /// system without nowait reads): from then on every caller goes straight to the pool.
    static NO_OPENAT2: AtomicBool = AtomicBool::new(false);
    static NO_NOWAIT_READ: AtomicBool = AtomicBool::new(false);

    fn unsupported(e: &io::Error) -> bool {
        matches!(
            e.raw_os_error(),
            Some(libc::ENOSYS | libc::EINVAL | libc::EOPNOTSUPP | libc::EPERM)
        )
    }

    pub fn open_cached(path: &Path) -> io::Result<Option<File>> {
        if NO_OPENAT2.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "path contains a NUL byte",
            ));
        };
        // SAFETY: `open_how` is plain integers, for which all zeroes is valid (and is what
        // the kernel expects of fields this code does not set).
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = (libc::O_RDONLY | libc::O_CLOEXEC) as u64;
        how.resolve = libc::RESOLVE_CACHED;
        loop {
            // SAFETY: `c_path` is a NUL-terminated string and `how` a valid `open_how` of the
            // size passed; both outlive the call.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_openat2,
                    libc::AT_FDCWD,
                    c_path.as_ptr(),
                    &how as *const libc::open_how,
                    std::mem::size_of::<libc::open_how>(),
                )
            };
            if fd >= 0 {
                // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
                return Ok(Some(unsafe { File::from_raw_fd(fd as i32) }));
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => return Ok(None),
                _ if unsupported(&e) => {
                    NO_OPENAT2.store(true, Ordering::Relaxed);
                    return Ok(None);
                }
                _ => return Err(e),
            }
        }
    }

    pub fn read_cached(file: &File, want: usize, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
        if NO_NOWAIT_READ.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let spare = buf.spare_capacity_mut();
        let len = want.min(spare.len());
        if len == 0 {
            return Ok(Some(0));
        }
        let iov = libc::iovec {
            iov_base: spare.as_mut_ptr().cast(),
            iov_len: len,
        };
        loop {
            // SAFETY: `iov` points into `buf`'s spare capacity, `len` bytes of it, which
            // stays allocated and unaliased for the call. Offset -1: the file position, which
            // the call advances like `read`.
            let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, -1, libc::RWF_NOWAIT) };
            if n >= 0 {
                // SAFETY: the kernel initialised the first `n` (<= len) spare bytes.
                unsafe { buf.set_len(buf.len() + n as usize) };
                return Ok(Some(n as usize));
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => return Ok(None),
                _ if unsupported(&e) => {
                    NO_NOWAIT_READ.store(true, Ordering::Relaxed);
                    return Ok(None);
                }
                _ => return Err(e),
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::fs::File;
    use std::io;
    use std::path::Path;

    pub fn open_cached(_path: &Path) -> io::Result<Option<File>> {
        Ok(None)
    }

    pub fn read_cached(
        _file: &File,
        _want: usize,
        _buf: &mut Vec<u8>,
    ) -> io::Result<Option<usize>> {
        Ok(None)
    }
}

/// Opens `path` read-only if that needs no disk access; `None`: use the blocking pool.
/// Errors (such as `NotFound`) are real answers, as from `File::open`.
pub fn open_cached(path: &Path) -> io::Result<Option<File>> {
    imp::open_cached(path)
}

/// Reads up to `want` bytes (at most `buf`'s spare capacity) at the file position into `buf`,
/// if that needs no disk access; `None`: nothing was read, use the blocking pool. A short
/// count means only that much was cached (or the file ended: `Some(0)`).
pub fn read_cached(file: &File, want: usize, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
    imp::read_cached(file, want, buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn cached_reads_see_what_was_written_and_stop_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&data)
            .unwrap();
        // Just written, so cached: on Linux both calls answer; elsewhere both decline.
        let opened = open_cached(&path).unwrap();
        if cfg!(not(target_os = "linux")) {
            assert!(opened.is_none());
            return;
        }
        let file = opened.expect("a fresh file's path is cached");
        let mut buf = Vec::with_capacity(6_000);
        assert_eq!(read_cached(&file, 6_000, &mut buf).unwrap(), Some(6_000));
        let mut rest = Vec::with_capacity(6_000);
        assert_eq!(read_cached(&file, 6_000, &mut rest).unwrap(), Some(4_000));
        buf.extend_from_slice(&rest);
        assert_eq!(buf, data);
        let mut end = Vec::with_capacity(10);
        assert_eq!(read_cached(&file, 10, &mut end).unwrap(), Some(0));
        // A missing file is either known missing (a cached negative entry: NotFound) or not
        // known yet (None), never opened.
        assert!(!matches!(
            open_cached(&dir.path().join("missing")),
            Ok(Some(_))
        ));
    }
}
