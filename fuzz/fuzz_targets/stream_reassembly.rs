//! Length-prefixed stream reassembly: bytes split at arbitrary points (taken from the input)
//! yield exactly the frames (or the error) that one contiguous read yields, and never a frame
//! above the limit.
#![no_main]
use edgegate::protocol::StreamDecoder;
use libfuzzer_sys::fuzz_target;

const MAX: usize = 4096;

fn drain(d: &mut StreamDecoder, out: &mut Vec<Vec<u8>>) -> bool {
    loop {
        match d.next_frame() {
            Ok(Some(f)) => {
                assert!(!f.is_empty() && f.len() <= MAX);
                out.push(f.to_vec());
            }
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&splits, body)) = data.split_first() else {
        return;
    };
    let mut whole = StreamDecoder::new(MAX);
    whole.extend(body);
    let mut expect = Vec::new();
    let whole_ok = drain(&mut whole, &mut expect);

    let mut chunked = StreamDecoder::new(MAX);
    let mut got = Vec::new();
    let mut ok = true;
    let step = usize::from(splits % 13) + 1;
    for chunk in body.chunks(step) {
        chunked.extend(chunk);
        if !drain(&mut chunked, &mut got) {
            ok = false;
            break;
        }
    }
    assert_eq!(ok, whole_ok, "an error must not depend on how bytes arrive");
    if ok {
        assert_eq!(got, expect);
    } else {
        // Frames before the bad length are the same either way.
        assert!(expect.starts_with(&got) || got.starts_with(&expect));
    }
});
