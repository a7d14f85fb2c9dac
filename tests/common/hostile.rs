//! The attacks of `tests/hostile.rs`: a `#[worker]` one item of which
//! attacks the pool from inside its worker process, with raw system calls
//! on the control socket and the shared memory it finds in
//! `/proc/self/fd`, and the run files through which the test learns how
//! often, and in which process, that item ran.

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use multiproc::worker;
use serde::{Deserialize, Serialize};

/// Items per batch of an attacked `map`: the hostile item shares its
/// batch with innocent ones on both sides, and forged replies claim to
/// answer this many.
pub const CHUNK: usize = 4;
/// How long a stalling or spinning attack lasts: far past every deadline
/// the tests allow, so that only the parent can end it.
const FOREVER: Duration = Duration::from_secs(60);
/// How long the hostile item stays in its task after writing a forged
/// frame, unless the parent kills it first. A breach is detected while
/// the item that made it is the one running, so the progress page names
/// the culprit and no innocent item of its batch is blamed.
const LINGER: Duration = Duration::from_secs(2);

/// What the hostile item does after resizing shared memory.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    /// Returns normally, reporting what `ftruncate` said.
    Return,
    /// Exits its process with code 3.
    Exit,
}

/// A frame written into the control socket.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forge {
    /// `01 00 00 00 11`: a `DONE` with no body.
    FiveByteDone,
    /// A length of 0.
    ZeroLength,
    /// A length of `0xFFFF_FFFF`, then a few bytes.
    MaxLength,
    /// 255 random bytes after a length that says so: a whole frame whose
    /// contents are noise.
    Garbage,
    /// A well-formed frame with a tag no side uses.
    UnknownTag,
    /// A complete `DONE` for a batch id that is not in flight.
    DoneNotInFlight,
    /// A `DONE` with the real batch id and nothing after it.
    DoneShorterThanHeader,
    /// A `DONE` with the real batch id that claims the batch's item count
    /// and carries one item.
    DoneMissingItems,
    /// A `DONE` with the real batch id, one item and a count of one: fewer
    /// than the batch holds.
    DoneFewerItems,
    /// A `DONE` with the real batch id and four items more than the batch
    /// holds, all of them there.
    DoneMoreItems,
    /// A valid-looking `DONE` with the real batch id and one item, after
    /// which the item returns at once, so the runtime answers the batch a
    /// second time.
    SecondDone,
    /// A `DONE_SHARED` naming the first reply arena index past the last.
    SharedIndexOutOfRange,
    /// A `DONE_SHARED` one byte longer than an arena holds.
    SharedBeyondArena,
    /// A `DONE_SHARED` of 4 KiB after every arena is filled with `0xFF`.
    SharedGarbage,
}

/// A forgery of the progress page, after which the item spins.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageForgery {
    /// Every byte zero.
    Zeroed,
    /// The running item's start an hour from now.
    FutureStart,
    /// Another batch id.
    OtherBatch,
    /// An item index past the end of the batch.
    ItemBeyondBatch,
    /// Every byte random.
    Garbage,
}

/// What shared memory is scribbled with.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fill {
    Ones,
    Random,
}

/// What the hostile item does.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attack {
    /// Nothing: every item is innocent.
    None,
    /// `ftruncate`s its progress page to 0.
    TruncatePage(Then),
    /// `ftruncate`s every arena to 0.
    TruncateArenas(Then),
    /// Writes a forged frame, then lingers ([`LINGER`]) and returns.
    Send(Forge),
    /// Writes a frame header of length `len` and the first `body` bytes
    /// of the frame, then sleeps [`FOREVER`].
    Stall { len: u32, body: u32 },
    /// Forges its progress page, then spins for [`FOREVER`].
    ForgePage(PageForgery),
    /// Fills its progress page and every arena, then returns.
    Scribble(Fill),
}

/// One argument tuple of [`hostile`].
pub type Item = (Attack, u64, u64, String);

/// Returns `(2 * x, "")`; on `x == bad`, records the run in `dir` (see
/// [`RunFile`]) and carries out `attack`, returning `2 * x` and a note.
#[worker]
pub fn hostile(attack: Attack, x: u64, bad: u64, dir: String) -> (u64, String) {
    if x != bad {
        return (2 * x, String::new());
    }
    let run = RunFile::create(Path::new(&dir), x);
    (2 * x, carry_out(attack, x, &run))
}

