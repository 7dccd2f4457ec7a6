//! Sealed datagrams and stream records: what opens, what does not, and the
//! replay guard.

use gossipkv_proto::seal::{
    nonce, nonce_time, open_datagram, seal_datagram, seal_record, Direction, Freshness, Key, KeyId,
    Keyring, KeyringError, OpenError, RecordReader, ReplayGuard, MAX_KEYS, SEALED_OVERHEAD,
};
use proptest::prelude::*;

fn key(n: u8) -> Key {
    Key::from_bytes([n; 32])
}

fn sealed(ring: &Keyring, cluster: &str, t: u64, plain: &[u8]) -> Vec<u8> {
    seal_datagram(ring, cluster, nonce(t, [7; 16]), plain)
}

fn open(ring: &Keyring, cluster: &str, mut buf: Vec<u8>) -> Result<Vec<u8>, OpenError> {
    let opened = open_datagram(ring, cluster, &mut buf)?;
    Ok(buf[opened.plaintext].to_vec())
}

#[test]
fn a_sealed_datagram_opens_with_the_key_and_the_cluster_it_was_sealed_for() {
    let ring = Keyring::new(key(1));
    let plain = b"\x08\x01 an encoded envelope".to_vec();
    let buf = sealed(&ring, "prod", 1_000, &plain);
    assert_eq!(buf.len(), plain.len() + SEALED_OVERHEAD);
    const { assert!(SEALED_OVERHEAD <= 48) };
    // The plaintext does not show through.
    assert!(!buf.windows(8).any(|w| w == &plain[6..14]));
    let mut b = buf.clone();
    let opened = open_datagram(&ring, "prod", &mut b).unwrap();
    assert_eq!(&b[opened.plaintext.clone()], &plain[..]);
    assert_eq!(nonce_time(&opened.nonce), 1_000);
    assert_eq!(opened.holdings.ids(), &[key(1).id()]);
    // Another cluster, another key, or no seal at all: nothing opens.
    assert_eq!(open(&ring, "staging", buf.clone()), Err(OpenError::Forged));
    assert_eq!(
        open(&Keyring::new(key(2)), "prod", buf),
        Err(OpenError::UnknownKey(key(1).id()))
    );
    assert_eq!(open(&ring, "prod", plain), Err(OpenError::NotSealed));
    assert_eq!(open(&ring, "prod", Vec::new()), Err(OpenError::NotSealed));
}

#[test]
fn no_flipped_bit_and_no_truncation_opens() {
    let ring = Keyring::new(key(1));
    let mut two = ring.clone();
    two.install(key(2)).unwrap();
    for r in [&ring, &two] {
        let buf = sealed(r, "prod", 5, b"some bytes of an envelope");
        for bit in 0..buf.len() * 8 {
            let mut b = buf.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(open(r, "prod", b).is_err(), "bit {bit} flipped still opens");
        }
        for len in 0..buf.len() {
            assert!(open(r, "prod", buf[..len].to_vec()).is_err(), "{len}");
        }
        assert!(open(r, "prod", buf).is_ok());
    }
}

#[test]
fn a_rotation_installs_uses_and_removes_without_a_gap() {
    // Every node holds k1; k2 is installed everywhere, then made primary,
    // then k1 is removed.
    let mut a = Keyring::new(key(1));
    let mut b = Keyring::new(key(1));
    b.install(key(2)).unwrap();
    let from_b = sealed(&b, "c", 1, b"x");
    assert_eq!(
        from_b.len(),
        1 + SEALED_OVERHEAD + 2,
        "the secondary id is named"
    );
    let mut buf = from_b.clone();
    let opened = open_datagram(&a, "c", &mut buf).unwrap();
    assert_eq!(opened.holdings.ids(), &[key(1).id(), key(2).id()]);
    // b makes k2 primary before a installed it: a cannot open.
    b.use_key(key(2).id()).unwrap();
    assert_eq!(
        open(&a, "c", sealed(&b, "c", 2, b"x")),
        Err(OpenError::UnknownKey(key(2).id()))
    );
    a.install(key(2)).unwrap();
    assert_eq!(open(&a, "c", sealed(&b, "c", 3, b"x")), Ok(b"x".to_vec()));
    // a still seals with k1, which b still opens.
    assert_eq!(open(&b, "c", sealed(&a, "c", 4, b"y")), Ok(b"y".to_vec()));
    a.use_key(key(2).id()).unwrap();
    a.remove(key(1).id()).unwrap();
    b.remove(key(1).id()).unwrap();
    assert_eq!(open(&b, "c", sealed(&a, "c", 5, b"z")), Ok(b"z".to_vec()));
    assert_eq!(
        open(&a, "c", from_b),
        Err(OpenError::UnknownKey(key(1).id()))
    );
}

