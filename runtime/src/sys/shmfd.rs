//! Anonymous shared-memory objects: created sized, mapped by every process
//! that is sent their descriptor, and never found by name.
//!
//! Two invariants hold against a hostile worker that holds the descriptor,
//! and this module is where each platform upholds them:
//!
//! 1. **Its size is fixed.** No process can shrink an object under
//!    another's mapping, which would turn that mapping's reads into
//!    `SIGBUS`, nor grow it.
//! 2. **A frozen object's bytes never change**, in any process: what
//!    [`frozen_copy`] makes is readable everywhere and writable nowhere.
//!
//! And a descriptor that arrives from another process is checked
//! ([`check_received`]) before it is mapped: it must be such an object, of
//! the length announced.
//!
//! | | invariant 1 | invariant 2 | a received descriptor |
//! |---|---|---|---|
//! | Linux, FreeBSD 13 (`memfd_create`) | seals `F_SEAL_GROW`, `F_SEAL_SHRINK` and `F_SEAL_SEAL` (so nobody adds `F_SEAL_FUTURE_WRITE` and makes it unmappable) | seal `F_SEAL_WRITE` | must carry the seals; frozen if it has `F_SEAL_WRITE` |
//! | macOS (`shm_open`) | the kernel sizes a POSIX shared memory object once, at its first `ftruncate`, and refuses every later one (`EINVAL`), whatever the descriptor's access | written through a mapping, then shared only as an `O_RDONLY` descriptor opened before the name was unlinked: such a descriptor can be mapped read-only only (the kernel refuses `PROT_WRITE` and drops write from the mapping's maximum protection), and with the name gone nothing can open it again | must be a POSIX shared memory object (`proc_pidfdinfo`) already sized to the length; never frozen, since no call tells whether its sender kept a writable descriptor |
//! | Linux with `multiproc_portable` (`shm_open`) | **not upheld**: the object is a tmpfs file that cannot be sealed, and whoever holds a writable descriptor can `ftruncate` it | an `O_RDONLY` descriptor of a file created with mode `0400`; a worker of the same user can still `fchmod` it and reopen it writable through `/proc/self/fd` | must be a regular file of the length; never frozen |
//!
//! The last row is a test configuration that runs the portable logic on
//! Linux, not a back end to deploy: the Linux default uses `memfd`. Names
//! (`shm_open`) are random, created with `O_EXCL` and unlinked at once, so
//! nothing is left behind by a crash and no other process can open the
//! object by name except in the microseconds between the two calls, and
//! only by guessing 59 random bits.
//!
//! An object's identity ([`identity`]) is what private bookkeeping keys on
//! (the locks a thread holds, the leases a process holds): the same for
//! every descriptor of one object in this process. It is `(st_dev,
//! st_ino)` where the kernel has them. macOS reports neither for POSIX
//! shared memory, so there it is a digest of the object's creation name,
//! which is unique among live objects; a worker that reads the name of an
//! object this process holds can, once that name is unlinked, create
//! another object under it, which this process would then take for the
//! same one (its lock bookkeeping may panic or wait on the wrong object;
//! memory stays safe).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// What a received object may be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Received {
    /// It may be mapped writable.
    pub(crate) writable: bool,
    /// Its bytes can never change, in any process.
    pub(crate) frozen: bool,
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

fn set_len(fd: &OwnedFd, len: usize) -> io::Result<()> {
    let len = libc::off_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "segment too large"))?;
    // SAFETY: plain ftruncate on our descriptor.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn stat(fd: &OwnedFd) -> io::Result<libc::stat> {
    // SAFETY: fstat writes into the zeroed stat we pass.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd.as_raw_fd(), &mut st) < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(st)
    }
}

/// `true` if the object `fd` is exactly the size `len` asks for: `len`
/// bytes, or on macOS, which sizes POSIX shared memory in whole pages,
/// `len` rounded up to the page size.
pub(crate) fn fits(fd: &OwnedFd, len: usize) -> io::Result<bool> {
    let size = u64::try_from(stat(fd)?.st_size).ok();
    #[cfg(target_os = "macos")]
    let len = {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        len.checked_next_multiple_of(page)
            .ok_or_else(|| invalid("a shared segment's length overflows"))?
    };
    Ok(size == Some(len as u64))
}