/// A named series of floats: a result with a block inside it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    pub values: Vec<f64>,
}

/// How [`corrupt_block`] breaks the block of its forged result.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockDamage {
    /// The count says 1,000 floats; 16 bytes follow.
    CountPastTheBytes,
    /// A count whose byte length overflows a `usize`.
    CountOverflowing,
    /// Two floats and one byte more.
    TrailingByte,
}

/// Answers its own batch with a result whose float block is damaged as
/// `damage` says (the name before it is well-formed), then lingers; the
/// result it returns after that is a second answer, a breach.
#[worker]
pub fn corrupt_block(damage: BlockDamage) -> Series {
    let mut item = vec![4, b'n', b'a', b'm', b'e'];
    match damage {
        BlockDamage::CountPastTheBytes => {
            item.extend_from_slice(&[0xE8, 0x07]); // 1,000
            item.extend_from_slice(&[0; 16]);
        }
        BlockDamage::CountOverflowing => {
            item.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]);
            item.extend_from_slice(&[0; 8]);
        }
        BlockDamage::TrailingByte => {
            item.push(2);
            item.extend_from_slice(&[0; 17]);
        }
    }
    let mut body = current_batch().to_le_bytes().to_vec();
    body.extend_from_slice(&1_000u64.to_le_bytes());
    body.extend_from_slice(&1u32.to_le_bytes());
    body.push(u8::try_from(item.len() << 2).expect("an item under 64 bytes"));
    body.extend_from_slice(&item);
    send_all(control_socket(), &frame(TAG_DONE, &body));
    std::thread::sleep(LINGER);
    Series {
        name: String::new(),
        values: Vec::new(),
    }
}

/// Returns the length of its argument: an argument of 64 KiB or more
/// travels through the request arena, so the worker holds its arenas
/// after it.
#[worker]
pub fn payload_len(bytes: Vec<u8>) -> u64 {
    bytes.len() as u64
}

/// A pool's initializer that answers its own batch with a `DONE` frame
/// shorter than a `DONE`'s head, then lingers.
#[worker]
pub fn forging_initializer() {
    send_all(control_socket(), &frame(TAG_DONE, &[]));
    std::thread::sleep(LINGER);
}

fn carry_out(attack: Attack, x: u64, run: &RunFile) -> String {
    match attack {
        Attack::None => String::new(),
        Attack::TruncatePage(then) => {
            let said = truncate(progress_page());
            run.note(&format!("ftruncate of the progress page: {said}"));
            finish(then, said)
        }
        Attack::TruncateArenas(then) => {
            let said: Vec<String> = arenas()
                .into_iter()
                .map(|fd| {
                    let said = truncate(fd);
                    run.note(&format!("ftruncate of arena descriptor {fd}: {said}"));
                    said
                })
                .collect();
            finish(then, said.join(" "))
        }
        Attack::Send(forge) => {
            let socket = control_socket();
            let bytes = forged(forge, x);
            run.note(&format!(
                "sending {forge:?}, {} bytes, on descriptor {socket}",
                bytes.len()
            ));
            send_all(socket, &bytes);
            if forge != Forge::SecondDone {
                std::thread::sleep(LINGER);
            }
            "returned".to_owned()
        }
        Attack::Stall { len, body } => {
            let socket = control_socket();
            let mut bytes = len.to_le_bytes().to_vec();
            bytes.push(TAG_DONE);
            bytes.resize(4 + body as usize, 0);
            run.note(&format!(
                "sending a header of length {len} and {body} bytes"
            ));
            send_all(socket, &bytes);
            std::thread::sleep(FOREVER);
            "returned".to_owned()
        }
        Attack::ForgePage(forgery) => {
            let page = progress_page();
            run.note(&format!("forging the progress page: {forgery:?}"));
            forge_page(page, forgery);
            let end = Instant::now() + FOREVER;
            while Instant::now() < end {
                std::hint::spin_loop();
            }
            "returned".to_owned()
        }
        Attack::Scribble(fill) => {
            let mut noise = Noise::new();
            let mut byte = || match fill {
                Fill::Ones => 0xFF,
                Fill::Random => noise.byte(),
            };
            let arenas = arenas();
            assert!(!arenas.is_empty(), "no arenas to scribble");
            let note = format!("scribbling the progress page and {} arenas", arenas.len());
            run.note(&note);
            fill_fd(progress_page(), PAGE_SIZE, &mut byte);
            for &fd in &arenas {
                fill_fd(fd, file_size(fd), &mut byte);
            }
            note
        }
    }
}

