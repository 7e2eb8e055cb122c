//! The RESP2 parser of `bulwark node` and the replica clients, on arbitrary bytes (small
//! limits, so every limit is reached). Beyond "never panics":
//! * a frame parsed and encoded again parses back to itself;
//! * a strict prefix of a frame is "need more bytes", never a frame or an error;
//! * `parse_command` agrees with `parse` on where the first request ends.

#![no_main]

use bulwark_resp::{Frame, Limits, Parser};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits {
    max_bulk_len: 4096,
    max_array_len: 64,
    max_depth: 4,
    max_inline_len: 1024,
    max_frame_len: 8192,
};

fuzz_target!(|data: &[u8]| {
    let parser = Parser::new(LIMITS);
    let mut buf = BytesMut::from(data);
    let mut frames = 0;
    while frames < 64 {
        let before = buf.len();
        match parser.parse(&mut buf) {
            Ok(Some(frame)) => {
                frames += 1;
                let used = before - buf.len();
                let start = data.len() - before;
                check_roundtrip(&parser, &frame);
                check_prefixes(&parser, &data[start..start + used]);
            }
            Ok(None) => {
                assert!(
                    buf.len() <= LIMITS.max_frame_len,
                    "an oversized frame waits for more"
                );
                break;
            }
            Err(_) => break,
        }
    }
    // `parse_command` reads the same first request as `parse`, or refuses it.
    let mut whole = BytesMut::from(data);
    let mut args = Vec::new();
    if let Ok(true) = parser.parse_command(&mut whole, &mut args) {
        let mut again = BytesMut::from(data);
        let mut skipped_blank = false;
        // `parse` skips blank inline lines that `parse_command` reports as empty requests.
        if args.is_empty() {
            skipped_blank = true;
        }
        if !skipped_blank {
            match parser.parse(&mut again) {
                Ok(Some(Frame::Array(items))) => {
                    assert_eq!(items.len(), args.len());
                    for (item, arg) in items.iter().zip(&args) {
                        assert_eq!(item, &Frame::Bulk(arg.clone()));
                    }
                    assert_eq!(again.len(), whole.len(), "both end the request at one byte");
                }
                other => panic!("parse_command read {args:?}; parse gave {other:?}"),
            }
        }
    }
});

fn check_roundtrip(parser: &Parser, frame: &Frame) {
    let mut encoded = BytesMut::from(&frame.to_bytes()[..]);
    let len = encoded.len();
    match parser.parse(&mut encoded) {
        Ok(Some(back)) => {
            assert_eq!(&back, frame, "encode then parse changed the frame");
            assert!(
                encoded.is_empty(),
                "the encoding of one frame is one frame ({len} bytes)"
            );
        }
        // Re-encoding may only grow the frame past a limit (an inline command's args as
        // bulk strings): that is a refusal, not a different frame.
        Err(_) => {}
        Ok(None) => panic!("the encoding of {frame:?} is incomplete"),
    }
}

fn check_prefixes(parser: &Parser, frame_bytes: &[u8]) {
    // A few cut points: every one for short frames, a spread for long ones.
    let n = frame_bytes.len();
    let step = (n / 16).max(1);
    for cut in (1..n).step_by(step) {
        let mut prefix = BytesMut::from(&frame_bytes[..cut]);
        match parser.parse(&mut prefix) {
            // Only blank inline lines are consumed while waiting for the rest.
            Ok(None) => assert!(
                frame_bytes[..cut - prefix.len()]
                    .iter()
                    .all(u8::is_ascii_whitespace),
                "a {cut}-byte prefix consumed more than blank lines"
            ),
            // Blank inline lines before a frame are a frame of their own to skip.
            Ok(Some(_))
                if frame_bytes[..cut]
                    .iter()
                    .all(|b| *b == b'\r' || *b == b'\n') => {}
            other => panic!("a {cut}-byte prefix of a {n}-byte frame gave {other:?}"),
        }
    }
}
