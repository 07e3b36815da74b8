use super::client::{ClientError, ClientFirst as ClientStart};
use super::server::{Exchange, parse_client_first, unknown_user_salt, unknown_user_verifier};
use super::*;
use crate::b64;

/// RFC 7677 §3: user "user", password "pencil".
#[test]
fn rfc7677_test_vector() {
    let salt = b64::decode_b64("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
    let v = derive_verifier("pencil", &salt, 4096).unwrap();
    let client_first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO";
    let server_first =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    let without_proof = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    let auth_message = format!("{client_first_bare},{server_first},{without_proof}");

    let salted = salted_password("pencil", &salt, 4096);
    let ck = client_key(&salted);
    let signature = hmac_sha256(&v.stored_key, &[auth_message.as_bytes()]);
    let proof: Vec<u8> = ck
        .iter()
        .zip(signature.iter())
        .map(|(a, b)| a ^ b)
        .collect();
    assert_eq!(
        b64::encode_b64(&proof),
        "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    );
    let server_signature = hmac_sha256(&v.server_key[..], &[auth_message.as_bytes()]);
    assert_eq!(
        b64::encode_b64(&server_signature),
        "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    );
}

const IP: &str = "127.0.0.1";
const FP: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
const SALT: [u8; 16] = [0x11; 16];

struct Login {
    exchange: Exchange,
    client_final: String,
    expect: client::ExpectServerFinal,
    verifier: Verifier,
}

fn login(user: &str, password: &str, stored_password: &str) -> Login {
    let start = ClientStart::new(user, password, &[1; 18]).unwrap();
    let first = parse_client_first(&start.message()).unwrap();
    let verifier = derive_verifier(stored_password, &SALT, 4096).unwrap();
    let exchange = Exchange::new(&first, &SALT, 4096, &[2; 18], IP);
    let (expect, client_final) = start
        .handle_server_first(&exchange.server_first, IP, FP, None)
        .unwrap();
    Login {
        exchange,
        client_final,
        expect,
        verifier,
    }
}

fn fallback() -> Verifier {
    unknown_user_verifier(b"secret", "user")
}

#[test]
fn full_exchange_agrees_on_the_session_key() {
    let l = login("user", "pencil", "pencil");
    let verified = l
        .exchange
        .verify_client_final(
            &l.client_final,
            IP,
            |fp| fp == FP,
            Some(&l.verifier),
            &fallback(),
        )
        .unwrap();
    assert_eq!(verified.key_fp, FP);
    let client_session_key = l
        .expect
        .handle_server_final(&verified.server_final)
        .unwrap();
    assert_eq!(*client_session_key, *verified.session_key);
}

#[test]
fn wrong_password_is_an_invalid_proof() {
    let l = login("user", "wrong", "pencil");
    let err = l.exchange.verify_client_final(
        &l.client_final,
        IP,
        |_| true,
        Some(&l.verifier),
        &fallback(),
    );
    assert_eq!(err.unwrap_err(), ScramError::InvalidProof);
}

#[test]
fn unknown_user_fails_even_with_the_fallback_proof() {
    let l = login("user", "pencil", "pencil");
    let err = l
        .exchange
        .verify_client_final(&l.client_final, IP, |_| true, None, &l.verifier);
    assert_eq!(err.unwrap_err(), ScramError::InvalidProof);
}

#[test]
fn channel_binding_checks_ip_and_key() {
    let l = login("user", "pencil", "pencil");
    let v = Some(&l.verifier);
    let e = |ip: &str, ok_fp: bool| {
        l.exchange
            .verify_client_final(&l.client_final, ip, |_| ok_fp, v, &fallback())
            .unwrap_err()
    };
    assert_eq!(e("127.0.0.2", true), ScramError::ChannelBindingsDontMatch);
    assert_eq!(e(IP, false), ScramError::ChannelBindingsDontMatch);

    // A client that bound another IP than the reply's.
    let start = ClientStart::new("user", "pencil", &[1; 18]).unwrap();
    let (_, bad_final) = start
        .handle_server_first(&l.exchange.server_first, "10.0.0.1", FP, None)
        .unwrap();
    let err = l
        .exchange
        .verify_client_final(&bad_final, "10.0.0.1", |_| true, v, &fallback());
    assert_eq!(err.unwrap_err(), ScramError::ChannelBindingsDontMatch);
}

#[test]
fn nonce_mismatch_is_other_error() {
    let l = login("user", "pencil", "pencil");
    let tampered = l.client_final.replacen(",r=", ",r=X", 1);
    let err =
        l.exchange
            .verify_client_final(&tampered, IP, |_| true, Some(&l.verifier), &fallback());
    assert_eq!(err.unwrap_err(), ScramError::OtherError);
}

#[test]
fn client_first_errors_map_to_the_design_table() {
    let cases = [
        (
            "n,,n=user,r=abc",
            ScramError::ServerDoesSupportChannelBinding,
        ),
        (
            "y,,n=user,r=abc",
            ScramError::ServerDoesSupportChannelBinding,
        ),
        (
            "p=tls-unique,,n=user,r=abc",
            ScramError::UnsupportedChannelBindingType,
        ),
        (
            "p=wsgate-v1,,m=x,n=user,r=abc",
            ScramError::ExtensionsNotSupported,
        ),
        (
            "p=wsgate-v1,,n=us=er,r=abc",
            ScramError::InvalidUsernameEncoding,
        ),
        ("p=wsgate-v1,,n=,r=abc", ScramError::InvalidUsernameEncoding),
        ("p=wsgate-v1,a=admin,n=user,r=abc", ScramError::OtherError),
        ("p=wsgate-v1,,n=user", ScramError::InvalidEncoding),
        ("p=wsgate-v1,,n=user,r=a,b", ScramError::InvalidEncoding),
        ("p=wsgate-v1,,n=user,r=", ScramError::InvalidEncoding),
        ("garbage", ScramError::InvalidEncoding),
        ("", ScramError::InvalidEncoding),
    ];
    for (msg, want) in cases {
        assert_eq!(parse_client_first(msg).unwrap_err(), want, "{msg}");
    }
    let long_nonce = format!("p=wsgate-v1,,n=user,r={}", "a".repeat(257));
    assert_eq!(
        parse_client_first(&long_nonce).unwrap_err(),
        ScramError::InvalidEncoding
    );
    let ok = parse_client_first("p=wsgate-v1,,n=a=2Cb=3Dc,r=xyz,x=ext").unwrap();
    assert_eq!(ok.username, "a,b=c");
    assert_eq!(ok.bare, "n=a=2Cb=3Dc,r=xyz,x=ext");
}

#[test]
fn saslnames_round_trip() {
    for name in ["plain", "a,b", "x=y", "=,=,", "ünïcødé"] {
        assert_eq!(decode_saslname(&encode_saslname(name)).unwrap(), name);
    }
    assert!(decode_saslname("a=2").is_err());
    assert!(decode_saslname("a=41").is_err());
}

#[test]
fn client_refuses_unsafe_parameters_and_bad_signatures() {
    let start = || ClientStart::new("user", "pencil", &[1; 18]).unwrap();
    let nonce = format!("{}srv", b64::encode_b64u(&[1; 18]));
    let salt = b64::encode_b64(&SALT);
    for (iters, salt) in [
        (4095, salt.as_str()),
        (10_000_001, salt.as_str()),
        (4096, "AAAA"),
    ] {
        let sf = format!("r={nonce},s={salt},i={iters}");
        assert!(matches!(
            start().handle_server_first(&sf, IP, FP, None),
            Err(ClientError::UnsafeParameters(_))
        ));
    }
    let foreign = format!("r=other,s={salt},i=4096");
    assert!(matches!(
        start().handle_server_first(&foreign, IP, FP, None),
        Err(ClientError::BadServerFirst)
    ));

    let l = login("user", "pencil", "pencil");
    assert_eq!(
        l.expect
            .handle_server_final("v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
            .unwrap_err(),
        ClientError::BadServerSignature
    );
    let l = login("user", "pencil", "pencil");
    assert_eq!(
        l.expect.handle_server_final("e=invalid-proof").unwrap_err(),
        ClientError::Server(ScramError::InvalidProof)
    );
}

#[test]
fn unknown_user_salt_is_deterministic_and_per_user() {
    assert_eq!(
        unknown_user_salt(b"s", "alice"),
        unknown_user_salt(b"s", "alice")
    );
    assert_ne!(
        unknown_user_salt(b"s", "alice"),
        unknown_user_salt(b"s", "bob")
    );
    assert_ne!(
        unknown_user_salt(b"s", "alice"),
        unknown_user_salt(b"t", "alice")
    );
}
