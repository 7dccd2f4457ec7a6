//! XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha-03, section 2.3): HChaCha20
//! derives a subkey from the key and the nonce's first 16 bytes, and
//! ChaCha20-Poly1305 (RFC 8439) seals under that subkey with the nonce's
//! last 8 bytes behind four zero bytes.
//!
//! HChaCha20 comes from RustCrypto's `chacha20` (covered by the audit of
//! `chacha20poly1305`), ChaCha20-Poly1305 from `ring` (BoringSSL's
//! assembly, the code rustls runs on). The output is byte for byte that of
//! RustCrypto's `XChaCha20Poly1305` (the tests compare them on random
//! inputs, and check the draft's test vector), so nodes built before this
//! module and after it read each other's datagrams. It exists for speed:
//! on this project's machines RustCrypto's AVX2 backends took 1.7-2.1 µs
//! to seal a message of up to 200 bytes (their AVX2 intrinsics are called
//! out of line, as `objdump` shows, under the current compiler), this
//! 0.36-0.42 µs; a write pushed to nine peers seals nine datagrams before
//! the last one leaves.
//!
//! `ring` does not wipe the subkey it holds for one message when it drops
//! it; a subkey opens that message only, never another or the key.

use chacha20::cipher::consts::U10;
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, CHACHA20_POLY1305};
use zeroize::Zeroizing;

use crate::seal::{KEY_LEN, NONCE_LEN, TAG_LEN};

/// The ChaCha20-Poly1305 key and nonce of a message sealed with `key`
/// under the XChaCha nonce `nonce`; `None` never happens (a 32-byte key is
/// the one length ChaCha20-Poly1305 takes).
fn subkey(key: &[u8; KEY_LEN], nonce: &[u8; NONCE_LEN]) -> Option<(LessSafeKey, Nonce)> {
    let mut head = [0u8; 16];
    head.copy_from_slice(&nonce[..16]);
    // HChaCha20: ten double rounds.
    let derived: Zeroizing<[u8; KEY_LEN]> =
        Zeroizing::new(chacha20::hchacha::<U10>(key.into(), &head.into()).into());
    let unbound = UnboundKey::new(&CHACHA20_POLY1305, &derived[..]).ok()?;
    let mut tail = [0u8; 12];
    tail[4..].copy_from_slice(&nonce[16..]);
    Some((
        LessSafeKey::new(unbound),
        Nonce::assume_unique_for_key(tail),
    ))
}

/// Encrypts `buf` in place with `key` under `nonce`, authenticating `aad`
/// too; the tag. `None` only if the cipher refuses (never for a datagram
/// or a stream record: its limit is 256 GiB).
pub(crate) fn seal(
    key: &[u8; KEY_LEN],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    buf: &mut [u8],
) -> Option<[u8; TAG_LEN]> {
    let (key, nonce) = subkey(key, nonce)?;
    let tag = key
        .seal_in_place_separate_tag(nonce, Aad::from(aad), buf)
        .ok()?;
    tag.as_ref().try_into().ok()
}

