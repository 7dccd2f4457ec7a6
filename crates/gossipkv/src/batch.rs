//! Many writes, one wait for the disk: [`GossipKv::batch`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gossipkv_storage::Lifetime;

use crate::error::Error;
use crate::lifetime::ttl_life;
use crate::node::GossipKv;

/// The writes of one [`GossipKv::batch`]: each applies at once, as the
/// method of the same name on [`GossipKv`] does, and is seen at once by
/// readers, watchers and peers; only the wait for the disk is left to the
/// end of the batch.
pub struct Batch<'a, K, V> {
    kv: &'a GossipKv<K, V>,
    /// Whether a write of the batch succeeded (there is something to wait
    /// for).
    wrote: AtomicBool,
}

impl<K, V> std::fmt::Debug for Batch<'_, K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("wrote", &self.wrote.load(Ordering::Relaxed))
            .finish()
    }
}

impl<K, V> Batch<'_, K, V>
where
    K: From<String> + AsRef<str> + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// As [`GossipKv::set`].
    pub fn set(&self, key: impl AsRef<str>, value: V) -> Result<(), Error> {
        self.put(key.as_ref(), value, Lifetime::FOREVER)
    }

    /// As [`GossipKv::set_with_ttl`].
    pub fn set_with_ttl(&self, key: impl AsRef<str>, value: V, ttl: Duration) -> Result<(), Error> {
        self.put(key.as_ref(), value, ttl_life(ttl)?)
    }

    /// As [`GossipKv::set_ephemeral`].
    pub fn set_ephemeral(&self, key: impl AsRef<str>, value: V) -> Result<(), Error> {
        self.put(key.as_ref(), value, Lifetime::FOREVER.owned())
    }

    /// As [`GossipKv::set_ephemeral_with_ttl`].
    pub fn set_ephemeral_with_ttl(
        &self,
        key: impl AsRef<str>,
        value: V,
        ttl: Duration,
    ) -> Result<(), Error> {
        self.put(key.as_ref(), value, ttl_life(ttl)?.owned())
    }

    /// As [`GossipKv::delete`].
    pub fn delete(&self, key: impl AsRef<str>) -> Result<(), Error> {
        self.kv.put_delete(key.as_ref())?;
        self.wrote.store(true, Ordering::Relaxed);
        Ok(())
    }

    fn put(&self, key: &str, value: V, life: Lifetime) -> Result<(), Error> {
        self.kv.put_living(key, value, life)?;
        self.wrote.store(true, Ordering::Relaxed);
        Ok(())
    }
}

impl<K, V> GossipKv<K, V>
where
    K: From<String> + AsRef<str> + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// Runs `writes`, then returns once every write it made is on disk:
    /// with a data directory in [`Durability::Sync`](crate::Durability::Sync)
    /// mode, the writes share commits instead of waiting for one each (a
    /// bulk load of 10,000 keys is a handful of commits, not 10,000).
    /// Without a data directory, or in `Interval` mode, nothing is waited
    /// for and this is the same as writing one by one; a batch that wrote
    /// nothing waits for nothing either. In `Sync` mode the calling thread
    /// blocks for the commit, as [`set`](Self::set) does: from async code,
    /// call it where blocking is fine (`tokio::task::spawn_blocking`).
    ///
    /// It is not a transaction: each write applies at once and stays when
    /// a later one fails, and readers and peers may see some writes of the
    /// batch before the others. When `writes` fails, the writes it made
    /// before are still waited for, then its error is returned; when the
    /// wait fails (the data directory failed), that error
    /// ([`Error::Persist`]) is returned instead, and no write of the batch
    /// should be taken as on disk.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), gossipkv::Error> {
    /// let kv = gossipkv::GossipKv::<String, String>::builder().build().await?;
    /// let loaded = kv.batch(|b| {
    ///     for i in 0..100 {
    ///         b.set(format!("flag/{i}"), "on".into())?;
    ///     }
    ///     b.delete("flag/7")?;
    ///     Ok(99)
    /// })?;
    /// assert_eq!(kv.len(), loaded);
    /// # Ok(())
    /// # }
    /// ```
    pub fn batch<T>(
        &self,
        writes: impl FnOnce(&Batch<'_, K, V>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let batch = Batch {
            kv: self,
            wrote: AtomicBool::new(false),
        };
        let result = writes(&batch);
        if batch.wrote.into_inner() {
            self.durable_now()?;
        }
        result
    }
}