#[cfg(any(
    target_os = "freebsd",
    all(target_os = "linux", not(multiproc_portable))
))]
mod imp {
    //! `memfd_create` with seals (Linux; FreeBSD 13 and later).

    use super::{fits, invalid, set_len, stat};
    use std::ffi::CStr;
    use std::io::{self, Write};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    /// Seals every object carries: its size is fixed, and so are its seals.
    pub(super) const SIZE_SEALS: libc::c_int =
        libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;

    pub(super) fn memfd(name: &CStr) -> io::Result<OwnedFd> {
        // SAFETY: memfd_create with a NUL-terminated name; checked below.
        let fd = unsafe {
            libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    pub(super) fn add_seals(fd: &OwnedFd, seals: libc::c_int) -> io::Result<()> {
        // SAFETY: fcntl(F_ADD_SEALS) on our descriptor.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn seals(fd: &OwnedFd) -> io::Result<libc::c_int> {
        // SAFETY: fcntl(F_GET_SEALS) only inspects the descriptor.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(seals)
    }

    pub(super) fn create(name: &CStr, len: usize) -> io::Result<OwnedFd> {
        let fd = memfd(name)?;
        set_len(&fd, len)?;
        add_seals(&fd, SIZE_SEALS)?;
        Ok(fd)
    }

    pub(super) fn frozen_copy(name: &CStr, bytes: &[u8]) -> io::Result<OwnedFd> {
        let fd = memfd(name)?;
        set_len(&fd, bytes.len())?;
        // Written with write(2), never through a writable mapping, so that
        // F_SEAL_WRITE can be added afterwards.
        let mut file = std::fs::File::from(fd);
        file.write_all(bytes)?;
        let fd = OwnedFd::from(file);
        add_seals(&fd, SIZE_SEALS | libc::F_SEAL_WRITE)?;
        Ok(fd)
    }

    pub(super) fn check_received(fd: &OwnedFd, len: usize) -> io::Result<super::Received> {
        // Seals first: once F_SEAL_SHRINK | F_SEAL_GROW are on, the size
        // read next can no longer change.
        let seals = seals(fd)?;
        if seals & SIZE_SEALS != SIZE_SEALS {
            return Err(invalid("a shared segment arrived without its size seals"));
        }
        if !fits(fd, len)? {
            return Err(invalid("a shared segment arrived with the wrong length"));
        }
        let frozen = seals & libc::F_SEAL_WRITE != 0;
        Ok(super::Received {
            writable: !frozen,
            frozen,
        })
    }

    pub(super) fn identity(fd: &OwnedFd) -> io::Result<(u64, u64)> {
        let st = stat(fd)?;
        #[allow(clippy::unnecessary_cast)]
        Ok((st.st_dev as u64, st.st_ino as u64))
    }
}

#[cfg(any(target_os = "macos", all(target_os = "linux", multiproc_portable)))]
mod imp {
    //! `shm_open` under a random name, unlinked at once (macOS; Linux with
    //! `multiproc_portable`).

    use super::{fits, invalid, set_len, stat};
    use std::ffi::{CStr, CString};
    use std::hash::{BuildHasher, Hasher};
    use std::io;
    use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
    use std::sync::atomic::{AtomicU64, Ordering};

    /// The longest name macOS takes (`PSHMNAMLEN`), without the NUL.
    const NAME_MAX: usize = 31;
    /// Random characters at the end of every name.
    const RANDOM_CHARS: usize = 10;

    /// A fresh name: `/`, up to the first 19 bytes of `name`, `.`, and 10
    /// random alphanumerics (59 bits), from the hasher keys std draws from
    /// the OS for each process, a counter and the time.
    pub(super) fn random_name(name: &CStr) -> CString {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        const ALPHABET: &[u8; 62] =
            b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        hasher.write_u32(std::process::id());
        if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            hasher.write_u128(t.as_nanos());
        }
        let mut bits = hasher.finish();
        let keep = name.to_bytes().len().min(NAME_MAX - 2 - RANDOM_CHARS);
        let mut out = Vec::with_capacity(NAME_MAX + 1);
        out.push(b'/');
        out.extend(
            name.to_bytes()[..keep]
                .iter()
                .map(|&b| if b == b'/' { b'-' } else { b }),
        );
        out.push(b'.');
        for _ in 0..RANDOM_CHARS {
            out.push(ALPHABET[(bits % 62) as usize]);
            bits /= 62;
        }
        CString::new(out).expect("no NUL in a name built from a CStr")
    }

    fn shm_open(name: &CStr, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
        // SAFETY: shm_open with a NUL-terminated name; checked below. The
        // mode travels as an unsigned int through the variadic call.
        let fd = unsafe { libc::shm_open(name.as_ptr(), flags, libc::c_uint::from(mode)) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // Both kernels open it close-on-exec already (glibc passes
        // O_CLOEXEC, XNU marks it); this states it.
        crate::sys::set_cloexec(fd.as_fd())?;
        Ok(fd)
    }

    fn shm_unlink(name: &CStr) {
        // SAFETY: shm_unlink with a NUL-terminated name.
        unsafe { libc::shm_unlink(name.as_ptr()) };
    }

    /// Creates a new object under a fresh name with `mode`, opens it a
    /// second time read-only if `read_only_too`, and unlinks the name.
    fn open_new(
        name: &CStr,
        mode: libc::mode_t,
        read_only_too: bool,
    ) -> io::Result<(OwnedFd, Option<OwnedFd>)> {
        let mut tries = 0;
        loop {
            let path = random_name(name);
            let rw = match shm_open(&path, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL, mode) {
                Ok(fd) => fd,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 16 => {
                    tries += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let ro = if read_only_too {
                match shm_open(&path, libc::O_RDONLY, 0) {
                    Ok(fd) => Some(fd),
                    Err(e) => {
                        shm_unlink(&path);
                        return Err(e);
                    }
                }
            } else {
                None
            };
            shm_unlink(&path);
            return Ok((rw, ro));
        }
    }

    pub(super) fn create(name: &CStr, len: usize) -> io::Result<OwnedFd> {
        let (fd, _) = open_new(name, 0o600, false)?;
        set_len(&fd, len)?;
        Ok(fd)
    }

    pub(super) fn frozen_copy(name: &CStr, bytes: &[u8]) -> io::Result<OwnedFd> {
        // Mode 0400: once created, nothing opens the object for writing
        // by name; the read-only descriptor is opened before the unlink.
        let (rw, ro) = open_new(name, 0o400, true)?;
        let ro = ro.expect("asked for a read-only descriptor");
        set_len(&rw, bytes.len())?;
        if !bytes.is_empty() {
            // macOS has no write(2) for POSIX shared memory: the bytes go
            // in through a mapping, which is gone before anyone else sees
            // the object.
            // SAFETY: a fresh shared mapping of an object of exactly
            // `bytes.len()` bytes (rounded up to a page) that only this
            // process holds; checked for MAP_FAILED below.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    bytes.len(),
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    rw.as_raw_fd(),
                    0,
                )
            };
            if ptr == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: the mapping above is `bytes.len()` writable bytes
            // that nothing else references; unmapped right after the copy.
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr.cast::<u8>(), bytes.len());
                libc::munmap(ptr, bytes.len());
            }
        }
        drop(rw);
        Ok(ro)
    }