/// Exits with code 3, or returns what `ftruncate` said.
fn finish(then: Then, said: String) -> String {
    match then {
        Then::Return => said,
        // SAFETY: `_exit` ends the process at once; nothing of this
        // process runs after it.
        Then::Exit => unsafe { libc::_exit(3) },
    }
}

// ---- the worker's own descriptors -----------------------------------------

/// This process's descriptors whose `/proc/self/fd` link starts with
/// `target`, lowest first.
fn fds_to(target: &str) -> Vec<RawFd> {
    let mut fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd is readable")
        .flatten()
        .filter_map(|entry| {
            let fd: RawFd = entry.file_name().to_str()?.parse().ok()?;
            let link = std::fs::read_link(entry.path()).ok()?;
            link.to_str()?.starts_with(target).then_some(fd)
        })
        .collect();
    fds.sort_unstable();
    fds
}

/// The control socket. A worker's runtime moves it off stdin to the
/// lowest free descriptor from 3 and reads through a second descriptor of
/// the same socket; its only other socket, the datagram socket of its
/// forwarded `tracing` events, arrives later, on a higher descriptor.
fn control_socket() -> RawFd {
    let fd = *fds_to("socket:[")
        .first()
        .expect("a worker process has its control socket");
    let mut kind: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `kind`.
    let got = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&raw mut kind).cast(),
            &mut len,
        )
    };
    assert!(
        got == 0 && kind == libc::SOCK_STREAM,
        "descriptor {fd} is not a stream socket"
    );
    fd
}

/// How `/proc/self/fd` names the shared-memory object `name`: a memfd, or
/// with `multiproc_portable`, POSIX shared memory under a random suffix.
fn shm_link(name: &str) -> String {
    if cfg!(multiproc_portable) {
        format!("/dev/shm/{name}.")
    } else {
        format!("/memfd:{name}")
    }
}

/// The progress page's memfd.
fn progress_page() -> RawFd {
    let fds = fds_to(&shm_link("multiproc-progress"));
    assert_eq!(fds.len(), 1, "progress pages: {fds:?}");
    fds[0]
}

/// The arenas' memfds: the request arena and the reply arenas.
fn arenas() -> Vec<RawFd> {
    fds_to(&shm_link("multiproc-frames"))
}

fn file_size(fd: RawFd) -> usize {
    // SAFETY: fstat writes into the zeroed `stat` we pass.
    let st = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        assert_eq!(libc::fstat(fd, &mut st), 0, "fstat of descriptor {fd}");
        st
    };
    usize::try_from(st.st_size).expect("a size")
}

/// `ftruncate(fd, 0)`: "ok", or the name of the error.
fn truncate(fd: RawFd) -> String {
    // SAFETY: ftruncate has no memory-safety preconditions.
    if unsafe { libc::ftruncate(fd, 0) } == 0 {
        return "ok".to_owned();
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EPERM) => "EPERM".to_owned(),
        Some(libc::EINVAL) => "EINVAL".to_owned(),
        Some(libc::EBADF) => "EBADF".to_owned(),
        other => format!("errno {other:?}"),
    }
}

/// Writes all of `bytes` to the socket.
fn send_all(fd: RawFd, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: send reads at most `bytes.len()` bytes from `bytes`.
        let n = unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL) };
        match usize::try_from(n) {
            Ok(n) => bytes = &bytes[n..],
            Err(_) if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {
            }
            Err(_) => panic!(
                "writing to the control socket: {}",
                std::io::Error::last_os_error()
            ),
        }
    }
}

fn pwrite_all(fd: RawFd, bytes: &[u8], offset: usize) {
    // SAFETY: pwrite reads at most `bytes.len()` bytes from `bytes`.
    let n = unsafe {
        libc::pwrite(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            offset as libc::off_t,
        )
    };
    assert_eq!(
        usize::try_from(n).ok(),
        Some(bytes.len()),
        "pwrite to descriptor {fd}: {}",
        std::io::Error::last_os_error()
    );
}

