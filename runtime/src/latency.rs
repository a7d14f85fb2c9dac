//! Keeping idle CPUs quick to wake ([`WakeLatency`]).

use std::io::Write;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};

/// The Linux PM QoS interface for CPU wake-up latency.
const DEVICE: &str = "/dev/cpu_dma_latency";

/// While it lives, asks Linux to keep every CPU able to start running a
/// thread within a time limit after it is woken: idle CPUs then stay in
/// shallow idle states (poll, or doze lightly) instead of deep ones.
///
/// A `map` over a few hundred thousand items lasts a few hundred
/// microseconds, and it wakes threads on both sides several times: the
/// pool's driver threads, the workers, and the caller at the end. An idle
/// CPU that has gone into a deep idle state takes tens of microseconds to
/// wake (on a virtual machine whose idle CPUs halt, 20–70 µs: the host
/// must schedule the virtual CPU again), and that is most of what such a
/// `map` costs beyond its items. On the 2-core VM of `BENCHMARKS.md`,
/// holding a limit of zero took a 100 k-item `map` from 3.1–3.6 to
/// 1.9–2.3 ns per item, about what a 10 M-item one costs.
///
/// The price is power, and on a virtual machine the host's CPU time: an
/// idle CPU polls instead of sleeping. So this is an opt-in for phases
/// that need short round trips, not something a pool does by itself. It
/// is machine-wide (every process benefits and pays) and ends when the
/// value is dropped. Several may be held at once; Linux keeps the
/// strictest.
///
/// ```no_run
/// use std::time::Duration;
/// # fn main() -> multiproc_runtime::Result<()> {
/// let _quick = multiproc_runtime::WakeLatency::limit(Duration::ZERO)?;
/// // ... latency-sensitive work ...
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct WakeLatency {
    /// The request lasts as long as this descriptor is open.
    _device: std::fs::File,
}

impl WakeLatency {
    /// Asks for every CPU to wake within `max` (rounded down to whole
    /// microseconds; zero: as fast as it can) until the value is dropped.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Io`] if the request cannot be made: not Linux, or no
    /// write access to `/dev/cpu_dma_latency` (it is usually root's; a
    /// udev rule can give it to a group).
    pub fn limit(max: Duration) -> Result<WakeLatency> {
        let micros = i32::try_from(max.as_micros()).unwrap_or(i32::MAX);
        let io = |source| {
            Error::new(ErrorKind::Io {
                what: "asking for a CPU wake-up latency limit (/dev/cpu_dma_latency)",
                source,
            })
        };
        let mut device = std::fs::OpenOptions::new()
            .write(true)
            .open(DEVICE)
            .map_err(io)?;
        // The binary form: one native-endian `s32`, in microseconds.
        device.write_all(&micros.to_ne_bytes()).map_err(io)?;
        Ok(WakeLatency { _device: device })
    }
}
