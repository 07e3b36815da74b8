//! `Exchange::verify_client_final` on arbitrary text, against the exchanges
//! of `testdata/scram.json` (so the seeds verify). Never panics; accepts only
//! the one correct client-final (the proof is unforgeable and every other
//! byte is covered by AuthMessage), and never accepts an unknown user.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use wsgate_proto::scram::Verifier;
use wsgate_proto::scram::server::{Exchange, parse_client_first, unknown_user_verifier};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(client_final) = std::str::from_utf8(rest) else {
        return;
    };
    let cases = common::scram_cases();
    let case = &cases[usize::from(selector) % cases.len()];
    let s = |k| common::str_of(case, k);
    let first = parse_client_first(s("client_first")).expect("vector client-first parses");
    let salt = wsgate_proto::b64::decode_b64(s("salt_b64")).expect("salt");
    let server_nonce = wsgate_proto::b64::decode_b64u(s("server_nonce")).expect("nonce");
    let iterations = u32::try_from(case["iterations"].as_u64().expect("iterations")).expect("u32");
    let exchange = Exchange::new(&first, &salt, iterations, &server_nonce, s("ip"));
    assert_eq!(exchange.server_first, s("server_first"));
    let verifier = Verifier {
        stored_key: common::hex32(s("stored_key_hex")),
        server_key: common::hex32(s("server_key_hex")).into(),
    };
    let fallback = unknown_user_verifier(b"fuzz secret", &exchange.username);
    let fp = s("key_fp");
    // The observed IP of the second request: the right one, or another.
    let observed = if selector & 0x80 == 0 {
        s("ip")
    } else {
        "10.0.0.1"
    };

    match exchange.verify_client_final(
        client_final,
        observed,
        |f| f == fp,
        Some(&verifier),
        &fallback,
    ) {
        Ok(v) => {
            assert_eq!(
                client_final,
                s("client_final"),
                "accepted a client-final that differs"
            );
            assert_eq!(observed, s("ip"));
            assert_eq!(v.server_final, s("server_final"));
            assert_eq!(&v.session_key[..], &common::hex(s("session_key_hex"))[..]);
            assert_eq!(v.key_fp, fp);
        }
        Err(e) => assert!(e.server_final().starts_with("e=")),
    }
    assert!(
        exchange
            .verify_client_final(client_final, observed, |f| f == fp, None, &fallback)
            .is_err(),
        "an unknown user logged in"
    );
});
