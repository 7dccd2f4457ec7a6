//! Time as the protocol sees it: a monotonic [`Instant`] for every timer,
//! and [`WallTime`] only where the wall clock belongs (timestamps of writes,
//! the clock-drift bound, tombstone age).

use std::fmt;
use std::ops::Add;
use std::time::Duration;

/// A point on the driver's monotonic clock, in milliseconds since an origin
/// the driver chooses (its start, say). Rounds, probes, suspicion and every
/// other timer run on it, so a wall clock stepped back or forward changes
/// none of them.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    /// The instant `ms` milliseconds after the clock's origin.
    pub const fn from_millis(ms: u64) -> Self {
        Instant(ms)
    }

    /// Milliseconds since the clock's origin.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// How long after `earlier` this is (zero if it is not after it).
    pub fn saturating_since(self, earlier: Instant) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;

    /// Saturates at the end of time instead of overflowing.
    fn add(self, d: Duration) -> Instant {
        Instant(self.0.saturating_add(millis(d)))
    }
}

impl fmt::Debug for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Instant({} ms)", self.0)
    }
}

/// Wall-clock time, in milliseconds since the Unix epoch, as the driver read
/// it. Used for the timestamps of writes, to bound how far a remote
/// timestamp may lead ours, and to age tombstones; never for timers.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WallTime(u64);

impl WallTime {
    /// The wall time `ms` milliseconds after the Unix epoch.
    pub const fn from_unix_ms(ms: u64) -> Self {
        WallTime(ms)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_unix_ms(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for WallTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WallTime({} ms since the epoch)", self.0)
    }
}

/// A duration in whole milliseconds, saturating.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_saturate_instead_of_overflowing() {
        let end = Instant::from_millis(u64::MAX - 1);
        assert_eq!(end + Duration::from_secs(1), Instant::from_millis(u64::MAX));
        assert_eq!(
            Instant::from_millis(5).saturating_since(Instant::from_millis(9)),
            Duration::ZERO
        );
        assert_eq!(
            Instant::from_millis(9).saturating_since(Instant::from_millis(5)),
            Duration::from_millis(4)
        );
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }
}
