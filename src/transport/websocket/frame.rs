//! RFC 6455 framing, server side: parses the client's (masked) frames out of a byte buffer
//! and writes the server's (unmasked) frame headers. No I/O, no allocation per frame beyond
//! the payload handed to the session.
//!
//! No extension is ever negotiated, so every RSV bit must be clear.

use bytes::Bytes;

use crate::protocol::ErrorCode;
use crate::session::TransportError;

/// Opcodes (RFC 6455 §5.2).
pub const OP_CONTINUATION: u8 = 0x0;
/// A text message (not part of the protocol: refused).
pub const OP_TEXT: u8 = 0x1;
/// A binary message: one protocol frame.
pub const OP_BINARY: u8 = 0x2;
/// Close.
pub const OP_CLOSE: u8 = 0x8;
/// Ping.
pub const OP_PING: u8 = 0x9;
/// Pong.
pub const OP_PONG: u8 = 0xA;

/// Longest server frame header: 2 bytes + 8 of extended length.
pub const MAX_HEADER: usize = 10;

/// Largest control frame payload (§5.5).
const MAX_CONTROL: usize = 125;

/// Writes the header of an unmasked, final server frame carrying `len` bytes; returns its
/// length.
pub fn header(opcode: u8, len: usize, out: &mut [u8; MAX_HEADER]) -> usize {
    out[0] = 0x80 | opcode;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if len <= u16::MAX as usize {
        out[1] = 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// Appends a whole server frame to `out`.
pub fn encode(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    let mut h = [0u8; MAX_HEADER];
    let n = header(opcode, payload.len(), &mut h);
    out.extend_from_slice(&h[..n]);
    out.extend_from_slice(payload);
}

/// A close frame's payload: the code, then a reason cut to fit 123 bytes on a character
/// boundary.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_CONTROL - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut p = Vec::with_capacity(2 + end);
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(&reason.as_bytes()[..end]);
    p
}

/// One complete message or control frame from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A binary message (reassembled if it was fragmented).
    Binary(Bytes),
    /// A ping to answer with this payload.
    Ping(Bytes),
    /// A pong (ignored).
    Pong,
    /// The client closes, with its code if it sent one.
    Close(Option<u16>),
}

/// Reassembles client frames into messages. Holds only a fragmented message in progress.
#[derive(Debug, Default)]
pub struct Parser {
    /// Payload of a fragmented binary message so far.
    partial: Option<Vec<u8>>,
}

fn protocol(code: ErrorCode, reason: impl Into<String>) -> TransportError {
    TransportError::Protocol {
        code,
        reason: reason.into(),
    }
}

impl Parser {
    /// Takes the next message or control frame from the front of `buf`. Returns it (or
    /// `None` when `buf` holds no complete one yet) and how many bytes of `buf` were used:
    /// the caller drops those. Fragments of a message are kept here until its last one. A
    /// message over `max` bytes is refused as soon as a header says so, before its payload
    /// arrives.
    pub fn next(
        &mut self,
        buf: &[u8],
        max: usize,
    ) -> Result<(Option<Incoming>, usize), TransportError> {
        let mut used = 0;
        loop {
            let rest = &buf[used..];
            let Some((fin, opcode, start, len)) = parse_header(rest, max)? else {
                return Ok((None, used));
            };
            if rest.len() < start + len {
                return Ok((None, used));
            }
            let mut mask = [0u8; 4];
            mask.copy_from_slice(&rest[start - 4..start]);
            let mut payload = rest[start..start + len].to_vec();
            unmask(&mut payload, mask);
            used += start + len;
            let m = match opcode {
                OP_BINARY | OP_CONTINUATION => {
                    let whole = match (opcode, self.partial.take()) {
                        (OP_BINARY, None) => payload,
                        (OP_CONTINUATION, Some(mut p)) => {
                            if p.len() + payload.len() > max {
                                return Err(too_large(p.len() + payload.len(), max));
                            }
                            p.extend_from_slice(&payload);
                            p
                        }
                        (OP_BINARY, Some(_)) => {
                            return Err(protocol(
                                ErrorCode::BadTransport,
                                "a new message started before the fragmented one ended",
                            ));
                        }
                        _ => {
                            return Err(protocol(
                                ErrorCode::BadTransport,
                                "continuation frame without a message to continue",
                            ));
                        }
                    };
                    if !fin {
                        self.partial = Some(whole);
                        continue;
                    }
                    Incoming::Binary(Bytes::from(whole))
                }
                OP_PING => Incoming::Ping(Bytes::from(payload)),
                OP_PONG => Incoming::Pong,
                _ => {
                    let code =
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    Incoming::Close(code)
                }
            };
            return Ok((Some(m), used));
        }
    }
}

fn too_large(len: usize, max: usize) -> TransportError {
    protocol(
        ErrorCode::FrameTooLarge,
        format!("frame of {len} bytes exceeds the {max}-byte limit"),
    )
}

/// Parses a frame header at the front of `buf`: (fin, opcode, payload start, payload length),
/// or `None` if the header is not complete yet.
fn parse_header(
    buf: &[u8],
    max: usize,
) -> Result<Option<(bool, u8, usize, usize)>, TransportError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    if b0 & 0x70 != 0 {
        return Err(protocol(
            ErrorCode::BadTransport,
            "reserved bits set: no WebSocket extension was negotiated",
        ));
    }
    match opcode {
        OP_TEXT => {
            return Err(protocol(
                ErrorCode::BadTransport,
                "text messages are not part of the protocol; send binary frames",
            ));
        }
        OP_CONTINUATION | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
        other => {
            return Err(protocol(
                ErrorCode::BadTransport,
                format!("unknown WebSocket opcode {other:#x}"),
            ));
        }
    }
    if b1 & 0x80 == 0 {
        return Err(protocol(
            ErrorCode::BadTransport,
            "client frames must be masked (RFC 6455 §5.1)",
        ));
    }
    let (len, at) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        n => (n as u64, 2),
    };
    if opcode >= OP_CLOSE {
        if !fin || len > MAX_CONTROL as u64 {
            return Err(protocol(
                ErrorCode::BadTransport,
                "control frames must be final and at most 125 bytes",
            ));
        }
    } else if len > max as u64 {
        return Err(too_large(usize::try_from(len).unwrap_or(usize::MAX), max));
    }
    if buf.len() < at + 4 {
        return Ok(None);
    }
    Ok(Some((fin, opcode, at + 4, len as usize)))
}

