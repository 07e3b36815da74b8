//! `protect::Opener::open` on arbitrary bytes under a fixed key (the c2s key
//! of `testdata/frames.json`, so the seeds open). Never panics; a frame that
//! opens is byte for byte the frame a `Sealer` makes for its contents at
//! sequence 0 (nothing on the wire escapes authentication), and a failure
//! leaves the sequence number where it was.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use wsgate_proto::protect::{Opener, Sealer};

fuzz_target!(|data: &[u8]| {
    let key = common::c2s_key();
    let mut buf = data.to_vec();
    let mut opener = Opener::new(&key);
    match opener.open(&mut buf) {
        Ok(opened) => {
            let resealed = Sealer::new(&key)
                .seal(
                    opened.msg_type,
                    opened.flags,
                    opened.id,
                    opened.name,
                    opened.body,
                )
                .expect("an opened frame can be sealed again");
            assert_eq!(
                resealed, data,
                "a frame opened that the sealer would not make"
            );
            assert_eq!(opener.next_seq(), 1);
        }
        Err(_) => assert_eq!(opener.next_seq(), 0, "a failed open moved the counter"),
    }
    // The same with a configured (smaller) name limit.
    let limit = data.first().map_or(1024, |b| usize::from(*b) * 4);
    let mut buf = data.to_vec();
    if let Ok(opened) = Opener::new(&key).with_max_name_len(limit).open(&mut buf) {
        assert!(opened.name.len() <= limit);
    }
});
