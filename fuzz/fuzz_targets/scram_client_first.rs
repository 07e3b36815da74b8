//! `scram::server::parse_client_first` on arbitrary text (the first login
//! request's `scram` member). Never panics; what it accepts is exactly
//! `p=wsgate-v1,,` + bare, the saslname round-trips, and the exchange built
//! from it survives the state store (serde) unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate_proto::scram::server::{Exchange, parse_client_first};
use wsgate_proto::scram::{GS2_HEADER, MAX_NONCE_LEN, decode_saslname, encode_saslname};

fuzz_target!(|data: &[u8]| {
    let Ok(message) = std::str::from_utf8(data) else {
        return;
    };
    let first = match parse_client_first(message) {
        Ok(first) => first,
        Err(e) => {
            assert!(e.server_final().starts_with("e="));
            return;
        }
    };
    assert_eq!(first.gs2_header, GS2_HEADER);
    assert_eq!(format!("{}{}", first.gs2_header, first.bare), message);
    assert!(!first.client_nonce.is_empty() && first.client_nonce.len() <= MAX_NONCE_LEN);
    let saslname = first
        .bare
        .strip_prefix("n=")
        .and_then(|rest| rest.split(',').next())
        .expect("bare starts with n=");
    assert_eq!(encode_saslname(&first.username), saslname);
    assert_eq!(
        decode_saslname(saslname).as_deref(),
        Ok(first.username.as_str())
    );

    let exchange = Exchange::new(&first, &[0x11; 16], 4096, &[2; 18], "127.0.0.1");
    let nonce = format!(
        "{}{}",
        first.client_nonce,
        wsgate_proto::b64::encode_b64u(&[2; 18])
    );
    assert_eq!(exchange.nonce, nonce);
    assert!(exchange.server_first.starts_with(&format!("r={nonce},")));
    let stored = serde_json::to_vec(&exchange).expect("exchange serializes");
    let back: Exchange = serde_json::from_slice(&stored).expect("exchange deserializes");
    assert_eq!(back, exchange);
});