/// Writes `len` bytes made by `byte` over the start of the file.
fn fill_fd(fd: RawFd, len: usize, byte: &mut impl FnMut() -> u8) {
    let mut at = 0;
    while at < len {
        let chunk: Vec<u8> = (0..(len - at).min(64 << 10)).map(|_| byte()).collect();
        pwrite_all(fd, &chunk, at);
        at += chunk.len();
    }
}

// ---- the progress page ----------------------------------------------------

/// Bytes in a progress page.
const PAGE_SIZE: usize = 4096;
/// Words of the page, little-endian `u64`s (`shm/progress.rs`): the batch
/// id, the running item, its start (`CLOCK_MONOTONIC` ns), whether the
/// parent wants start times, the stop request.
const BATCH_WORD: usize = 0;
const ITEM_WORD: usize = 1;
const STARTED_WORD: usize = 2;

fn read_word(fd: RawFd, word: usize) -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: pread writes at most 8 bytes into `bytes`.
    let n = unsafe { libc::pread(fd, bytes.as_mut_ptr().cast(), 8, (word * 8) as libc::off_t) };
    assert_eq!(n, 8, "pread of the progress page");
    u64::from_le_bytes(bytes)
}

fn write_word(fd: RawFd, word: usize, value: u64) {
    pwrite_all(fd, &value.to_le_bytes(), word * 8);
}

/// The batch this worker runs, as its progress page says.
fn current_batch() -> u64 {
    read_word(progress_page(), BATCH_WORD)
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn forge_page(fd: RawFd, forgery: PageForgery) {
    match forgery {
        PageForgery::Zeroed => pwrite_all(fd, &[0; PAGE_SIZE], 0),
        PageForgery::FutureStart => {
            write_word(fd, STARTED_WORD, monotonic_ns() + 3_600_000_000_000)
        }
        PageForgery::OtherBatch => {
            write_word(fd, BATCH_WORD, read_word(fd, BATCH_WORD) + (1 << 40))
        }
        PageForgery::ItemBeyondBatch => write_word(fd, ITEM_WORD, 1000),
        PageForgery::Garbage => {
            let mut noise = Noise::new();
            fill_fd(fd, PAGE_SIZE, &mut || noise.byte());
        }
    }
}

/// Deterministic noise (a linear congruential generator).
struct Noise(u64);

impl Noise {
    fn new() -> Noise {
        Noise(0x9E37_79B9_7F4A_7C15)
    }

    fn byte(&mut self) -> u8 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 56) as u8
    }
}

// ---- frames ---------------------------------------------------------------

/// Tags of the frames a worker sends (`wire.rs`).
const TAG_DONE: u8 = 17;
const TAG_DONE_SHARED: u8 = 19;
/// A tag that neither side sends.
const TAG_UNKNOWN: u8 = 0x3E;

/// A frame: its length (the tag and body) as a little-endian `u32`, the
/// tag, the body.
fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(body.len() + 1)
        .expect("a short frame")
        .to_le_bytes()
        .to_vec();
    out.push(tag);
    out.extend_from_slice(body);
    out
}

/// A `DONE` body: batch id, elapsed ns, items run, then each result as
/// an item (a LEB128 header `len << 2 | 0`, then postcard).
fn done_body(batch: u64, count: u32, results: &[(u64, String)]) -> Vec<u8> {
    let mut body = batch.to_le_bytes().to_vec();
    body.extend_from_slice(&1_000u64.to_le_bytes());
    body.extend_from_slice(&count.to_le_bytes());
    for result in results {
        let bytes = postcard::to_stdvec(result).expect("encode a forged result");
        let mut header = (bytes.len() as u64) << 2;
        while header >= 0x80 {
            body.push(header as u8 | 0x80);
            header >>= 7;
        }
        body.push(header as u8);
        body.extend_from_slice(&bytes);
    }
    body
}

/// `n` forged results: values no item of the test returns.
fn forged_results(n: usize) -> Vec<(u64, String)> {
    (0..n as u64)
        .map(|i| (0xF0F0_0000 + i, "forged".to_owned()))
        .collect()
}

/// A `DONE_SHARED` body: the reply arena's index, the reply's sequence
/// number, the `DONE` body's length.
fn shared_body(which: u32, seq: u64, len: u64) -> Vec<u8> {
    let mut body = which.to_le_bytes().to_vec();
    body.extend_from_slice(&seq.to_le_bytes());
    body.extend_from_slice(&len.to_le_bytes());
    body
}

