//! Differential: the server's KEY_INIT open (`open_key_init`, RFC 9180
//! `mode_psk` on AWS-LC in `hpke_recipient.rs`) against the `hpke` crate's
//! own open, on KEY_INITs that start valid — sealed with a seed, session
//! id, session key and HELLO nonce taken from the input — and then get one
//! input-chosen change (a bit of `enc` or `ct`, or the session id, session
//! key or nonce the server opens with). Both must agree on success or
//! failure, and on the plaintext when they succeed; the unchanged KEY_INIT
//! must open to the dynamic password.
#![no_main]

use hpke::aead::AesGcm256;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256 as Kem;
use hpke::{Deserializable as _, OpModeR, PskBundle};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng as _;
use rand::rngs::StdRng;
use wsgate_proto::b64;
use wsgate_proto::key_exchange::{KeyInit, hpke_info, open_key_init, seal_key_init};
use wsgate_proto::keys::ServerKeyPair;

#[derive(Debug, Arbitrary)]
enum Change {
    None,
    EncBit(u8),
    CtBit(u8),
    SessionId(String),
    SessionKeyByte(u8, u8),
    NonceByte(u8, u8),
}

#[derive(Debug, Arbitrary)]
struct Input {
    seed: u64,
    session_id: String,
    session_key: [u8; 32],
    nonce: [u8; 32],
    dynamic_password: [u8; 32],
    change: Change,
}

fn flip(bytes: &mut [u8], bit: u8) {
    let i = usize::from(bit) % (bytes.len() * 8);
    bytes[i / 8] ^= 1 << (i % 8);
}

/// The `hpke` crate's open of the same KEY_INIT.
fn reference(
    key: &ServerKeyPair,
    ki: &KeyInit,
    session_id: &str,
    session_key: &[u8; 32],
    nonce: &[u8; 32],
) -> Option<Vec<u8>> {
    let sk = <Kem as hpke::Kem>::PrivateKey::from_bytes(key.secret_bytes()).ok()?;
    let enc =
        <Kem as hpke::Kem>::EncappedKey::from_bytes(&b64::decode_b64u(&ki.enc).ok()?).ok()?;
    let psk = PskBundle::new(session_key, session_id.as_bytes()).ok()?;
    hpke::single_shot_open::<AesGcm256, HkdfSha256, Kem>(
        &OpModeR::Psk(psk),
        &sk,
        &enc,
        &hpke_info(nonce),
        &b64::decode_b64u(&ki.ct).ok()?,
        b"",
    )
    .ok()
}

fuzz_target!(|input: Input| {
    if input.session_id.is_empty() {
        return;
    }
    let mut rng = StdRng::seed_from_u64(input.seed);
    let key = ServerKeyPair::generate(&mut rng);
    let mut ki = seal_key_init(
        &mut rng,
        key.public_bytes(),
        &input.session_id,
        &input.session_key,
        &input.nonce,
        &input.dynamic_password,
    )
    .expect("sealing to a generated key");
    let (mut session_id, mut session_key, mut nonce) =
        (input.session_id.clone(), input.session_key, input.nonce);
    match &input.change {
        Change::None => {}
        Change::EncBit(bit) => {
            let mut enc = b64::decode_b64u(&ki.enc).expect("our own b64u");
            flip(&mut enc, *bit);
            ki.enc = b64::encode_b64u(&enc);
        }
        Change::CtBit(bit) => {
            let mut ct = b64::decode_b64u(&ki.ct).expect("our own b64u");
            flip(&mut ct, *bit);
            ki.ct = b64::encode_b64u(&ct);
        }
        Change::SessionId(other) => session_id = other.clone(),
        Change::SessionKeyByte(at, x) => session_key[usize::from(*at) % 32] ^= x,
        Change::NonceByte(at, x) => nonce[usize::from(*at) % 32] ^= x,
    }
    let ours = open_key_init(&key, &ki, &session_id, &session_key, &nonce)
        .ok()
        .map(|dp| dp.to_vec());
    let theirs = reference(&key, &ki, &session_id, &session_key, &nonce);
    assert_eq!(ours, theirs, "the two HPKE opens disagree: {:?}", input.change);
    if matches!(input.change, Change::None) {
        assert_eq!(ours.as_deref(), Some(&input.dynamic_password[..]));
    }
});
