//! Differential: the server's open of a sealed login's request 1
//! (`login_seal::open_first_request`, RFC 9180 `mode_base` plus one export
//! on AWS-LC in `hpke_recipient.rs`) against the `hpke` crate's receiver
//! context, on requests that start valid — sealed with a seed and a
//! plaintext from the input — and then get one input-chosen change (a bit
//! of `enc` or `ct`). Both must agree on success or failure, and on the
//! plaintext and the exported `login_key` when they succeed. Then the
//! exchange's boxes: a box opens only under its own key and number, and
//! only unchanged.
#![no_main]

use hpke::aead::AesGcm256;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256 as Kem;
use hpke::{Deserializable as _, OpModeR};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng as _;
use rand::rngs::StdRng;
use wsgate_proto::b64;
use wsgate_proto::keys::ServerKeyPair;
use wsgate_proto::login_seal::{self, BoxNumber, SealedFirstRequest};

#[derive(Debug, Arbitrary)]
enum Change {
    None,
    EncBit(u16),
    CtBit(u16),
}

#[derive(Debug, Arbitrary)]
enum BoxChange {
    None,
    Bit(u16),
    Number,
    Sid(u8),
}

#[derive(Debug, Arbitrary)]
struct Input {
    seed: u64,
    plaintext: Vec<u8>,
    change: Change,
    sid: [u8; 16],
    inner: Vec<u8>,
    box_change: BoxChange,
}

fn flip(bytes: &mut [u8], bit: u16) {
    if bytes.is_empty() {
        return;
    }
    let i = usize::from(bit) % (bytes.len() * 8);
    bytes[i / 8] ^= 1 << (i % 8);
}

fn flip_b64u(text: &mut String, bit: u16) {
    let mut raw = b64::decode_b64u(text).expect("our own b64u");
    flip(&mut raw, bit);
    *text = b64::encode_b64u(&raw);
}

/// The `hpke` crate's open and export of the same request.
fn reference(key: &ServerKeyPair, request: &SealedFirstRequest) -> Option<(Vec<u8>, [u8; 32])> {
    let sk = <Kem as hpke::Kem>::PrivateKey::from_bytes(key.secret_bytes()).ok()?;
    let enc =
        <Kem as hpke::Kem>::EncappedKey::from_bytes(&b64::decode_b64u(&request.enc).ok()?).ok()?;
    let mut ctx = hpke::setup_receiver::<AesGcm256, HkdfSha256, Kem>(
        &OpModeR::Base,
        &sk,
        &enc,
        login_seal::LOGIN_INFO,
    )
    .ok()?;
    let plain = ctx
        .open(&b64::decode_b64u(&request.ct).ok()?, b"")
        .ok()?;
    let mut exported = [0u8; 32];
    ctx.export(login_seal::LOGIN_KEY_EXPORT, &mut exported).ok()?;
    Some((plain, exported))
}

fuzz_target!(|input: Input| {
    if input.plaintext.len() > 2048 {
        return;
    }
    let mut rng = StdRng::seed_from_u64(input.seed);
    let key = ServerKeyPair::generate(&mut rng);
    let (mut request, client_login_key) =
        login_seal::seal_first_plaintext(&mut rng, key.public_bytes(), &input.plaintext)
            .expect("sealing to a generated key");
    match input.change {
        Change::None => {}
        Change::EncBit(bit) => flip_b64u(&mut request.enc, bit),
        Change::CtBit(bit) => flip_b64u(&mut request.ct, bit),
    }
    let ours = login_seal::open_first_request(&key, &request)
        .ok()
        .map(|(plain, login_key)| (plain.to_vec(), *login_key.as_bytes()));
    let theirs = reference(&key, &request);
    assert_eq!(ours, theirs, "the two HPKE opens disagree: {:?}", input.change);
    if matches!(input.change, Change::None) {
        let (plain, login_key) = ours.expect("the unchanged request opens");
        assert_eq!(plain, input.plaintext);
        assert_eq!(&login_key, client_login_key.as_bytes());
    }

    // The boxes of the exchange this request would begin.
    let exchange_key = client_login_key.exchange_key(&input.sid);
    let mut ct = exchange_key.seal(BoxNumber::Reply1, &input.inner);
    let (mut m, mut opener) = (BoxNumber::Reply1, exchange_key.clone());
    match input.box_change {
        BoxChange::None => {}
        BoxChange::Bit(bit) => flip_b64u(&mut ct, bit),
        BoxChange::Number => m = BoxNumber::Reply2,
        BoxChange::Sid(x) => {
            let mut sid = input.sid;
            sid[usize::from(x) % 16] ^= x | 1;
            opener = client_login_key.exchange_key(&sid);
        }
    }
    let opened = opener.open(m, &ct);
    match input.box_change {
        BoxChange::None => assert_eq!(opened.expect("an unchanged box opens").as_slice(), &input.inner[..]),
        _ => assert!(opened.is_err(), "a changed box opened: {:?}", input.box_change),
    }
});
