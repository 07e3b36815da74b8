//! A whole SCRAM exchange for an arbitrary user name and password (split at
//! the first 0xFF byte, which UTF-8 never contains): whatever name and
//! password the client accepts (SASLprep), the server parses its
//! client-first back to exactly the prepared name, the proof verifies, the
//! client accepts the server's signature, and both hold the same session
//! key. PBKDF2 is replaced by a cached `SaltedPassword` (the protocol treats
//! it as 32 opaque bytes) so each run costs microseconds.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use wsgate_proto::saslprep;
use wsgate_proto::scram::client::ClientFirst;
use wsgate_proto::scram::server::{Exchange, parse_client_first, unknown_user_verifier};
use wsgate_proto::scram::{self, ScramError};

const IP: &str = "2001:db8::1";
const FP: &str = "gtqzKprt_7SSWnYvh59v3QW4ugqoJaaYaoW3Uf87IeQ";

fuzz_target!(|data: &[u8]| {
    let (name, password) = common::split2(data, 0xff);
    let (Ok(name), Ok(password)) = (std::str::from_utf8(name), std::str::from_utf8(password))
    else {
        return;
    };
    // SASLprep on arbitrary text never panics; the two rule sets agree
    // where the stricter one accepts.
    let stored = saslprep::prepare_stored(name);
    let query = saslprep::prepare_query(password);
    if let Ok(s) = &stored {
        assert_eq!(saslprep::prepare_query(name).as_ref(), Ok(s));
        assert!(!s.is_empty());
    }
    let Ok(client) = ClientFirst::new(name, password, &[0x5a; 18]) else {
        assert!(
            stored.is_err() || query.is_err(),
            "client refused a name and password SASLprep accepts"
        );
        return;
    };
    let prepared = stored.expect("client accepted the name");
    assert_eq!(client.username(), prepared);

    let first =
        parse_client_first(&client.message()).expect("server refuses the client's client-first");
    assert_eq!(first.username, prepared, "saslname did not round-trip");

    let salt = [0x33u8; 16];
    let salted: [u8; 32] = {
        let mut s = [0u8; 32];
        for (i, b) in query.as_deref().unwrap_or("").bytes().enumerate() {
            s[i % 32] = s[i % 32].wrapping_mul(31).wrapping_add(b);
        }
        s
    };
    let verifier = scram::verifier_from_salted(&salted);
    let exchange = Exchange::new(&first, &salt, 4096, &[0x77; 18], IP);
    let (expect, client_final) = client
        .handle_server_first(&exchange.server_first, IP, FP, Some(&salted))
        .expect("client refuses a correct server-first");
    let fallback = unknown_user_verifier(b"secret", &first.username);
    let verified = exchange
        .verify_client_final(&client_final, IP, |fp| fp == FP, Some(&verifier), &fallback)
        .expect("a correct proof was refused");
    assert_eq!(
        exchange
            .verify_client_final(&client_final, IP, |fp| fp == FP, None, &fallback)
            .err(),
        Some(ScramError::InvalidProof)
    );
    let client_key = expect
        .handle_server_final(&verified.server_final)
        .expect("client refuses the server's signature");
    assert_eq!(
        &client_key[..],
        &verified.session_key[..],
        "session keys differ"
    );
});
