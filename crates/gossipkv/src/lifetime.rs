//! Keys that expire ([`GossipKv::set_with_ttl`]) and keys that die with
//! their owner ([`GossipKv::set_ephemeral`]).

use std::sync::Arc;
use std::time::Duration;

use gossipkv_storage::{Lifetime, Store};
use tokio::sync::Notify;
use tracing::debug;

use crate::driver::wall_now;
use crate::error::Error;
use crate::node::GossipKv;

/// The lifetime of a value written now with time to live `ttl`.
pub(crate) fn ttl_life(ttl: Duration) -> Result<Lifetime, Error> {
    Ok(Lifetime::expiring(expiry(wall_now().as_unix_ms(), ttl)?))
}

/// Longest time to live accepted: 100 years.
pub const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The expiry of a value written at `now_ms` with time to live `ttl`.
pub(crate) fn expiry(now_ms: u64, ttl: Duration) -> Result<u64, Error> {
    if ttl.is_zero() {
        return Err(Error::InvalidTtl {
            message: "time to live is zero".into(),
        });
    }
    if ttl > MAX_TTL {
        return Err(Error::InvalidTtl {
            message: format!("time to live {ttl:?} is longer than {MAX_TTL:?}"),
        });
    }
    // Rounded up to the millisecond: a value never expires early.
    let ms = ttl.as_nanos().div_ceil(1_000_000) as u64;
    Ok(now_ms.saturating_add(ms))
}

impl<K, V> GossipKv<K, V>
where
    K: From<String> + AsRef<str> + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// Writes `value` under `key` for `ttl`: from then on every node reads
    /// the key as absent, as if deleted, and watchers see an expiry
    /// ([`ChangeKind::Expired`](crate::ChangeKind::Expired)).
    ///
    /// The expiry is an absolute wall-clock time fixed here and carried in
    /// the replicated record, so every node hides the key at the same
    /// moment with no message of its own; how close "the same moment" is
    /// depends on the nodes' clocks (a node whose clock runs 200 ms ahead
    /// hides it 200 ms early). Refreshing is a new write (`set_with_ttl`
    /// again, or `set` to keep it for good); a write or delete of the key
    /// by anyone replaces the expiry with its own. The time to live costs
    /// no traffic while the key lives.
    ///
    /// Errors: those of [`set`](Self::set), and [`Error::InvalidTtl`] for a
    /// zero `ttl` or one longer than [`MAX_TTL`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), gossipkv::Error> {
    /// use std::time::Duration;
    /// let kv = gossipkv::GossipKv::<String, String>::builder().build().await?;
    /// kv.set_with_ttl("session/42", "alice".into(), Duration::from_secs(30))?;
    /// assert_eq!(kv.get("session/42")?.as_deref(), Some("alice"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn set_with_ttl(&self, key: impl AsRef<str>, value: V, ttl: Duration) -> Result<(), Error> {
        self.set_living(key.as_ref(), value, ttl_life(ttl)?)
    }

    /// Writes `value` under `key` as an **ephemeral** key, owned by this
    /// node: once the membership says this node is dead, has left, or
    /// restarted as a new generation, every node reads the key as absent
    /// and watchers see [`ChangeKind::OwnerGone`](crate::ChangeKind::OwnerGone).
    ///
    /// - A graceful [`shutdown`](Self::shutdown) deletes this node's
    ///   ephemeral keys before it announces its departure.
    /// - A node killed is hidden everywhere once declared dead (failure
    ///   detection: a few gossip intervals), and its keys are removed for
    ///   good after [`Builder::ephemeral_grace`](crate::Builder::ephemeral_grace).
    /// - A node wrongly declared dead gets its keys back: shown again where
    ///   they were only hidden, written again where they were removed.
    /// - Another node writing the key takes it over (last writer wins): it
    ///   is then that node's, ephemeral or not as it wrote it.
    ///
    /// For service discovery: register with `set_ephemeral`, watch the
    /// prefix on the other nodes. A node without a network owns its keys
    /// for as long as it runs.
    ///
    /// Errors: those of [`set`](Self::set).
    pub fn set_ephemeral(&self, key: impl AsRef<str>, value: V) -> Result<(), Error> {
        self.set_living(key.as_ref(), value, Lifetime::FOREVER.owned())
    }

    /// [`set_ephemeral`](Self::set_ephemeral) with a time to live too (see
    /// [`set_with_ttl`](Self::set_with_ttl)): the key goes with its owner or
    /// at its expiry, whichever comes first. A service that registers this
    /// way and refreshes before the time runs out is seen gone even if its
    /// process hangs without dying.
    ///
    /// Errors: those of [`set_with_ttl`](Self::set_with_ttl).
    pub fn set_ephemeral_with_ttl(
        &self,
        key: impl AsRef<str>,
        value: V,
        ttl: Duration,
    ) -> Result<(), Error> {
        self.set_living(key.as_ref(), value, ttl_life(ttl)?.owned())
    }

    /// How long `key`'s value has left to live, if it shows one with an
    /// expiry (`None` for a key without a value, or without an expiry).
    pub fn ttl(&self, key: impl AsRef<str>) -> Option<Duration> {
        let now = wall_now().as_unix_ms();
        if !self.inner.store.contains_at(key.as_ref(), now) {
            return None;
        }
        let r = self.inner.store.get_record(key.as_ref())?;
        if !r.is_live_at(now) || r.lifetime.expires_ms == 0 {
            return None;
        }
        Some(Duration::from_millis(
            r.lifetime.expires_ms.saturating_sub(now),
        ))
    }
}

/// Sweeps expired values of a node without a network (a networked node's
/// gossip task does it): sleeps until the next expiry, or until `wake`
/// says a write may have brought one closer. Ends when the node shuts down
/// or the store is dropped.
pub(crate) fn spawn_sweeper(
    store: &Arc<Store>,
    wake: Arc<Notify>,
    mut closed: tokio::sync::watch::Receiver<bool>,
) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        debug!("no runtime: expired values are swept when len() is called");
        return;
    };
    let store = Arc::downgrade(store);
    rt.spawn(async move {
        loop {
            let next = {
                let Some(store) = store.upgrade() else {
                    return;
                };
                let now = wall_now().as_unix_ms();
                store.expire(now);
                store.next_expiry().map(|t| t.saturating_sub(now))
            };
            let wait = Duration::from_millis(next.unwrap_or(60_000).min(60_000));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = wake.notified() => {}
                _ = closed.wait_for(|c| *c) => return,
            }
        }
    });
}

/// After a store was loaded from its data dir at `generation`: values that
/// expired meanwhile become tombstones (they never show again), and the
/// ephemeral values of this node's older generations (a crash ended them)
/// are removed.
pub(crate) fn after_load(store: &Store, generation: u64) {
    let expired = store.expire(wall_now().as_unix_ms());
    let me = store.local_origin().clone();
    let mut removed = 0;
    for o in store.owners() {
        if o.node == me.node && o.generation < generation {
            removed += store.remove_owned(&o);
        }
    }
    if expired + removed > 0 {
        debug!(expired, removed, "values ended while the node was down");
    }
}
