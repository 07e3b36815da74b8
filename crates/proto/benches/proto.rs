//! Criterion micro-benchmarks of the protocol core's hot paths:
//!
//! * envelope encode / decode;
//! * protected frames: seal and open, `ENC` (encrypted) and tag-only, at
//!   16 B, 1 KiB and 16 KiB;
//! * KEY_INIT: parse + HPKE open (the server's per-connection crypto), the
//!   same open on the `hpke` crate (the code before `hpke_recipient.rs`), and
//!   the client's seal for comparison;
//! * SCRAM: the server's second step (verify client-final), and its first;
//! * `protect_ring`: the same seal/open with `ring`'s AES-256-GCM, as
//!   `protect.rs` did before it moved to `aws-lc-rs` — a same-run reference
//!   for that change (the `aead` APIs are alike, so the code is the old one).
//! * `tag_primitive`: the tag of a tag-only frame (AES-256-GCM of an empty
//!   plaintext, aad = the frame) three ways: AWS-LC (what `protect.rs`
//!   uses), `ring`, and AES-GMAC built from RustCrypto's `aes` and `ghash`
//!   (one GHASH pass and one AES block, no AEAD set-up per call), checked
//!   equal before they are timed (docs/benchmarks.md, round 11).
//!
//! `cargo bench -p wsgate-proto` (results in `target/criterion`);
//! `cargo bench -p wsgate-proto -- --quick` for a fast pass.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use rand::SeedableRng as _;
use wsgate_proto::envelope::{self, FLAG_ENC, MessageType};
use wsgate_proto::key_exchange::{self, TrafficKeys};
use wsgate_proto::keys::{ServerKeyPair, fingerprint_of};
use wsgate_proto::protect::{Opener, Sealer};
use wsgate_proto::scram;

const SIZES: [(usize, &str); 3] = [(16, "16B"), (1024, "1KiB"), (16 * 1024, "16KiB")];
const KEY: [u8; 32] = [0x42; 32];
const ROUTE: &str = "sys.echo";

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

fn envelope_codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("envelope");
    for (n, label) in SIZES {
        let body = payload(n);
        g.throughput(Throughput::Bytes(n as u64));
        g.bench_function(format!("encode/{label}"), |b| {
            b.iter(|| {
                envelope::encode(
                    MessageType::Request as u8,
                    0,
                    black_box(7),
                    black_box(ROUTE),
                    black_box(&body),
                )
                .unwrap()
            });
        });
        let wire = envelope::encode(MessageType::Request as u8, 0, 7, ROUTE, &body).unwrap();
        g.bench_function(format!("decode/{label}"), |b| {
            b.iter(|| envelope::decode(black_box(&wire)).unwrap().id);
        });
    }
    g.finish();
}

fn protected_frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("protect");
    for (flags, mode) in [(0u8, "tag"), (FLAG_ENC, "enc")] {
        for (n, label) in SIZES {
            let body = payload(n);
            g.throughput(Throughput::Bytes(n as u64));
            // Seal into a reused buffer (pure framing + AES-GCM) …
            let mut sealer = Sealer::new(&KEY);
            let mut out = Vec::with_capacity(n + 64);
            g.bench_function(format!("seal_into/{mode}/{label}"), |b| {
                b.iter(|| {
                    out.clear();
                    sealer
                        .seal_into(
                            &mut out,
                            MessageType::Response as u8,
                            flags,
                            7,
                            "",
                            black_box(&body),
                        )
                        .unwrap();
                    out.len()
                });
            });
            // … and with a fresh Vec per frame, as the gateway does today.
            let mut sealer = Sealer::new(&KEY);
            g.bench_function(format!("seal_alloc/{mode}/{label}"), |b| {
                b.iter(|| {
                    sealer
                        .seal(MessageType::Response as u8, flags, 7, "", black_box(&body))
                        .unwrap()
                });
            });
            // Open: the counter must match, so each iteration gets a frame
            // sealed at sequence 0 and an opener at 0 (set-up not timed).
            let frame = Sealer::new(&KEY)
                .seal(MessageType::Request as u8, flags, 7, ROUTE, &body)
                .unwrap();
            g.bench_function(format!("open/{mode}/{label}"), |b| {
                b.iter_batched_ref(
                    || (Opener::new(&KEY), frame.clone()),
                    |(opener, frame)| opener.open(frame).unwrap().body.len(),
                    BatchSize::SmallInput,
                );
            });
        }
    }
    g.finish();
}

