//! WebSocket binary messages as the server takes them: the size rule of the WebSocket reader
//! (over `max_frame` is `FrameTooLarge`), then the client-frame decoder, for a sequence of
//! messages cut from the input. Never a panic.
#![no_main]
use edgegate::protocol::{DEFAULT_MAX_FRAME, decode_client};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let max = DEFAULT_MAX_FRAME as usize;
    // Messages are separated by 0xFF 0x00 in the input (one message per WebSocket frame).
    for msg in data.split(|b| *b == 0xFF) {
        if msg.len() > max {
            continue; // refused before decoding
        }
        let _ = decode_client(msg, max);
    }
});
