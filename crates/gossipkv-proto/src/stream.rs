//! The framing of bulk streams: how encoded envelopes travel over a byte
//! stream (TCP) when a peer that is far behind catches up in bulk.
//!
//! A stream opens with [`STREAM_MAGIC`] followed by frames. A frame is a
//! 4-byte big-endian length and that many bytes of one encoded envelope
//! (see [`crate::encode`]); a frame of length zero ([`end_frame`]) marks
//! the end of what the sender meant to send, so the receiver tells a
//! finished stream from a cut one. When the length's top bit is set
//! ([`COMPRESSED`]), the bytes are the envelope compressed as one LZ4
//! block, behind its 4-byte little-endian length ([`frame_compressed`]
//! uses it when it saves at least an eighth). Every byte a stream carries
//! passes through this module ([`frame`], [`frame_compressed`], [`open`],
//! [`FrameReader`]): it is the one place a later layer (authentication,
//! encryption) seals and opens them.
//!
//! [`FrameReader`] takes bytes as they arrive and hands back whole frames;
//! it never holds more than one frame of at most its `max_frame` bytes plus
//! the bytes of the last [`FrameReader::push`], and refuses a length above
//! `max_frame` as soon as the 4 length bytes are in.

use bytes::{Buf, Bytes, BytesMut};

/// The first bytes of every stream ("gossipkv stream, version 1").
pub const STREAM_MAGIC: [u8; 4] = *b"GKS1";

/// Bytes of a frame's length prefix.
pub const FRAME_HEADER: usize = 4;

/// The bit of a frame's length prefix that marks a compressed frame.
pub const COMPRESSED: u32 = 1 << 31;

/// Bytes of the decompressed length in front of a compressed frame's block.
const RAW_LEN: usize = 4;

/// A frame: `payload` behind its length prefix.
///
/// # Panics
/// Never for payloads up to 4 GiB; a longer one is a caller's bug and
/// panics (frames are bounded far below that by [`crate::Limits`]).
pub fn frame(payload: &[u8]) -> Bytes {
    let len = u32::try_from(payload.len()).expect("a frame is shorter than 4 GiB");
    let mut out = BytesMut::with_capacity(FRAME_HEADER + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    out.freeze()
}

/// A frame of `payload`, compressed when that saves at least an eighth of
/// its bytes (LZ4, one block: fast enough that it never slows a stream on
/// its own; real values compress two to four times, repetitive ones far
/// more, random ones not at all and go as they are).
///
/// # Panics
/// As [`frame`].
pub fn frame_compressed(payload: &[u8]) -> Bytes {
    let bound = lz4_flex::block::get_maximum_output_size(payload.len());
    let mut out = vec![0u8; FRAME_HEADER + RAW_LEN + bound];
    let Ok(n) = lz4_flex::block::compress_into(payload, &mut out[FRAME_HEADER + RAW_LEN..]) else {
        return frame(payload);
    };
    let len = RAW_LEN + n;
    if len > payload.len() - payload.len() / 8 {
        return frame(payload);
    }
    let raw = u32::try_from(payload.len()).expect("a frame is shorter than 4 GiB");
    let wire = u32::try_from(len).expect("a frame is shorter than 2 GiB") | COMPRESSED;
    out[..FRAME_HEADER].copy_from_slice(&wire.to_be_bytes());
    out[FRAME_HEADER..FRAME_HEADER + RAW_LEN].copy_from_slice(&raw.to_le_bytes());
    out.truncate(FRAME_HEADER + len);
    Bytes::from(out)
}

/// The frame that ends a stream: length zero.
pub fn end_frame() -> Bytes {
    Bytes::from_static(&[0, 0, 0, 0])
}

/// The opening of a stream: [`STREAM_MAGIC`] and the first frame.
pub fn open(first: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(STREAM_MAGIC.len() + FRAME_HEADER + first.len());
    out.extend_from_slice(&STREAM_MAGIC);
    out.extend_from_slice(&frame(first));
    out.freeze()
}

/// One unit of a stream, as [`FrameReader`] hands it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The payload of a frame (one encoded envelope).
    Data(Bytes),
    /// The sender's end-of-stream marker.
    End,
}

/// Why a stream's bytes are not a valid stream. The stream is then closed.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The stream did not start with [`STREAM_MAGIC`].
    #[error("the stream does not start with the gossipkv stream magic")]
    BadMagic,
    /// A frame's length prefix exceeds the largest frame accepted.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// The length announced.
        len: usize,
        /// The largest accepted.
        max: usize,
    },
    /// Bytes came after the end-of-stream marker.
    #[error("bytes after the end of the stream")]
    AfterEnd,
    /// A compressed frame does not decompress to the length it announced.
    #[error("a compressed frame is corrupt")]
    Corrupt,
}

