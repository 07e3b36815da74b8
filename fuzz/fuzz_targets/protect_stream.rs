//! Seal → deliver (reordered, dropped, duplicated, bit-flipped, truncated,
//! extended) → open. The opener must accept a delivered frame exactly when it
//! is, byte for byte, the next frame the sealer made, and return its contents
//! unchanged; anything else fails without moving the counter.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use wsgate_proto::envelope::{FLAG_ENC, FLAG_ERR};
use wsgate_proto::protect::{Opener, Sealer};

#[derive(Debug, Arbitrary)]
struct FrameSpec {
    msg_type: u8,
    enc: bool,
    err: bool,
    id: u32,
    name: String,
    body: Vec<u8>,
}

#[derive(Debug, Arbitrary)]
enum Tamper {
    None,
    Flip { at: u16, mask: u8 },
    Truncate { to: u16 },
    Extend { bytes: Vec<u8> },
    SwapNameByte { at: u8, with: u8 },
}

#[derive(Debug, Arbitrary)]
struct Delivery {
    frame: u8,
    tamper: Tamper,
}

#[derive(Debug, Arbitrary)]
struct Input {
    key: [u8; 32],
    frames: Vec<FrameSpec>,
    deliveries: Vec<Delivery>,
}

fuzz_target!(|input: Input| {
    let mut sealer = Sealer::new(&input.key);
    let mut sealed: Vec<(Vec<u8>, &FrameSpec)> = Vec::new();
    for spec in input.frames.iter().take(32) {
        let flags = if spec.enc { FLAG_ENC } else { 0 } | if spec.err { FLAG_ERR } else { 0 };
        let before = sealer.next_seq();
        match sealer.seal(spec.msg_type, flags, spec.id, &spec.name, &spec.body) {
            Ok(wire) => sealed.push((wire, spec)),
            Err(_) => {
                assert!(spec.name.len() > 1024, "seal failed for a legal frame");
                assert_eq!(sealer.next_seq(), before, "a failed seal moved the counter");
            }
        }
    }
    if sealed.is_empty() {
        return;
    }
    let mut opener = Opener::new(&input.key);
    for d in input.deliveries.iter().take(64) {
        let (wire, _) = &sealed[usize::from(d.frame) % sealed.len()];
        let mut bytes = wire.clone();
        match &d.tamper {
            Tamper::None => {}
            Tamper::Flip { at, mask } => {
                let i = usize::from(*at) % bytes.len();
                bytes[i] ^= mask;
            }
            Tamper::Truncate { to } => bytes.truncate(usize::from(*to) % (bytes.len() + 1)),
            Tamper::Extend { bytes: extra } => bytes.extend_from_slice(extra),
            Tamper::SwapNameByte { at, with } => {
                if bytes.len() > 8 {
                    let i = 8 + usize::from(*at) % (bytes.len() - 8);
                    bytes[i] = *with;
                }
            }
        }
        let seq = opener.next_seq();
        let expected = usize::try_from(seq).ok().and_then(|s| sealed.get(s));
        let delivered = bytes.clone();
        match opener.open(&mut bytes) {
            Ok(opened) => {
                let (exp_wire, spec) = expected.expect("opened a frame past the last one sealed");
                assert_eq!(
                    &delivered, exp_wire,
                    "opened something other than the next frame"
                );
                assert_eq!(opened.msg_type, spec.msg_type);
                assert_eq!(opened.id, spec.id);
                assert_eq!(opened.name, spec.name);
                assert_eq!(opened.body, &spec.body[..]);
                assert_eq!(opened.is_encrypted(), spec.enc);
                assert_eq!(opener.next_seq(), seq + 1);
            }
            Err(_) => {
                if let Some((exp_wire, _)) = expected {
                    assert_ne!(
                        &delivered, exp_wire,
                        "the next frame, untouched, failed to open"
                    );
                }
                assert_eq!(opener.next_seq(), seq, "a failed open moved the counter");
            }
        }
    }
});