#[test]
fn keyring_changes_that_would_break_it_are_refused() {
    let mut ring = Keyring::new(key(1));
    assert_eq!(
        ring.remove(key(1).id()),
        Err(KeyringError::Primary(key(1).id()))
    );
    assert_eq!(
        ring.remove(key(9).id()),
        Err(KeyringError::Unknown(key(9).id()))
    );
    assert_eq!(
        ring.use_key(key(9).id()),
        Err(KeyringError::Unknown(key(9).id()))
    );
    ring.install(key(1)).unwrap();
    assert_eq!(
        ring.keys().len(),
        1,
        "installing a held key changes nothing"
    );
    for n in 2..=MAX_KEYS as u8 {
        ring.install(key(n)).unwrap();
    }
    assert_eq!(ring.install(key(200)), Err(KeyringError::Full));
    assert_eq!(ring.primary().id(), key(1).id());
    // Two different keys with one id: found by the birthday bound.
    let mut seen = std::collections::HashMap::new();
    let clash = (0u32..)
        .map(|i| {
            let mut b = [0u8; 32];
            b[..4].copy_from_slice(&i.to_le_bytes());
            Key::from_bytes(b)
        })
        .find_map(|k| seen.insert(k.id(), k.clone()).map(|other| (other, k)))
        .unwrap();
    let mut ring = Keyring::new(clash.0);
    assert_eq!(
        ring.install(clash.1.clone()),
        Err(KeyringError::IdClash(clash.1.id()))
    );
    // Debug never shows the key.
    let shown = format!("{:?}", key(0xAB));
    assert!(
        !shown.contains("171") && !shown.to_lowercase().contains("abab"),
        "{shown}"
    );
}

#[test]
fn stream_records_open_in_order_and_only_in_their_direction() {
    let ring = Keyring::new(key(3));
    let records: Vec<Vec<u8>> = (0..4u64)
        .map(|i| {
            let plain = vec![i as u8; 100 + i as usize];
            seal_record(
                &ring,
                "c",
                Direction::Response,
                i,
                nonce(i, [i as u8; 16]),
                &plain,
            )
        })
        .collect();
    let all: Vec<u8> = records.concat();
    // Cut anywhere: the same plaintexts come out.
    for cut in [1, 7, 31, 100, all.len() - 1] {
        let mut r = RecordReader::new(Direction::Response, 1 << 10);
        let mut got = r.push(&ring, "c", &all[..cut]).unwrap();
        got.extend(r.push(&ring, "c", &all[cut..]).unwrap());
        let want: Vec<Vec<u8>> = (0..4u64).map(|i| vec![i as u8; 100 + i as usize]).collect();
        assert_eq!(got, want, "cut at {cut}");
    }
    // Reordered, dropped, reflected or of another cluster: refused.
    let swapped = [records[1].clone(), records[0].clone()].concat();
    let dropped = [records[0].clone(), records[2].clone()].concat();
    for (bytes, dir, cluster) in [
        (&swapped, Direction::Response, "c"),
        (&dropped, Direction::Response, "c"),
        (&all, Direction::Request, "c"),
        (&all, Direction::Response, "d"),
    ] {
        let mut r = RecordReader::new(dir, 1 << 10);
        assert_eq!(r.push(&ring, "c2", &[]), Ok(Vec::new()));
        assert_eq!(r.push(&ring, cluster, bytes), Err(OpenError::Forged));
    }
    // A length above the limit is refused before its bytes arrive.
    let mut r = RecordReader::new(Direction::Response, 50);
    assert!(matches!(
        r.push(&ring, "c", &records[0][..4]),
        Err(OpenError::TooLong { .. })
    ));
    let mut r = RecordReader::new(Direction::Response, 1 << 10);
    assert_eq!(
        r.push(&ring, "c", &[0, 0, 0, 3, 1, 2, 3]),
        Err(OpenError::Truncated)
    );
}

