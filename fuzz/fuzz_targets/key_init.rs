//! A whole KEY_INIT message (envelope, then `key_exchange::parse_key_init`,
//! then `open_key_init`) under the server key, session key and HELLO nonce of
//! `testdata/key_init.json`. Never panics; a body that parses has fields of
//! the right sizes; only a KEY_INIT sealed with the session key opens, and
//! then to the vector's dynamic password.
#![no_main]

mod common;

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use wsgate_proto::envelope;
use wsgate_proto::key_exchange::{open_key_init, parse_key_init};
use wsgate_proto::keys::ServerKeyPair;

struct Fixed {
    key: ServerKeyPair,
    session_id: String,
    session_key: [u8; 32],
    nonce: [u8; 32],
    dynamic_password: [u8; 32],
}

static FIXED: LazyLock<Fixed> = LazyLock::new(|| {
    let v = &*common::KEY_INIT;
    let s = |k| common::str_of(v, k);
    Fixed {
        key: ServerKeyPair::from_secret(common::hex32(s("server_sk_hex"))).expect("server key"),
        session_id: s("session_id").to_owned(),
        session_key: common::hex32(s("session_key_hex")),
        nonce: wsgate_proto::b64::decode_b64u_array(s("hello_nonce_b64u")).expect("nonce"),
        dynamic_password: common::hex32(s("dynamic_password_hex")),
    }
});

fuzz_target!(|data: &[u8]| {
    let f = &*FIXED;
    let Ok(env) = envelope::decode(data) else {
        return;
    };
    let Ok(ki) = parse_key_init(env.body) else {
        return;
    };
    let b64u = |s: &str| wsgate_proto::b64::decode_b64u(s).expect("checked by parse_key_init");
    assert_eq!(b64u(&ki.enc).len(), 32);
    assert_eq!(b64u(&ki.ct).len(), 48);
    assert_eq!(b64u(&ki.kid).len(), 8);
    // The gateway opens with the session named by the envelope.
    if let Ok(dp) = open_key_init(&f.key, &ki, env.name, &f.session_key, &f.nonce) {
        assert_eq!(
            *dp, f.dynamic_password,
            "opened to another dynamic password"
        );
        assert_eq!(env.name, f.session_id, "opened under another session id");
    }
    // And with the right session id, whatever the name says.
    if let Ok(dp) = open_key_init(&f.key, &ki, &f.session_id, &f.session_key, &f.nonce) {
        assert_eq!(*dp, f.dynamic_password);
    }
});
