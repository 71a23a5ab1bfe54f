//! What the load tool puts in a payload and how it reads deliveries back: the timestamped
//! 100-byte payload, a minimal reader for edgegate's `ServerFrame::Message` (so the generator
//! does not allocate per delivery), and the client frames it sends.

use bytes::Bytes;
use edgegate::protocol::{ClientFrame, Mode, PROTOCOL_VERSION, encode_client};

/// Phase marker in a payload: sent while warming up (not counted).
pub const WARMUP: u8 = b'w';
/// Phase marker: sent inside the measured window.
pub const MEASURED: u8 = b'm';

/// Shortest payload: phase byte, 16 hex digits of sequence, 16 of send time.
pub const MIN_PAYLOAD: usize = 33;

/// A payload of `size` ASCII bytes (so Socket.IO can carry it as a string): the phase, the
/// sequence number and the send time in microseconds since the run's origin, padded with `x`.
pub fn payload(size: usize, phase: u8, seq: u64, sent_us: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(size.max(MIN_PAYLOAD));
    v.push(phase);
    v.extend_from_slice(format!("{seq:016x}{sent_us:016x}").as_bytes());
    v.resize(size.max(MIN_PAYLOAD), b'x');
    v
}

/// Reads (phase, seq, sent_us) back from a payload.
pub fn parse_payload(p: &[u8]) -> Option<(u8, u64, u64)> {
    if p.len() < MIN_PAYLOAD {
        return None;
    }
    let hex = |b: &[u8]| -> Option<u64> {
        let s = std::str::from_utf8(b).ok()?;
        u64::from_str_radix(s, 16).ok()
    };
    Some((p[0], hex(&p[1..17])?, hex(&p[17..33])?))
}

/// bincode `standard()` varint (see `edgegate::protocol`): returns (value, bytes used).
fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let first = *b.first()?;
    match first {
        0..=250 => Some((first as u64, 1)),
        251 => Some((u16::from_le_bytes(b.get(1..3)?.try_into().ok()?) as u64, 3)),
        252 => Some((u32::from_le_bytes(b.get(1..5)?.try_into().ok()?) as u64, 5)),
        253 => Some((u64::from_le_bytes(b.get(1..9)?.try_into().ok()?), 9)),
        _ => None,
    }
}

/// Variant index of `ServerFrame::Message` (declaration order in `protocol::frames`).
const MESSAGE_TAG: u64 = 4;

/// The payload of a `ServerFrame::Message`, or `None` for any other frame (which the caller
/// decodes fully: those are rare). Follows the field order of `protocol::Message`.
pub fn message_data(f: &[u8]) -> Option<&[u8]> {
    let mut at = 0usize;
    let next = |f: &[u8], at: &mut usize| -> Option<u64> {
        let (v, n) = varint(f.get(*at..)?)?;
        *at += n;
        Some(v)
    };
    if next(f, &mut at)? != MESSAGE_TAG {
        return None;
    }
    let ch = next(f, &mut at)? as usize; // channel
    at += ch;
    next(f, &mut at)?; // mode
    next(f, &mut at)?; // epoch
    next(f, &mut at)?; // offset
    next(f, &mut at)?; // time_ms
    for _ in 0..2 {
        // key, publisher: Option<String>
        match *f.get(at)? {
            0 => at += 1,
            1 => {
                at += 1;
                let n = next(f, &mut at)? as usize;
                at += n;
            }
            _ => return None,
        }
    }
    let n = next(f, &mut at)? as usize;
    f.get(at..at + n)
}

/// `Hello` for an anonymous load client.
pub fn hello() -> Bytes {
    encode_client(&ClientFrame::Hello {
        protocol_version: PROTOCOL_VERSION,
        token: String::new(),
        client_name: "edgegate-load".into(),
        resume: None,
        single_stream: false,
    })
}

/// `Subscribe` to `channel` with request id `id`.
pub fn subscribe(id: u32, channel: &str) -> Bytes {
    encode_client(&ClientFrame::Subscribe {
        id,
        channel: channel.into(),
        recover: None,
        presence: None,
        presence_events: false,
    })
}

/// A `Publish` that asks for no reply (`id` 0).
pub fn publish(channel: &str, mode: Mode, data: Vec<u8>) -> Bytes {
    encode_client(&ClientFrame::Publish {
        id: 0,
        channel: channel.into(),
        mode,
        key: None,
        data: data.into(),
    })
}

/// `Pong` answering a server ping.
pub fn pong(nonce: u64) -> Bytes {
    encode_client(&ClientFrame::Pong { nonce })
}

/// Checks the payload and frame readers against the real encoder (the smoke run calls this:
/// a bench target has no test harness).
pub fn self_check() -> Result<(), String> {
    use edgegate::protocol::{Message, ServerFrame, encode_server};
    for (key, publisher, n) in [(None, None, 100), (Some("k"), Some("u"), 300)] {
        let data = payload(n, MEASURED, 7, 1234);
        let f = encode_server(&ServerFrame::Message(Message {
            channel: "bench:x".into(),
            mode: Mode::Reliable,
            epoch: 1 << 40,
            offset: 70_000,
            time_ms: 1_700_000_000_000,
            key: key.map(str::to_string),
            publisher: publisher.map(str::to_string),
            data: data.clone().into(),
        }));
        if message_data(&f) != Some(&data[..]) {
            return Err(format!("message_data misread a frame with key {key:?}"));
        }
        if parse_payload(&data) != Some((MEASURED, 7, 1234)) {
            return Err("parse_payload misread a payload".into());
        }
    }
    if message_data(&encode_server(&ServerFrame::Ping { nonce: 1 })).is_some() {
        return Err("message_data accepted a Ping".into());
    }
    Ok(())
}
