//! Mesh peer frames (only after mutual TLS, but a peer can still be buggy): never a panic;
//! accepted frames round-trip.
#![no_main]
use edgegate::protocol::{decode_peer, encode_peer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = decode_peer(data, 8 << 20) {
        let again = encode_peer(&frame);
        assert_eq!(decode_peer(&again, usize::MAX).ok(), Some(frame));
    }
});
