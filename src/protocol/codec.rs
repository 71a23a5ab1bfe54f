//! The one bincode configuration, frame encode/decode, and stream length-prefix reassembly.

use bytes::{Buf, Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{ClientFrame, PeerFrame, ServerFrame};

/// Bytes of the stream length prefix (little-endian `u32`).
pub const LEN_PREFIX: usize = 4;

/// Ceiling on the memory one decode may claim, in bytes (8 MiB).
///
/// bincode checks every length field against this before allocating, so a 10-byte frame that
/// claims a 2^40-byte string fails instead of aborting the process. It sits above any sane
/// `max_frame`, which `config` caps at 4 MiB.
pub const DECODE_LIMIT: usize = 8 * 1024 * 1024;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

/// A frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not enough bytes yet for a whole frame; read more and try again.
    #[error("incomplete frame")]
    Short,
    /// A frame of zero length.
    #[error("empty frame")]
    Empty,
    /// A frame longer than the limit.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Declared or actual length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// Bytes left over after a complete frame.
    #[error("{0} trailing bytes after the frame")]
    Trailing(usize),
    /// The bytes are not a valid frame.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// A frame could not be encoded (only possible for a frame over the encode limit).
#[derive(Debug, thiserror::Error)]
#[error("frame encoding failed: {0}")]
pub struct EncodeError(#[from] bincode::error::EncodeError);

fn encode<T: Serialize>(frame: &T) -> Bytes {
    // Encoding our own types into a Vec cannot fail: no limit applies on encode and every
    // type is plain data.
    let v = bincode::serde::encode_to_vec(frame, bincode::config::standard())
        .expect("invariant: wire types always encode");
    Bytes::from(v)
}

fn decode<T: DeserializeOwned>(buf: &[u8], max: usize) -> Result<T, DecodeError> {
    if buf.is_empty() {
        return Err(DecodeError::Empty);
    }
    if buf.len() > max {
        return Err(DecodeError::TooLarge {
            len: buf.len(),
            max,
        });
    }
    match bincode::serde::decode_from_slice::<T, _>(buf, config()) {
        Ok((frame, used)) if used == buf.len() => Ok(frame),
        Ok((_, used)) => Err(DecodeError::Trailing(buf.len() - used)),
        Err(bincode::error::DecodeError::UnexpectedEnd { .. }) => {
            Err(DecodeError::Malformed("frame ends early".into()))
        }
        Err(e) => Err(DecodeError::Malformed(e.to_string())),
    }
}

/// Encodes a server frame (no length prefix).
pub fn encode_server(frame: &ServerFrame) -> Bytes {
    encode(frame)
}

/// Encodes a client frame (no length prefix).
pub fn encode_client(frame: &ClientFrame) -> Bytes {
    encode(frame)
}

/// Encodes a peer frame (no length prefix).
pub fn encode_peer(frame: &PeerFrame) -> Bytes {
    encode(frame)
}

/// Prepends the 4-byte little-endian length to an encoded frame.
pub fn encode_with_prefix(body: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(LEN_PREFIX + body.len());
    b.extend_from_slice(&frame_len(body.len()));
    b.extend_from_slice(body);
    b.freeze()
}

/// The length prefix for a frame body of `len` bytes.
pub fn frame_len(len: usize) -> [u8; LEN_PREFIX] {
    u32::try_from(len)
        .expect("invariant: frames are far below 4 GiB")
        .to_le_bytes()
}

/// Decodes one whole client frame of at most `max` bytes.
pub fn decode_client(buf: &[u8], max: usize) -> Result<ClientFrame, DecodeError> {
    decode(buf, max)
}

/// Decodes one whole server frame of at most `max` bytes.
pub fn decode_server(buf: &[u8], max: usize) -> Result<ServerFrame, DecodeError> {
    decode(buf, max)
}

/// Decodes one whole peer frame of at most `max` bytes.
pub fn decode_peer(buf: &[u8], max: usize) -> Result<PeerFrame, DecodeError> {
    decode(buf, max)
}

/// Reassembles length-prefixed frames from a byte stream.
///
/// Feed received bytes with [`StreamDecoder::extend`], then call [`StreamDecoder::next_frame`]
/// until it returns `Ok(None)`. Memory is bounded by `max + LEN_PREFIX` plus one read: the
/// declared length is checked before any byte of the body is buffered beyond what arrived.
#[derive(Debug)]
pub struct StreamDecoder {
    buf: BytesMut,
    max: usize,
}

impl StreamDecoder {
    /// A decoder accepting frames of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max,
        }
    }

    /// Appends received bytes.
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame body, `Ok(None)` if more bytes are needed, or an error for a
    /// zero or oversize length (after which the stream must be closed).
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, DecodeError> {
        if self.buf.len() < LEN_PREFIX {
            return Ok(None);
        }
        let len = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len == 0 {
            return Err(DecodeError::Empty);
        }
        if len > self.max {
            return Err(DecodeError::TooLarge { len, max: self.max });
        }
        if self.buf.len() < LEN_PREFIX + len {
            return Ok(None);
        }
        self.buf.advance(LEN_PREFIX);
        Ok(Some(self.buf.split_to(len).freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::*;

    #[test]
    fn rejects_trailing_bytes() {
        let mut v = encode_client(&ClientFrame::Ping { nonce: 7 }).to_vec();
        assert!(decode_client(&v, 1024).is_ok());
        v.push(0);
        assert_eq!(decode_client(&v, 1024), Err(DecodeError::Trailing(1)));
    }

    #[test]
    fn rejects_truncated_and_unknown_tag() {
        let v = encode_client(&ClientFrame::Publish {
            id: 1,
            channel: "chat:x".into(),
            mode: Mode::Reliable,
            key: None,
            data: Bytes::from_static(b"hello"),
        });
        for cut in 1..v.len() {
            assert!(
                matches!(
                    decode_client(&v[..cut], 1024),
                    Err(DecodeError::Malformed(_))
                ),
                "cut at {cut}"
            );
        }
        assert!(matches!(
            decode_client(&[200], 1024),
            Err(DecodeError::Malformed(_))
        ));
        assert_eq!(decode_client(&[], 1024), Err(DecodeError::Empty));
    }

    #[test]
    fn rejects_oversize_and_huge_claims() {
        let v = encode_client(&ClientFrame::Ping { nonce: u64::MAX });
        assert!(matches!(
            decode_client(&v, 3),
            Err(DecodeError::TooLarge { .. })
        ));
        // Publish with a string length claiming 2^62 bytes: must fail, not allocate.
        let mut evil = vec![4u8, 1, 253];
        evil.extend_from_slice(&(1u64 << 62).to_le_bytes());
        assert!(matches!(
            decode_client(&evil, 1024),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn stream_decoder_reassembles_byte_by_byte() {
        let frames: Vec<Bytes> = (0..5u64)
            .map(|n| encode_client(&ClientFrame::Ping { nonce: n * 1000 }))
            .collect();
        let mut wire = Vec::new();
        for f in &frames {
            wire.extend_from_slice(&encode_with_prefix(f));
        }
        let mut d = StreamDecoder::new(1024);
        let mut out = Vec::new();
        for b in wire {
            d.extend(&[b]);
            while let Some(f) = d.next_frame().expect("valid") {
                out.push(f);
            }
        }
        assert_eq!(out, frames);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn stream_decoder_rejects_bad_lengths() {
        let mut d = StreamDecoder::new(16);
        d.extend(&17u32.to_le_bytes());
        assert_eq!(
            d.next_frame(),
            Err(DecodeError::TooLarge { len: 17, max: 16 })
        );
        let mut d = StreamDecoder::new(16);
        d.extend(&0u32.to_le_bytes());
        assert_eq!(d.next_frame(), Err(DecodeError::Empty));
        let mut d = StreamDecoder::new(16);
        d.extend(&[5, 0]);
        assert_eq!(d.next_frame(), Ok(None));
    }
}
