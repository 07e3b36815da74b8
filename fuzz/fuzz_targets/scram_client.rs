//! The client side of SCRAM (`scram::client`) fed an arbitrary
//! server-first-message and server-final-message (split at the first
//! newline), for the users of `testdata/scram.json`. Never panics; mutual
//! authentication succeeds only for the real server's exact messages.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use wsgate_proto::scram::client::ClientFirst;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (server_first, server_final) = common::split2(rest, b'\n');
    let (Ok(server_first), Ok(server_final)) = (
        std::str::from_utf8(server_first),
        std::str::from_utf8(server_final),
    ) else {
        return;
    };
    let cases = common::scram_cases();
    let case = &cases[usize::from(selector) % cases.len()];
    let s = |k| common::str_of(case, k);
    let nonce = wsgate_proto::b64::decode_b64u(s("client_nonce")).expect("client nonce");
    let client = ClientFirst::new(s("username"), s("password"), &nonce).expect("vector user");
    assert_eq!(client.message(), s("client_first"));
    // The cached SaltedPassword skips PBKDF2, whatever salt and count arrive.
    let salted = common::hex32(s("salted_password_hex"));
    let Ok((expect, client_final)) =
        client.handle_server_first(server_first, s("ip"), s("key_fp"), Some(&salted))
    else {
        return;
    };
    assert!(client_final.contains(",p="));
    if server_first == s("server_first") {
        assert_eq!(client_final, s("client_final"));
    }
    if let Ok(session_key) = expect.handle_server_final(server_final) {
        assert_eq!(
            server_first,
            s("server_first"),
            "mutual auth passed for another server-first"
        );
        assert_eq!(
            server_final,
            s("server_final"),
            "mutual auth passed for another signature"
        );
        assert_eq!(&session_key[..], &common::hex(s("session_key_hex"))[..]);
    }
});