/// XORs `data` with the 4-byte mask, eight bytes at a time.
fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let m8 = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) ^ m8;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (§4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    use base64::Engine;
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    h.update(key);
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn client(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn parse_all(bytes: &[u8], max: usize) -> Result<Vec<Incoming>, TransportError> {
        let mut p = Parser::default();
        let mut at = 0;
        let mut out = Vec::new();
        loop {
            let (m, used) = p.next(&bytes[at..], max)?;
            at += used;
            match m {
                Some(m) => out.push(m),
                None => break,
            }
        }
        assert_eq!(at, bytes.len(), "left over");
        Ok(out)
    }

    fn code(e: TransportError) -> ErrorCode {
        match e {
            TransportError::Protocol { code, .. } => code,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn the_rfc_accept_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn binary_at_every_length_class_and_every_split() {
        for len in [0usize, 1, 7, 8, 125, 126, 127, 1000, 65535, 65536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let wire = client(true, OP_BINARY, &payload);
            assert_eq!(
                parse_all(&wire, 1 << 20).expect("parses"),
                vec![Incoming::Binary(Bytes::from(payload.clone()))]
            );
            // Fed a byte at a time, nothing comes out before the last byte.
            if len <= 130 {
                let mut p = Parser::default();
                let mut buf = Vec::new();
                for (i, b) in wire.iter().enumerate() {
                    buf.push(*b);
                    let (got, used) = p.next(&buf, 1 << 20).expect("parses");
                    buf.drain(..used);
                    assert_eq!(got.is_some(), i == wire.len() - 1, "len {len} at {i}");
                }
            }
        }
    }

    #[test]
    fn fragments_reassemble_around_interleaved_control_frames() {
        let mut wire = client(false, OP_BINARY, b"hel");
        wire.extend(client(true, OP_PING, b"p"));
        wire.extend(client(false, OP_CONTINUATION, b"lo "));
        wire.extend(client(true, OP_CONTINUATION, b"world"));
        wire.extend(client(true, OP_CLOSE, &close_payload(1000, "bye")));
        assert_eq!(
            parse_all(&wire, 100).expect("parses"),
            vec![
                Incoming::Ping(Bytes::from_static(b"p")),
                Incoming::Binary(Bytes::from_static(b"hello world")),
                Incoming::Close(Some(1000)),
            ]
        );
    }

    #[test]
    fn oversize_is_refused_from_the_header_alone() {
        let wire = client(true, OP_BINARY, &[0u8; 101]);
        assert_eq!(
            code(parse_all(&wire[..4], 100).unwrap_err()),
            ErrorCode::FrameTooLarge
        );
        // A huge declared length with no body.
        let mut huge = vec![0x82, 0x80 | 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(
            code(parse_all(&huge, 100).unwrap_err()),
            ErrorCode::FrameTooLarge
        );
        // Fragments that only add up to too much.
        let mut wire = client(false, OP_BINARY, &[1u8; 60]);
        wire.extend(client(true, OP_CONTINUATION, &[2u8; 60]));
        assert_eq!(
            code(parse_all(&wire, 100).unwrap_err()),
            ErrorCode::FrameTooLarge
        );
    }

    #[test]
    fn protocol_violations_are_bad_transport() {
        let cases: Vec<Vec<u8>> = vec![
            client(true, OP_TEXT, b"hi"),
            client(true, 0x3, b""),
            client(false, OP_PING, b""),
            client(true, OP_PING, &[0u8; 126]),
            client(true, OP_CONTINUATION, b"x"),
            {
                let mut w = client(false, OP_BINARY, b"a");
                w.extend(client(true, OP_BINARY, b"b"));
                w
            },
            // Unmasked.
            vec![0x82, 0x01, b'x'],
            // RSV1 (compression) set.
            {
                let mut w = client(true, OP_BINARY, b"x");
                w[0] |= 0x40;
                w
            },
        ];
        for (i, wire) in cases.iter().enumerate() {
            let e = parse_all(wire, 100).expect_err(&format!("case {i}"));
            assert_eq!(code(e), ErrorCode::BadTransport, "case {i}");
        }
    }

    #[test]
    fn headers_and_close_payloads() {
        let mut h = [0u8; MAX_HEADER];
        assert_eq!(header(OP_BINARY, 5, &mut h), 2);
        assert_eq!(&h[..2], &[0x82, 5]);
        assert_eq!(header(OP_BINARY, 300, &mut h), 4);
        assert_eq!(&h[..4], &[0x82, 126, 1, 44]);
        assert_eq!(header(OP_BINARY, 70_000, &mut h), 10);
        assert_eq!(&h[2..10], &70_000u64.to_be_bytes());
        let long = "é".repeat(100);
        let p = close_payload(4005, &long);
        assert!(p.len() <= 125);
        assert!(std::str::from_utf8(&p[2..]).is_ok());
        assert_eq!(&p[..2], &4005u16.to_be_bytes());
    }
}