fn key_init(c: &mut Criterion) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(9180);
    let server = ServerKeyPair::generate(&mut rng);
    let session_key = [0x55u8; 32];
    let session_id = "AAAAAAAAAAAAAAAAAAAAAA";
    let nonce = [0x11u8; key_exchange::HELLO_NONCE_LEN];
    let dp = [0xD0u8; 32];
    let ki = key_exchange::seal_key_init(
        &mut rng,
        server.public_bytes(),
        session_id,
        &session_key,
        &nonce,
        &dp,
    )
    .unwrap();
    let body = serde_json::to_vec(&ki).unwrap();
    let mut g = c.benchmark_group("key_init");
    g.bench_function("server_parse_open_derive", |b| {
        b.iter(|| {
            let ki = key_exchange::parse_key_init(black_box(&body)).unwrap();
            let dp = key_exchange::open_key_init(&server, &ki, session_id, &session_key, &nonce)
                .unwrap();
            TrafficKeys::derive(&dp, &nonce).server_pair()
        });
    });
    g.bench_function("server_open_only", |b| {
        b.iter(|| {
            key_exchange::open_key_init(&server, black_box(&ki), session_id, &session_key, &nonce)
                .unwrap()
        });
    });
    // The `hpke` crate's open, which `open_key_init` used before it moved to
    // AWS-LC (`hpke_recipient.rs`): a same-run reference for that change.
    g.bench_function("server_open_only_hpke_crate", |b| {
        use hpke::{Deserializable as _, OpModeR, PskBundle};
        type Kem = hpke::kem::X25519HkdfSha256;
        let sk = <Kem as hpke::Kem>::PrivateKey::from_bytes(server.secret_bytes()).unwrap();
        let enc = wsgate_proto::b64::decode_b64u(&ki.enc).unwrap();
        let ct = wsgate_proto::b64::decode_b64u(&ki.ct).unwrap();
        let info = key_exchange::hpke_info(&nonce);
        b.iter(|| {
            let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(black_box(&enc)).unwrap();
            hpke::single_shot_open::<hpke::aead::AesGcm256, hpke::kdf::HkdfSha256, Kem>(
                &OpModeR::Psk(PskBundle::new(&session_key, session_id.as_bytes()).unwrap()),
                &sk,
                &enc,
                &info,
                &ct,
                b"",
            )
            .unwrap()
        });
    });
    g.bench_function("client_seal", |b| {
        b.iter(|| {
            key_exchange::seal_key_init(
                &mut rng,
                server.public_bytes(),
                session_id,
                &session_key,
                &nonce,
                &dp,
            )
            .unwrap()
        });
    });
    g.finish();
}

fn scram_server(c: &mut Criterion) {
    let (user, password, ip) = ("bench", "pencil", "127.0.0.1");
    let salt = [0x5au8; 16];
    let iterations = scram::MIN_ITERATIONS;
    let fp = fingerprint_of(&[0x33; 32]);
    let verifier = scram::derive_verifier(password, &salt, iterations).unwrap();
    let fallback = scram::server::unknown_user_verifier(b"secret", user);
    let client = scram::client::ClientFirst::new(user, password, &[0x01; 18]).unwrap();
    let first_message = client.message();
    let parsed = scram::server::parse_client_first(&first_message).unwrap();
    let exchange = scram::server::Exchange::new(&parsed, &salt, iterations, &[0x02; 18], ip);
    let (_, client_final) = client
        .handle_server_first(&exchange.server_first, ip, &fp, None)
        .unwrap();
    let mut g = c.benchmark_group("scram");
    g.bench_function("server_first_step", |b| {
        b.iter(|| {
            let parsed = scram::server::parse_client_first(black_box(&first_message)).unwrap();
            scram::server::Exchange::new(&parsed, &salt, iterations, &[0x02; 18], ip)
        });
    });
    g.bench_function("server_verify_client_final", |b| {
        b.iter(|| {
            exchange
                .verify_client_final(
                    black_box(&client_final),
                    ip,
                    |f| f == fp,
                    Some(&verifier),
                    &fallback,
                )
                .unwrap()
        });
    });
    g.finish();
}

