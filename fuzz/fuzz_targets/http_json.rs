//! HTTP JSON bodies, as the gateway and the client read them. The first
//! byte picks the shape:
//!
//! * 0: `PUT /auth/session` body as the gateway reads it: JSON → object →
//!   `scram` (string) and `sid` → client-first or client-final;
//! * 1: a login exchange as stored in the state store (`Exchange`, serde);
//! * 2: `GET /auth/key` reply as the client reads it (`KeySetResponse`);
//! * 3: HELLO body as the client reads it (`Hello` → raw nonce);
//! * 4: KEY_ACK body as the client reads it.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use wsgate_proto::key_exchange::{Hello, KeyAck};
use wsgate_proto::keys::KeySetResponse;
use wsgate_proto::scram::server::{Exchange, parse_client_first, unknown_user_verifier};

fn auth_session(body: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let Some(obj) = value.as_object() else {
        return;
    };
    let Some(scram) = obj.get("scram").and_then(Value::as_str) else {
        return;
    };
    match obj.get("sid") {
        None => {
            let _ = parse_client_first(scram);
        }
        Some(sid) => {
            let Some(_sid) = sid.as_str() else { return };
            let case = &common::scram_cases()[0];
            let s = |k| common::str_of(case, k);
            let first = parse_client_first(s("client_first")).expect("vector");
            let exchange = Exchange::new(&first, &[0x11; 16], 4096, &[2; 18], s("ip"));
            let fallback = unknown_user_verifier(b"secret", &exchange.username);
            let _ = exchange.verify_client_final(scram, s("ip"), |_| true, None, &fallback);
        }
    }
}

fn stored_exchange(body: &[u8]) {
    if let Ok(exchange) = serde_json::from_slice::<Exchange>(body) {
        let fallback = unknown_user_verifier(b"secret", &exchange.username);
        let _ = exchange.verify_client_final(
            "c=cD13c2dhdGUtdjEsLGlwPTEyNy4wLjAuMTtrZXk9eA==,r=x,p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            &exchange.ip,
            |_| true,
            None,
            &fallback,
        );
    }
}

fn key_set(body: &[u8]) {
    if let Ok(set) = serde_json::from_slice::<KeySetResponse>(body) {
        for entry in &set.keys {
            if let Ok(pk) = entry.public_key() {
                assert_eq!(wsgate_proto::keys::kid_of(&pk), entry.kid);
            }
        }
    }
}

fn hello(body: &[u8]) {
    if let Ok(hello) = serde_json::from_slice::<Hello>(body) {
        if let Ok(nonce) = hello.raw_nonce() {
            assert_eq!(wsgate_proto::b64::encode_b64u(&nonce), hello.nonce);
        }
    }
}

fn key_ack(body: &[u8]) {
    let _ = serde_json::from_slice::<KeyAck>(body);
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    match selector % 5 {
        0 => auth_session(body),
        1 => stored_exchange(body),
        2 => key_set(body),
        3 => hello(body),
        _ => key_ack(body),
    }
});
