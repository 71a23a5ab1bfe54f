//! Client frames from the network (WebTransport control stream, datagrams, WebSocket): the
//! decoder never panics, and whatever it accepts re-encodes to bytes that decode the same.
#![no_main]
use edgegate::protocol::{DEFAULT_MAX_FRAME, decode_client, encode_client};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = decode_client(data, DEFAULT_MAX_FRAME as usize) {
        let again = encode_client(&frame);
        let back = decode_client(&again, usize::MAX).expect("a re-encoded frame decodes");
        assert_eq!(back, frame);
    }
});