/// Decrypts `buf` in place if `tag` proves it was sealed with `key` under
/// `nonce` with `aad`; otherwise `false`, and `buf` holds nothing of use.
pub(crate) fn open(
    key: &[u8; KEY_LEN],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    buf: &mut [u8],
    tag: &[u8; TAG_LEN],
) -> bool {
    let Some((key, nonce)) = subkey(key, nonce) else {
        return false;
    };
    key.open_in_place_separate_tag(nonce, Aad::from(aad), Tag::from(*tag), buf, 0..)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use chacha20poly1305::aead::AeadInPlace;
    use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
    use proptest::prelude::*;

    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The test vector of draft-irtf-cfrg-xchacha-03, appendix A.3.1.
    #[test]
    fn the_drafts_test_vector() {
        let key: [u8; KEY_LEN] =
            hex("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")
                .try_into()
                .unwrap();
        let nonce: [u8; NONCE_LEN] = hex("404142434445464748494a4b4c4d4e4f5051525354555657")
            .try_into()
            .unwrap();
        let aad = hex("50515253c0c1c2c3c4c5c6c7");
        let plain = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let mut buf = plain.to_vec();
        let tag = seal(&key, &nonce, &aad, &mut buf).unwrap();
        assert_eq!(
            buf,
            hex(concat!(
                "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb",
                "731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452",
                "2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9",
                "21f9664c97637da9768812f615c68b13b52e"
            ))
        );
        assert_eq!(tag.to_vec(), hex("c0875924c1c7987947deafd8780acf49"));
        assert!(open(&key, &nonce, &aad, &mut buf, &tag));
        assert_eq!(buf, plain);
    }

    proptest! {
        /// Byte for byte RustCrypto's XChaCha20-Poly1305, both ways: what
        /// one seals the other opens, to the same ciphertext and tag.
        #[test]
        fn matches_rustcrypto(
            key in any::<[u8; KEY_LEN]>(),
            nonce in any::<[u8; NONCE_LEN]>(),
            aad in proptest::collection::vec(any::<u8>(), 0..80),
            plain in proptest::collection::vec(any::<u8>(), 0..1500),
        ) {
            let reference = XChaCha20Poly1305::new((&key).into());
            let mut theirs = plain.clone();
            let their_tag = reference
                .encrypt_in_place_detached(XNonce::from_slice(&nonce), &aad, &mut theirs)
                .unwrap();
            let mut ours = plain.clone();
            let our_tag = seal(&key, &nonce, &aad, &mut ours).unwrap();
            prop_assert_eq!(&ours, &theirs);
            prop_assert_eq!(&our_tag[..], &their_tag[..]);
            prop_assert!(open(&key, &nonce, &aad, &mut ours, &our_tag));
            prop_assert_eq!(&ours, &plain);
            let mut back = theirs.clone();
            reference
                .decrypt_in_place_detached(XNonce::from_slice(&nonce), &aad, &mut back, &their_tag)
                .unwrap();
            prop_assert_eq!(&back, &plain);
        }

        /// Key ids are what they were with RustCrypto's cipher (its tag
        /// over nothing, under the zero nonce): keyrings of nodes built
        /// before and after name the same keys.
        #[test]
        fn key_ids_match_rustcrypto(key in any::<[u8; KEY_LEN]>()) {
            let reference = XChaCha20Poly1305::new((&key).into());
            let tag = reference
                .encrypt_in_place_detached(
                    XNonce::from_slice(&[0u8; NONCE_LEN]),
                    b"gossipkv key id v1",
                    &mut [],
                )
                .unwrap();
            let id = crate::seal::Key::from_bytes(key).id();
            prop_assert_eq!(id.0, u16::from_le_bytes([tag[0], tag[1]]));
        }

        /// A flipped bit anywhere (ciphertext, tag, nonce, associated data
        /// or key) and nothing opens.
        #[test]
        fn any_flipped_bit_refuses(
            key in any::<[u8; KEY_LEN]>(),
            nonce in any::<[u8; NONCE_LEN]>(),
            plain in proptest::collection::vec(any::<u8>(), 1..300),
            part in 0usize..5,
            at in any::<usize>(),
            bit in 0u8..8,
        ) {
            let mut aad = b"header".to_vec();
            let mut sealed = plain.clone();
            let mut tag = seal(&key, &nonce, &aad, &mut sealed).unwrap();
            let (mut key, mut nonce) = (key, nonce);
            let flip = |bytes: &mut [u8]| {
                let i = at % bytes.len();
                bytes[i] ^= 1 << bit;
            };
            match part {
                0 => flip(&mut sealed),
                1 => flip(&mut tag),
                2 => flip(&mut nonce),
                3 => flip(&mut aad),
                _ => flip(&mut key),
            }
            prop_assert!(!open(&key, &nonce, &aad, &mut sealed, &tag));
        }
    }
}