/// The bytes of `forge`, for the batch that runs now, whose item `x`
/// is the hostile one.
fn forged(forge: Forge, x: u64) -> Vec<u8> {
    let chunk = CHUNK as u32;
    match forge {
        Forge::FiveByteDone => vec![1, 0, 0, 0, TAG_DONE],
        Forge::ZeroLength => vec![0, 0, 0, 0],
        Forge::MaxLength => vec![0xFF, 0xFF, 0xFF, 0xFF, TAG_DONE, 0, 0, 0],
        Forge::Garbage => {
            let mut noise = Noise::new();
            let mut out = 255u32.to_le_bytes().to_vec();
            out.extend((0..255).map(|_| noise.byte()));
            out
        }
        Forge::UnknownTag => frame(TAG_UNKNOWN, &[0xAB; 8]),
        Forge::DoneNotInFlight => frame(
            TAG_DONE,
            &done_body(current_batch() + (1 << 40), chunk, &forged_results(CHUNK)),
        ),
        Forge::DoneShorterThanHeader => frame(TAG_DONE, &current_batch().to_le_bytes()),
        Forge::DoneMissingItems => frame(
            TAG_DONE,
            &done_body(current_batch(), chunk, &forged_results(1)),
        ),
        Forge::DoneFewerItems => {
            frame(TAG_DONE, &done_body(current_batch(), 1, &forged_results(1)))
        }
        Forge::DoneMoreItems => frame(
            TAG_DONE,
            &done_body(current_batch(), chunk + 4, &forged_results(CHUNK + 4)),
        ),
        Forge::SecondDone => frame(
            TAG_DONE,
            &done_body(current_batch(), 1, &[(2 * x, "forged".to_owned())]),
        ),
        Forge::SharedIndexOutOfRange => {
            // One request arena, the rest reply arenas.
            let replies = arenas().len().checked_sub(1).expect("no arenas");
            frame(TAG_DONE_SHARED, &shared_body(replies as u32, 1, 64))
        }
        Forge::SharedBeyondArena => {
            // An arena holds its length less a 64-byte header.
            let largest = arenas()
                .into_iter()
                .map(file_size)
                .max()
                .expect("no arenas");
            frame(TAG_DONE_SHARED, &shared_body(0, 1, largest as u64 - 63))
        }
        Forge::SharedGarbage => {
            let arenas = arenas();
            assert!(!arenas.is_empty(), "no arenas");
            for fd in arenas {
                fill_fd(fd, file_size(fd), &mut || 0xFF);
            }
            frame(TAG_DONE_SHARED, &shared_body(0, 1, 4096))
        }
    }
}

// ---------------------------------------------------------------------------
// Runs of the hostile item, recorded where the test can count them

/// The file of one run of the hostile item: `dir/<x>.<n>` for the first
/// free `n`, holding the worker's pid on its first line and then what the
/// attack does, one note a line. A note is written before the act it
/// describes (or, for `ftruncate`, right after it, before anything the
/// parent could see): the parent may kill the process the moment the act
/// is done.
struct RunFile(PathBuf);

impl RunFile {
    fn create(dir: &Path, x: u64) -> RunFile {
        for n in 0.. {
            let path = dir.join(format!("{x}.{n}"));
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path);
            match file {
                Ok(mut f) => {
                    use std::io::Write;
                    writeln!(f, "{}", std::process::id()).expect("write the run file");
                    return RunFile(path);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => panic!("cannot record a run in {}: {e}", dir.display()),
            }
        }
        unreachable!()
    }

    fn note(&self, line: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.0)
            .expect("open the run file");
        writeln!(f, "{line}").expect("write the run file");
    }
}

/// One recorded run.
#[derive(Debug)]
pub struct Run {
    pub pid: u32,
    pub notes: Vec<String>,
}

/// The recorded runs of item `x`, in order.
pub fn runs(dir: &Path, x: u64) -> Vec<Run> {
    (0..)
        .map_while(|n| std::fs::read_to_string(dir.join(format!("{x}.{n}"))).ok())
        .map(|text| {
            let mut lines = text.lines();
            Run {
                pid: lines.next().and_then(|l| l.parse().ok()).expect("a pid"),
                notes: lines.map(str::to_owned).collect(),
            }
        })
        .collect()
}