/// The protected-frame code as it was on `ring` (before the move to
/// aws-lc-rs), kept here as a same-run reference.
mod ring_reference {
    use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, Tag, UnboundKey};
    use wsgate_proto::envelope::{self, FLAG_ENC, TAG_LEN};

    pub(crate) struct Key(LessSafeKey);

    fn nonce(seq: u64) -> Nonce {
        let mut n = [0u8; NONCE_LEN];
        n[4..].copy_from_slice(&seq.to_be_bytes());
        Nonce::assume_unique_for_key(n)
    }

    impl Key {
        pub(crate) fn new(key: &[u8; 32]) -> Self {
            Self(LessSafeKey::new(
                UnboundKey::new(&AES_256_GCM, key).unwrap(),
            ))
        }

        pub(crate) fn seal_into(
            &self,
            out: &mut Vec<u8>,
            seq: u64,
            flags: u8,
            name: &str,
            plain: &[u8],
        ) {
            let start = out.len();
            envelope::encode_header(out, 0x11, flags, 7, name).unwrap();
            let header_end = out.len();
            out.extend_from_slice(plain);
            let tag = if flags & FLAG_ENC != 0 {
                let (head, body) = out.split_at_mut(header_end);
                self.0
                    .seal_in_place_separate_tag(nonce(seq), Aad::from(&head[start..]), body)
            } else {
                self.0
                    .seal_in_place_separate_tag(nonce(seq), Aad::from(&out[start..]), &mut [])
            }
            .unwrap();
            out.extend_from_slice(tag.as_ref());
        }

        /// Opens at sequence 0; returns the plaintext length.
        pub(crate) fn open(&self, frame: &mut [u8]) -> usize {
            let env = envelope::decode(frame).unwrap();
            let (flags, header_len) = (env.flags, env.header_len);
            let plain_end = frame.len() - TAG_LEN;
            let (head, body) = frame.split_at_mut(header_len);
            if flags & FLAG_ENC != 0 {
                self.0
                    .open_in_place(nonce(0), Aad::from(&*head), body)
                    .unwrap()
                    .len()
            } else {
                let (plain, tag_bytes) = body.split_at_mut(plain_end - header_len);
                let mut tag = [0u8; TAG_LEN];
                tag.copy_from_slice(tag_bytes);
                let mut aad = Vec::with_capacity(plain_end);
                aad.extend_from_slice(head);
                aad.extend_from_slice(plain);
                self.0
                    .open_in_place_separate_tag(
                        nonce(0),
                        Aad::from(&aad),
                        Tag::from(tag),
                        &mut [],
                        0..,
                    )
                    .unwrap();
                plain.len()
            }
        }
    }
}

fn protected_frames_ring(c: &mut Criterion) {
    let mut g = c.benchmark_group("protect_ring");
    let key = ring_reference::Key::new(&KEY);
    for (flags, mode) in [(0u8, "tag"), (FLAG_ENC, "enc")] {
        for (n, label) in SIZES {
            let body = payload(n);
            g.throughput(Throughput::Bytes(n as u64));
            let mut out = Vec::with_capacity(n + 64);
            g.bench_function(format!("seal_into/{mode}/{label}"), |b| {
                b.iter(|| {
                    out.clear();
                    key.seal_into(&mut out, 0, flags, "", black_box(&body));
                    out.len()
                });
            });
            let frame = Sealer::new(&KEY)
                .seal(MessageType::Request as u8, flags, 7, ROUTE, &body)
                .unwrap();
            g.bench_function(format!("open/{mode}/{label}"), |b| {
                b.iter_batched_ref(
                    || frame.clone(),
                    |frame| key.open(frame),
                    BatchSize::SmallInput,
                );
            });
        }
    }
    g.finish();
}