    /// The access mode `fd` was opened with.
    fn access(fd: &OwnedFd) -> io::Result<libc::c_int> {
        // SAFETY: fcntl(F_GETFL) only inspects the descriptor.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(flags & libc::O_ACCMODE)
    }

    pub(super) fn check_received(fd: &OwnedFd, len: usize) -> io::Result<super::Received> {
        #[cfg(target_os = "macos")]
        {
            // A POSIX shared memory object, which cannot be resized once
            // sized: if it has the length, its size is final.
            pshm_name(fd)
                .map_err(|_| invalid("a shared segment arrived that is not shared memory"))?;
            if len > 0 && stat(fd)?.st_size == 0 {
                return Err(invalid("a shared segment arrived with the wrong length"));
            }
        }
        #[cfg(target_os = "linux")]
        if stat(fd)?.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(invalid(
                "a shared segment arrived that is not shared memory",
            ));
        }
        if !fits(fd, len)? {
            return Err(invalid("a shared segment arrived with the wrong length"));
        }
        let writable = match access(fd)? {
            libc::O_RDWR => true,
            libc::O_RDONLY => false,
            _ => return Err(invalid("a shared segment arrived that cannot be read")),
        };
        Ok(super::Received {
            writable,
            frozen: false,
        })
    }

    #[cfg(target_os = "linux")]
    pub(super) fn identity(fd: &OwnedFd) -> io::Result<(u64, u64)> {
        let st = stat(fd)?;
        Ok((st.st_dev, st.st_ino))
    }

    #[cfg(target_os = "macos")]
    pub(super) fn identity(fd: &OwnedFd) -> io::Result<(u64, u64)> {
        let name = pshm_name(fd)?;
        let digest = |seed: u64| {
            // SipHash with fixed keys: the same name gives the same digest
            // for as long as this process lives, which is all that is
            // asked of an identity.
            #[allow(deprecated)]
            let mut h = std::hash::SipHasher::new_with_keys(seed, !seed);
            h.write(&name);
            h.finish()
        };
        Ok((digest(0x6d75_6c74_6970_726f), digest(0x7368_6d2d_6e61_6d65)))
    }

    /// `struct proc_fileinfo` of `<sys/proc_info.h>`.
    #[cfg(target_os = "macos")]
    #[repr(C)]
    struct ProcFileInfo {
        fi_openflags: u32,
        fi_status: u32,
        fi_offset: libc::off_t,
        fi_type: i32,
        fi_guardflags: u32,
    }

    /// `struct pshm_fdinfo` of `<sys/proc_info.h>`.
    #[cfg(target_os = "macos")]
    #[repr(C)]
    struct PshmFdInfo {
        pfi: ProcFileInfo,
        pshm_stat: libc::vinfo_stat,
        pshm_mappaddr: u64,
        pshm_name: [libc::c_char; 1024],
    }

    /// `PROC_PIDFDPSHMINFO` of `<sys/proc_info.h>`.
    #[cfg(target_os = "macos")]
    const PROC_PIDFDPSHMINFO: libc::c_int = 5;

    /// The creation name of the POSIX shared memory object `fd`; an error
    /// if `fd` is something else.
    #[cfg(target_os = "macos")]
    fn pshm_name(fd: &OwnedFd) -> io::Result<Vec<u8>> {
        // SAFETY: an all-zero PshmFdInfo is valid (integers and arrays).
        let mut info: PshmFdInfo = unsafe { std::mem::zeroed() };
        let size = libc::c_int::try_from(std::mem::size_of::<PshmFdInfo>()).expect("small");
        // SAFETY: proc_pidfdinfo writes at most `size` bytes into `info`,
        // which lives across the call.
        let n = unsafe {
            libc::proc_pidfdinfo(
                libc::getpid(),
                fd.as_raw_fd(),
                PROC_PIDFDPSHMINFO,
                (&raw mut info).cast(),
                size,
            )
        };
        if n != size {
            return Err(io::Error::last_os_error());
        }
        let name = info.pshm_name.map(|c| c as u8);
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        Ok(name[..end].to_vec())
    }
}

