//! Server frames as the Rust client reads them: never a panic; accepted frames round-trip.
#![no_main]
use edgegate::protocol::{decode_server, encode_server};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = decode_server(data, 1 << 20) {
        let again = encode_server(&frame);
        assert_eq!(decode_server(&again, usize::MAX).ok(), Some(frame));
    }
});