/// The server's extra work per sealed login (protocol.md §4.1): opening
/// request 1 (one X25519 on AWS-LC, the key schedule, the export), and the
/// three boxes of the exchange.
fn login_seal(c: &mut Criterion) {
    use wsgate_proto::login_seal::{self, BoxNumber};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let key = ServerKeyPair::generate(&mut rng);
    let client_first = "p=wsgate-v1,,n=bench,r=AQEBAQEBAQEBAQEBAQEBAQEB";
    let (request, login_key) =
        login_seal::seal_first_request(&mut rng, key.public_bytes(), client_first).unwrap();
    let exchange_key = login_key.exchange_key(&[0x30; 16]);
    let reply_1 = login_seal::reply1_inner(
        "r=AQEBAQEBAQEBAQEBAQEBAQEBAgICAgICAgICAgICAgICAgICAgICAgIC,s=EREREREREREREREREREREQ==,i=600000",
        "127.0.0.1",
    );
    let request_2 = exchange_key.seal(
        BoxNumber::Request2,
        &login_seal::request2_inner("c=cD13c2dhdGUtdjEsLGlwPTEyNy4wLjAuMTtrZXk9Z3RxektwcnRfN1NTV25Zdmg1OXYzUVc0dWdxb0phYVlhb1czVWY4N0llUQ==,r=AQEBAQEBAQEBAQEBAQEBAQEBAgICAgICAgICAgICAgICAgICAgICAgIC,p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
    );
    let mut g = c.benchmark_group("login_seal");
    g.bench_function("server_open_request_1", |b| {
        b.iter(|| login_seal::open_first_request(&key, black_box(&request)).unwrap());
    });
    g.bench_function("server_boxes_1_to_3", |b| {
        b.iter(|| {
            let k = login_key.exchange_key(black_box(&[0x30; 16]));
            let one = k.seal(BoxNumber::Reply1, &reply_1);
            let two = k.open(BoxNumber::Request2, &request_2).unwrap();
            let three = k.seal(BoxNumber::Reply2, br#"{"scram":"e=invalid-proof"}"#);
            (one, two, three)
        });
    });
    g.bench_function("client_seal_request_1", |b| {
        b.iter(|| {
            login_seal::seal_first_request(&mut rng, key.public_bytes(), black_box(client_first))
                .unwrap()
        });
    });
    g.finish();
}

/// AES-256-GMAC: `GHASH_H(aad, len) XOR AES_K(nonce || 1)`, which is what
/// AES-GCM computes for an empty plaintext.
struct Gmac {
    aes: aes::Aes256,
    ghash: ghash::GHash,
}

impl Gmac {
    fn new(key: &[u8; 32]) -> Self {
        use aes::cipher::{BlockCipherEncrypt as _, KeyInit as _};
        let aes = aes::Aes256::new(key.into());
        let mut h = aes::Block::default();
        aes.encrypt_block(&mut h);
        let ghash = <ghash::GHash as ghash::universal_hash::KeyInit>::new(&h);
        Self { aes, ghash }
    }

    fn tag(&self, nonce: &[u8; 12], aad: &[u8]) -> [u8; 16] {
        use aes::cipher::BlockCipherEncrypt as _;
        use ghash::universal_hash::UniversalHash as _;
        let mut g = self.ghash.clone();
        g.update_padded(aad);
        let mut lengths = ghash::Block::default();
        lengths[..8].copy_from_slice(&(aad.len() as u64 * 8).to_be_bytes());
        g.update(&[lengths]);
        let s = g.finalize();
        let mut j0 = aes::Block::default();
        j0[..12].copy_from_slice(nonce);
        j0[15] = 1;
        self.aes.encrypt_block(&mut j0);
        std::array::from_fn(|i| s[i] ^ j0[i])
    }
}

fn tag_primitive(c: &mut Criterion) {
    let mut g = c.benchmark_group("tag_primitive");
    let lc = aws_lc_rs::aead::LessSafeKey::new(
        aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, &KEY).unwrap(),
    );
    let rk = ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &KEY).unwrap(),
    );
    let gmac = Gmac::new(&KEY);
    let nonce = [0u8; 12];
    for (n, label) in SIZES {
        // What a tag covers: header (8 + route) and body.
        let aad = payload(8 + ROUTE.len() + n);
        let by_lc = lc
            .seal_in_place_separate_tag(
                aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce),
                aws_lc_rs::aead::Aad::from(&aad[..]),
                &mut [],
            )
            .unwrap();
        assert_eq!(
            by_lc.as_ref(),
            &gmac.tag(&nonce, &aad),
            "GMAC differs at {label}"
        );
        g.throughput(Throughput::Bytes(n as u64));
        g.bench_function(format!("aws_lc/{label}"), |b| {
            b.iter(|| {
                lc.seal_in_place_separate_tag(
                    aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce),
                    aws_lc_rs::aead::Aad::from(black_box(&aad[..])),
                    &mut [],
                )
                .unwrap()
            });
        });
        g.bench_function(format!("ring/{label}"), |b| {
            b.iter(|| {
                rk.seal_in_place_separate_tag(
                    ring::aead::Nonce::assume_unique_for_key(nonce),
                    ring::aead::Aad::from(black_box(&aad[..])),
                    &mut [],
                )
                .unwrap()
            });
        });
        g.bench_function(format!("aes_ghash/{label}"), |b| {
            b.iter(|| gmac.tag(&nonce, black_box(&aad)));
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    envelope_codec,
    protected_frames,
    protected_frames_ring,
    key_init,
    scram_server,
    login_seal,
    tag_primitive
);
criterion_main!(benches);