#[test]
fn the_replay_guard_refuses_replays_stale_and_future_datagrams() {
    let mut g = ReplayGuard::new(30_000, 5_000, 1_000);
    let now = 1_000_000;
    let n = nonce(now - 10, [1; 16]);
    assert_eq!(g.check(now, &n), Ok(()));
    assert_eq!(g.check(now + 1, &n), Err(Freshness::Replayed));
    assert_eq!(g.check(now, &nonce(now - 10, [2; 16])), Ok(()));
    assert_eq!(g.check(now, &nonce(now + 5_000, [3; 16])), Ok(()));
    assert_eq!(
        g.check(now, &nonce(now + 5_001, [3; 16])),
        Err(Freshness::Future)
    );
    assert_eq!(
        g.check(now, &nonce(u64::MAX, [3; 16])),
        Err(Freshness::Future)
    );
    assert_eq!(g.check(now, &nonce(now - 35_000, [4; 16])), Ok(()));
    assert_eq!(
        g.check(now, &nonce(now - 35_001, [4; 16])),
        Err(Freshness::Stale)
    );
    assert_eq!(g.check(now, &nonce(0, [4; 16])), Err(Freshness::Stale));
    // A clock at zero, or at the end of time, does not wrap.
    let mut g0 = ReplayGuard::new(30_000, 5_000, 10);
    assert_eq!(g0.check(0, &nonce(0, [1; 16])), Ok(()));
    assert_eq!(g0.check(u64::MAX, &nonce(u64::MAX, [1; 16])), Ok(()));
    // Once out of the window, a datagram is forgotten and refused as stale.
    let later = now + 60_000;
    assert_eq!(g.check(later, &nonce(later, [9; 16])), Ok(()));
    assert_eq!(g.len(), 1);
    assert_eq!(g.check(later, &n), Err(Freshness::Stale));
}

#[test]
fn a_full_replay_guard_forgets_the_oldest_and_refuses_at_or_before_it() {
    let mut g = ReplayGuard::new(60_000, 0, 100);
    let now = 1_000_000;
    let nonces: Vec<_> = (0..150u64)
        .map(|i| nonce(now - 1_000 + i, [i as u8; 16]))
        .collect();
    for n in &nonces {
        assert_eq!(g.check(now, n), Ok(()));
    }
    assert_eq!(g.len(), 100);
    assert_eq!(g.forgotten(), 50);
    // Every replay is refused: the forgotten ones as stale.
    for (i, n) in nonces.iter().enumerate() {
        let want = if i < 50 {
            Freshness::Stale
        } else {
            Freshness::Replayed
        };
        assert_eq!(g.check(now, n), Err(want), "{i}");
    }
    // New datagrams after the floor still pass.
    assert_eq!(g.check(now, &nonce(now, [200; 16])), Ok(()));
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_open_and_never_panic(
        mut bytes in prop::collection::vec(any::<u8>(), 0..200),
        first in prop_oneof![Just(0xB4u8), Just(0xB5), Just(0xB7), any::<u8>()],
    ) {
        if let Some(b) = bytes.first_mut() {
            *b = first;
        }
        let mut ring = Keyring::new(key(1));
        ring.install(key(2)).unwrap();
        prop_assert!(open_datagram(&ring, "c", &mut bytes.clone()).is_err());
        let mut r = RecordReader::new(Direction::Request, 64);
        prop_assert!(r.push(&ring, "c", &bytes).map_or(true, |v| v.is_empty()));
    }

    #[test]
    fn sealed_datagrams_round_trip(
        plain in prop::collection::vec(any::<u8>(), 0..2_000),
        t in any::<u64>(),
        random in any::<[u8; 16]>(),
        cluster in ".{0,40}",
    ) {
        let ring = Keyring::new(key(5));
        let buf = seal_datagram(&ring, &cluster, nonce(t, random), &plain);
        prop_assert_eq!(buf.len(), plain.len() + SEALED_OVERHEAD);
        let mut b = buf.clone();
        let opened = open_datagram(&ring, &cluster, &mut b).unwrap();
        prop_assert_eq!(&b[opened.plaintext], &plain[..]);
        prop_assert_eq!(nonce_time(&opened.nonce), t);
        prop_assert_eq!(opened.holdings.primary(), KeyId(key(5).id().0));
    }
}
