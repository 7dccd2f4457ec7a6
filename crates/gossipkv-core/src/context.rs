//! [`Context`]: the state every part of the protocol shares (configuration,
//! store, clocks, random generator, peers, outbox, counters and events),
//! kept apart from the state each part owns so that the borrow checker
//! lets a part use both.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use gossipkv_proto::{Liveness, Sender};
use gossipkv_storage::Store;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::address::Addresses;
use crate::config::{ProtocolConfig, Sizes};
use crate::event::{Event, NetworkError};
use crate::outbox::Outbox;
use crate::peers::Peers;
use crate::swim::Action;
use crate::synced::Windows;
use crate::time::{Instant, WallTime};
use crate::Stats;

/// What the parts of a protocol instance share.
#[derive(Debug)]
pub(crate) struct Context {
    pub(crate) cfg: ProtocolConfig,
    pub(crate) sizes: Sizes,
    pub(crate) store: Arc<Store>,
    /// The only source of randomness, seeded from the configuration.
    pub(crate) rng: SmallRng,
    /// The time of the latest input, on the monotonic clock.
    pub(crate) now: Instant,
    /// The wall time of the latest input.
    pub(crate) wall: WallTime,
    pub(crate) stats: Stats,
    pub(crate) events: VecDeque<Event>,
    /// Whether we announced our departure.
    pub(crate) left: bool,
    pub(crate) peers: Peers,
    pub(crate) out: Outbox,
    /// Windows of peers' digests that showed nothing we lack (until synced).
    pub(crate) windows: Windows,
    /// Address validation and reply limits (see the `address` module).
    pub(crate) addrs: Addresses,
    /// The source of the datagram being handled, if one is: what is sent
    /// meanwhile answers it, and is limited as answers are.
    pub(crate) answering: Option<SocketAddr>,
    /// Whether anything went to `answering` while handling its datagram.
    pub(crate) answered: bool,
    /// The addresses found by discovery (mDNS), contacted like seeds.
    pub(crate) discovered: Vec<SocketAddr>,
}

impl Context {
    pub(crate) fn new(cfg: ProtocolConfig, store: Arc<Store>, now: Instant) -> Self {
        let sizes = Sizes::new(&cfg);
        let rng = SmallRng::seed_from_u64(cfg.rng_seed);
        // From a generator of its own, so the peer-picking one is the same
        // stream whether or not a key is given.
        let key = match cfg.token_key {
            0 => SmallRng::seed_from_u64(!cfg.rng_seed).random(),
            key => key,
        };
        Context {
            addrs: Addresses::new(key, cfg.interval()),
            answering: None,
            answered: false,
            discovered: Vec::new(),
            rng,
            peers: Peers::new(&cfg),
            out: Outbox::new(cfg.packet_size, sizes.limits.max_message, sizes.piece),
            sizes,
            cfg,
            store,
            now,
            wall: WallTime::default(),
            stats: Stats::default(),
            events: VecDeque::new(),
            left: false,
            windows: Windows::default(),
        }
    }

    /// Our own header entry: incarnation and member-list fingerprint.
    pub(crate) fn me(&self) -> Sender {
        let (incarnation, members_hash) = self.peers.header();
        Sender {
            node_id: self.cfg.node_id.clone(),
            generation: self.cfg.generation,
            addr: self.cfg.advertise_addr,
            incarnation,
            left: self.left,
            liveness: Liveness::Alive,
            members_hash,
        }
    }

    /// Reports a problem to the driver.
    pub(crate) fn report(&mut self, error: NetworkError) {
        self.events.push_back(Event::Error(error));
    }

    /// Carries out what membership asked for; returns the addresses it
    /// wants probed with a Syn (the exchange builds those).
    pub(crate) fn run(&mut self, actions: Vec<Action>) -> Vec<SocketAddr> {
        let mut syns = Vec::new();
        for action in actions {
            match action {
                Action::Send(to, body) => self.send(to, body),
                Action::Syn(to) => syns.push(to),
                Action::MemberSync { to, theirs, ttl } => {
                    self.send_member_sync(to, theirs.as_deref(), ttl)
                }
            }
        }
        syns
    }
}