/// Splits the bytes of a stream, as they arrive, into frames.
#[derive(Debug)]
pub struct FrameReader {
    buf: BytesMut,
    max_frame: usize,
    /// Whether the magic is still to be checked (streams read by the
    /// serving side start with it).
    expect_magic: bool,
    ended: bool,
}

impl FrameReader {
    /// A reader refusing frames longer than `max_frame`; `expect_magic`
    /// when the stream starts with [`STREAM_MAGIC`] (the side that accepted
    /// the connection reads it).
    pub fn new(max_frame: usize, expect_magic: bool) -> Self {
        FrameReader {
            buf: BytesMut::new(),
            max_frame,
            expect_magic,
            ended: false,
        }
    }

    /// Bytes received, in order. Call [`next_frame`](Self::next_frame)
    /// until it returns `Ok(None)` after each push.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), StreamError> {
        if self.ended && !bytes.is_empty() {
            return Err(StreamError::AfterEnd);
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// The next whole frame, if one is in; an error as soon as the bytes
    /// cannot be a valid stream.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, StreamError> {
        if self.expect_magic {
            let n = self.buf.len().min(STREAM_MAGIC.len());
            if self.buf[..n] != STREAM_MAGIC[..n] {
                return Err(StreamError::BadMagic);
            }
            if n < STREAM_MAGIC.len() {
                return Ok(None);
            }
            self.buf.advance(STREAM_MAGIC.len());
            self.expect_magic = false;
        }
        if self.ended {
            return match self.buf.is_empty() {
                true => Ok(None),
                false => Err(StreamError::AfterEnd),
            };
        }
        let Some(head) = self.buf.get(..FRAME_HEADER) else {
            return Ok(None);
        };
        let word = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let compressed = word & COMPRESSED != 0;
        let len = (word & !COMPRESSED) as usize;
        if len > self.max_frame {
            return Err(StreamError::FrameTooLarge {
                len,
                max: self.max_frame,
            });
        }
        if self.buf.len() < FRAME_HEADER + len {
            // Room for the rest of the frame at once.
            self.buf.reserve(FRAME_HEADER + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(FRAME_HEADER);
        if len == 0 && compressed {
            return Err(StreamError::Corrupt);
        }
        if len == 0 {
            self.ended = true;
            return match self.buf.is_empty() {
                true => Ok(Some(Frame::End)),
                false => Err(StreamError::AfterEnd),
            };
        }
        let payload = self.buf.split_to(len).freeze();
        match compressed {
            false => Ok(Some(Frame::Data(payload))),
            true => decompress(&payload, self.max_frame).map(|p| Some(Frame::Data(p))),
        }
    }

    /// Whether the end-of-stream marker was read.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Bytes held (an incomplete frame).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

/// A compressed frame's envelope: at most `max` bytes, exactly as many as
/// announced.
fn decompress(payload: &[u8], max: usize) -> Result<Bytes, StreamError> {
    let Some((raw, block)) = payload.split_first_chunk::<RAW_LEN>() else {
        return Err(StreamError::Corrupt);
    };
    let raw = u32::from_le_bytes(*raw) as usize;
    if raw > max {
        return Err(StreamError::FrameTooLarge { len: raw, max });
    }
    let mut out = vec![0u8; raw];
    match lz4_flex::block::decompress_into(block, &mut out) {
        Ok(n) if n == raw && raw > 0 => Ok(Bytes::from(out)),
        _ => Err(StreamError::Corrupt),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(r: &mut FrameReader) -> Result<Vec<Frame>, StreamError> {
        std::iter::from_fn(|| r.next_frame().transpose()).collect()
    }

    #[test]
    fn frames_come_back_whatever_the_cuts() {
        let mut bytes = open(b"hello").to_vec();
        bytes.extend_from_slice(&frame(b"one"));
        bytes.extend_from_slice(&frame(&[7; 300]));
        bytes.extend_from_slice(&end_frame());
        for cut in 1..bytes.len() {
            let mut r = FrameReader::new(1000, true);
            let mut got = Vec::new();
            for piece in bytes.chunks(cut) {
                r.push(piece).unwrap();
                got.extend(all(&mut r).unwrap());
            }
            assert_eq!(
                got,
                vec![
                    Frame::Data(Bytes::from_static(b"hello")),
                    Frame::Data(Bytes::from_static(b"one")),
                    Frame::Data(Bytes::from(vec![7; 300])),
                    Frame::End,
                ],
                "cut every {cut} bytes"
            );
            assert!(r.ended());
        }
    }

    #[test]
    fn compressed_frames_come_back_as_they_were() {
        let repetitive = b"value-0000000000000000000000000000000000000000".repeat(40);
        // xorshift: bytes with no pattern LZ4 can use.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let random: Vec<u8> = (0..2_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        let small_c = frame_compressed(&repetitive);
        assert!(small_c.len() < repetitive.len() / 4, "it compresses");
        let plain = frame_compressed(&random);
        assert!(
            plain == frame(&random),
            "incompressible bytes go as they are"
        );
        let mut bytes = small_c.to_vec();
        bytes.extend_from_slice(&plain);
        bytes.extend_from_slice(&end_frame());
        for cut in [1, 3, 7, 100, bytes.len()] {
            let mut r = FrameReader::new(10_000, false);
            let mut got = Vec::new();
            for piece in bytes.chunks(cut) {
                r.push(piece).unwrap();
                got.extend(all(&mut r).unwrap());
            }
            assert_eq!(
                got,
                vec![
                    Frame::Data(Bytes::from(repetitive.clone())),
                    Frame::Data(Bytes::from(random.clone())),
                    Frame::End
                ]
            );
        }
    }

    #[test]
    fn a_compressed_frame_claiming_a_huge_size_is_refused_before_allocating() {
        let c = frame_compressed(&b"abcd".repeat(500));
        let mut forged = c.to_vec();
        // The decompressed length, little-endian after the header.
        forged[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut r = FrameReader::new(10_000, false);
        r.push(&forged).unwrap();
        assert!(matches!(
            r.next_frame(),
            Err(StreamError::FrameTooLarge { .. })
        ));
        // A lie within the limit, or a damaged block: corrupt.
        for (at, byte) in [(4, 0x10), (8, 0xff), (c.len() - 1, 0x55)] {
            let mut bad = c.to_vec();
            bad[at] ^= byte;
            let mut r = FrameReader::new(10_000, false);
            r.push(&bad).unwrap();
            match r.next_frame() {
                // Refused, or (LZ4 has no checksum) different bytes, which the
                // envelope decoder then judges.
                Err(StreamError::Corrupt) => {}
                Ok(Some(Frame::Data(d))) => {
                    assert!(
                        d[..] != b"abcd".repeat(500)[..],
                        "damage at {at} went unseen"
                    )
                }
                other => panic!("damage at {at}: {other:?}"),
            }
        }
        let mut r = FrameReader::new(10_000, false);
        r.push(&[0x80, 0, 0, 0]).unwrap();
        assert_eq!(
            r.next_frame(),
            Err(StreamError::Corrupt),
            "compressed and empty"
        );
        let mut r = FrameReader::new(10_000, false);
        r.push(&[0x80, 0, 0, 2, 1, 0]).unwrap();
        assert_eq!(
            r.next_frame(),
            Err(StreamError::Corrupt),
            "shorter than its length"
        );
    }

    #[test]
    fn a_length_over_the_limit_is_refused_before_its_bytes_arrive() {
        let mut r = FrameReader::new(100, false);
        r.push(&101u32.to_be_bytes()).unwrap();
        assert_eq!(
            r.next_frame(),
            Err(StreamError::FrameTooLarge { len: 101, max: 100 })
        );
        let mut r = FrameReader::new(100, false);
        r.push(&u32::MAX.to_be_bytes()).unwrap();
        assert!(r.next_frame().is_err());
        assert!(
            r.buffered() < 16,
            "nothing reserved for the announced length"
        );
    }

    #[test]
    fn a_stream_without_the_magic_is_refused_at_its_first_wrong_byte() {
        let mut r = FrameReader::new(100, true);
        r.push(b"GE").unwrap();
        assert_eq!(r.next_frame(), Err(StreamError::BadMagic));
        let mut r = FrameReader::new(100, true);
        r.push(b"GK").unwrap();
        assert_eq!(r.next_frame(), Ok(None));
    }

    #[test]
    fn bytes_after_the_end_are_refused() {
        let mut r = FrameReader::new(100, false);
        let mut bytes = end_frame().to_vec();
        bytes.push(1);
        r.push(&bytes).unwrap();
        assert_eq!(r.next_frame(), Err(StreamError::AfterEnd));
        let mut r = FrameReader::new(100, false);
        r.push(&end_frame()).unwrap();
        assert_eq!(r.next_frame(), Ok(Some(Frame::End)));
        assert_eq!(r.push(b"x"), Err(StreamError::AfterEnd));
    }
}
