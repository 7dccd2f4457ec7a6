//! Identities, hybrid logical clocks and the total order of versions.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The name of a node. Cheap to clone; compared as a string.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(Arc<str>);

impl NodeId {
    /// Creates a node id from any string.
    pub fn new(id: impl AsRef<str>) -> Self {
        NodeId(Arc::from(id.as_ref()))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for NodeId {
    fn from(s: &str) -> Self {
        NodeId::new(s)
    }
}

impl From<String> for NodeId {
    fn from(s: String) -> Self {
        NodeId(Arc::from(s))
    }
}

// Comparisons with strings, both ways, so that `member.node_id == "node-a"`
// and `"node-a" == member.node_id` compile. They compare the id's text,
// exactly as `NodeId`'s own `PartialEq` does.

impl PartialEq<str> for NodeId {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for NodeId {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for NodeId {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<NodeId> for str {
    fn eq(&self, other: &NodeId) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<NodeId> for &str {
    fn eq(&self, other: &NodeId) -> bool {
        *self == other.as_str()
    }
}

impl PartialEq<NodeId> for String {
    fn eq(&self, other: &NodeId) -> bool {
        self.as_str() == other.as_str()
    }
}

/// A hybrid logical clock timestamp: 48 bits of milliseconds since the Unix
/// epoch and a 16-bit logical counter, packed into one `u64` so that the
/// integer order is the timestamp order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hlc(u64);

/// Largest physical time an [`Hlc`] can carry (milliseconds).
pub const HLC_MAX_PHYSICAL_MS: u64 = (1 << 48) - 1;

impl Hlc {
    /// The zero timestamp, older than every write.
    pub const ZERO: Hlc = Hlc(0);

    /// Builds a timestamp from physical milliseconds (clamped to 48 bits) and a logical counter.
    pub fn new(physical_ms: u64, logical: u16) -> Self {
        Hlc((physical_ms.min(HLC_MAX_PHYSICAL_MS) << 16) | u64::from(logical))
    }

    /// Rebuilds a timestamp from its packed form (as carried on the wire).
    pub const fn from_u64(raw: u64) -> Self {
        Hlc(raw)
    }

    /// The packed form.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Milliseconds since the Unix epoch.
    pub const fn physical_ms(self) -> u64 {
        self.0 >> 16
    }

    /// Logical counter within the millisecond.
    pub const fn logical(self) -> u16 {
        (self.0 & 0xffff) as u16
    }
}

impl fmt::Debug for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.physical_ms(), self.logical())
    }
}

/// A thread-safe hybrid logical clock. It never reads a clock: the caller
/// passes the physical time to [`HlcClock::tick`].
#[derive(Debug, Default)]
pub struct HlcClock {
    last: AtomicU64,
}

impl HlcClock {
    /// A clock that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Timestamp for a local event at `physical_ms`: greater than every
    /// timestamp this clock has issued or observed.
    pub fn tick(&self, physical_ms: u64) -> Hlc {
        let floor = Hlc::new(physical_ms, 0).as_u64();
        let mut next = 0;
        // fetch_update with a closure that always returns Some cannot fail.
        let _ = self
            .last
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                next = floor.max(last.saturating_add(1));
                Some(next)
            });
        Hlc(next)
    }

    /// Records a timestamp seen from elsewhere, so the next tick is greater.
    pub fn observe(&self, hlc: Hlc) {
        self.last.fetch_max(hlc.as_u64(), Ordering::AcqRel);
    }

    /// The greatest timestamp issued or observed so far.
    pub fn last(&self) -> Hlc {
        Hlc(self.last.load(Ordering::Acquire))
    }
}

/// One incarnation of a writer: a node id and the generation it started with.
/// A node that restarts without its state takes a new generation, so its new
/// sequence numbers are never confused with the old ones.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Origin {
    /// The writer's node id.
    pub node: NodeId,
    /// The writer's incarnation.
    pub generation: u64,
}

impl Origin {
    /// Creates an origin.
    pub fn new(node: impl Into<NodeId>, generation: u64) -> Self {
        Origin {
            node: node.into(),
            generation,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.node, self.generation)
    }
}

/// The version of a write. The derived order (timestamp, then node id, then
/// generation, then sequence) is the last-writer-wins order used everywhere.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Version {
    /// When the write happened, by the writer's hybrid logical clock.
    pub hlc: Hlc,
    /// Who wrote it.
    pub node: NodeId,
    /// The writer's incarnation.
    pub generation: u64,
    /// The writer's sequence number for this write (1, 2, 3, ... per origin).
    pub seq: u64,
}

impl Version {
    /// The origin that made this write.
    pub fn origin(&self) -> Origin {
        Origin {
            node: self.node.clone(),
            generation: self.generation,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_compare_with_strings_both_ways() {
        let id = NodeId::new("node-a");
        let other = NodeId::from("node-b".to_string());
        let (a, b): (String, String) = ("node-a".into(), "node-b".into());
        // NodeId against str, &str and String.
        assert!(id == *"node-a");
        assert!(id == "node-a");
        assert!(id == a);
        assert!(id != "node-b");
        assert!(id != b);
        assert!(other != *"node-a");
        assert!(other != a);
        // And the other way round.
        assert!(*"node-a" == id);
        assert!("node-a" == id);
        assert!(a == id);
        assert!("node-a" != other);
        assert!(b != id);
        assert!(String::new() != id);
        // A prefix or a case change is not equal.
        assert!(id != "node");
        assert!(id != "NODE-A");
        // Consistent with NodeId's own equality.
        assert_eq!(id == NodeId::new("node-a"), id == "node-a");
    }

    #[test]
    fn hlc_packs_and_orders() {
        let a = Hlc::new(1000, 5);
        assert_eq!(a.physical_ms(), 1000);
        assert_eq!(a.logical(), 5);
        assert!(Hlc::new(1000, 6) > a);
        assert!(Hlc::new(1001, 0) > Hlc::new(1000, u16::MAX));
        assert_eq!(Hlc::new(u64::MAX, 0).physical_ms(), HLC_MAX_PHYSICAL_MS);
    }

    #[test]
    fn clock_is_monotonic_even_when_time_goes_back() {
        let c = HlcClock::new();
        let a = c.tick(5000);
        let b = c.tick(4000);
        assert!(b > a);
        c.observe(Hlc::new(9000, 3));
        let d = c.tick(5000);
        assert!(d > Hlc::new(9000, 3));
        let e = c.tick(10_000);
        assert_eq!(e, Hlc::new(10_000, 0));
    }

    #[test]
    fn version_order_is_hlc_then_node_then_generation() {
        let v = |h, n: &str, g| Version {
            hlc: Hlc::new(h, 0),
            node: n.into(),
            generation: g,
            seq: 1,
        };
        assert!(v(2, "a", 0) > v(1, "z", 9));
        assert!(v(1, "b", 0) > v(1, "a", 9));
        assert!(v(1, "a", 2) > v(1, "a", 1));
    }
}
