//! `wsgate_proto::envelope::decode` on arbitrary bytes: never panics, and
//! whatever it accepts re-encodes to exactly the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate_proto::envelope::{self, FIXED_HEADER_LEN, MAX_NAME_LEN};

fuzz_target!(|data: &[u8]| {
    // The configured name limit (16..=1024 in config) comes from the last byte.
    let limit = data.last().map_or(MAX_NAME_LEN, |b| usize::from(*b) * 5);
    for (max, decoded) in [
        (MAX_NAME_LEN, envelope::decode(data)),
        (limit, envelope::decode_with_limit(data, limit)),
    ] {
        let Ok(env) = decoded else { continue };
        assert!(env.name.len() <= max.min(MAX_NAME_LEN));
        assert_eq!(env.header_len, FIXED_HEADER_LEN + env.name.len());
        assert_eq!(env.header_len + env.body.len(), data.len());
        assert_eq!(env.flags & !(envelope::FLAG_ENC | envelope::FLAG_ERR), 0);
        let again = envelope::encode(env.msg_type, env.flags, env.id, env.name, env.body)
            .expect("a decoded envelope re-encodes");
        assert_eq!(again, data, "decode/encode is not the identity");
        let _ = format!("{env:?}");
    }
});
