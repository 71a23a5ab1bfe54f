//! The server's RFC 6455 frame parser on arbitrary bytes, fed in chunks whose sizes come from
//! the input: never a panic, never more bytes used than given, and a message handed on is
//! never over the limit.
#![no_main]
use edgegate::transport::websocket::frame::{Incoming, Parser};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let mut parser = Parser::default();
    let mut buf: Vec<u8> = Vec::new();
    for chunk in rest.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            match parser.next(&buf, MAX) {
                Err(_) => return, // the connection would be closed with the error's code
                Ok((m, used)) => {
                    assert!(used <= buf.len());
                    buf.drain(..used);
                    match m {
                        Some(Incoming::Binary(b)) => assert!(b.len() <= MAX),
                        Some(Incoming::Ping(p)) => assert!(p.len() <= 125),
                        Some(_) => {}
                        None => break,
                    }
                }
            }
        }
    }
});