/// Creates a zeroed object of `len` bytes whose size is fixed (see the
/// module docs for what fixes it on each platform), close-on-exec.
///
/// # Errors
///
/// If it cannot be created, sized or sealed (out of memory, descriptor
/// limit, `len` too large).
pub(crate) fn create(name: &CStr, len: usize) -> io::Result<OwnedFd> {
    imp::create(name, len)
}

/// Creates a frozen object holding a copy of `bytes`, and returns a
/// descriptor that can only read it.
///
/// # Errors
///
/// As [`create`].
pub(crate) fn frozen_copy(name: &CStr, bytes: &[u8]) -> io::Result<OwnedFd> {
    imp::frozen_copy(name, bytes)
}

/// Checks a descriptor received from another process: it must be an
/// object of this module whose size is fixed at `len` (on Linux with
/// `multiproc_portable`, only the length can be checked).
///
/// # Errors
///
/// `InvalidData` if it is not, or what the checks' calls say.
pub(crate) fn check_received(fd: &OwnedFd, len: usize) -> io::Result<Received> {
    imp::check_received(fd, len)
}

/// The object's identity in this process (see the module docs).
///
/// # Errors
///
/// What `fstat` (macOS: `proc_pidfdinfo`) says.
pub(crate) fn identity(fd: &OwnedFd) -> io::Result<(u64, u64)> {
    imp::identity(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_object_has_its_size_and_one_identity() {
        let fd = create(c"test", 4096).unwrap();
        assert!(fits(&fd, 4096).unwrap());
        assert_eq!(
            identity(&fd).unwrap(),
            identity(&fd.try_clone().unwrap()).unwrap()
        );
        let other = create(c"test", 4096).unwrap();
        assert_ne!(identity(&fd).unwrap(), identity(&other).unwrap());
        let got = check_received(&fd.try_clone().unwrap(), 4096).unwrap();
        assert!(got.writable && !got.frozen, "{got:?}");
        assert!(check_received(&fd, 8192).is_err());
    }

    #[test]
    fn a_frozen_copy_is_received_read_only() {
        let fd = frozen_copy(c"test", b"abc").unwrap();
        let got = check_received(&fd, 3).unwrap();
        assert!(!got.writable, "{got:?}");
        // Writes through the descriptor are refused by the kernel.
        let mut f = std::fs::File::from(fd);
        assert!(std::io::Write::write_all(&mut f, b"x").is_err());
        assert!(frozen_copy(c"test", b"").is_ok());
    }

    #[test]
    fn a_name_is_short_random_and_keeps_its_prefix() {
        #[cfg(any(target_os = "macos", all(target_os = "linux", multiproc_portable)))]
        {
            let a = imp::random_name(c"multiproc-semaphore-and-more");
            let b = imp::random_name(c"multiproc-semaphore-and-more");
            assert_ne!(a, b);
            assert!(a.to_bytes().len() <= 31, "{a:?}");
            assert!(a.to_bytes().starts_with(b"/multiproc-semaphor"), "{a:?}");
        }
    }

    /// The memfd back end: what it refuses.
    #[cfg(any(
        target_os = "freebsd",
        all(target_os = "linux", not(multiproc_portable))
    ))]
    mod sealed {
        use super::super::imp::{SIZE_SEALS, add_seals, memfd};
        use super::super::*;

        #[test]
        fn a_resizable_memfd_is_refused() {
            let fd = memfd(c"test").unwrap();
            set_len(&fd, 64).unwrap();
            assert!(check_received(&fd, 64).is_err());
        }

        #[test]
        fn a_memfd_whose_seals_are_not_sealed_is_refused() {
            let fd = memfd(c"test").unwrap();
            set_len(&fd, 64).unwrap();
            add_seals(&fd, libc::F_SEAL_GROW | libc::F_SEAL_SHRINK).unwrap();
            let err = check_received(&fd, 64).unwrap_err();
            assert!(err.to_string().contains("seals"), "{err}");
        }

        #[test]
        fn an_object_can_be_neither_resized_nor_resealed() {
            let fd = create(c"test", 4096).unwrap();
            let raw = fd.as_raw_fd();
            // SAFETY: plain system calls on a descriptor this test holds.
            let (shrink, grow, seal) = unsafe {
                (
                    libc::ftruncate(raw, 0),
                    libc::ftruncate(raw, 8192),
                    libc::fcntl(raw, libc::F_ADD_SEALS, libc::F_SEAL_WRITE),
                )
            };
            assert_eq!((shrink, grow, seal), (-1, -1, -1));
            let frozen = frozen_copy(c"test", b"abc").unwrap();
            assert!(check_received(&frozen, 3).unwrap().frozen);
            let _ = SIZE_SEALS;
        }
    }
}
