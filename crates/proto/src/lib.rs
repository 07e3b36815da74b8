//! The sans-IO core of wsgate: everything in the wire protocol that can be
//! computed without a socket, a clock or an operating-system RNG.
//!
//! ```text
//!  browser / Rust client                              gateway
//!  ─────────────────────                              ───────
//!  scram::ClientFirst ── PUT /auth/session ─────────▶ scram::ServerFirst
//!  scram::ClientFinal ◀─ 401 {sid, server-first} ──── (exchange in state store)
//!                     ── PUT /auth/session ─────────▶ scram::verify_client_final
//!  session_key        ◀─ 200 {v=ServerSignature} ───  session_key
//!    (every login message sealed: login_seal, HPKE mode_base + boxes)
//!  key_exchange::seal_key_init ── KEY_INIT (HPKE) ──▶ key_exchange::open_key_init
//!  protect::Sealer/Opener  ◀════ protected frames ═══▶ protect::Sealer/Opener
//! ```
//!
//! The caller does the IO, owns the clock (session expiry lives in the
//! gateway's state store) and passes randomness in as bytes or as a
//! [`rand_core::CryptoRng`]. Every function here is deterministic given its
//! inputs, which is what lets `testdata/` hold byte-exact vectors shared with
//! the browser module.
//!
//! The normative description of the wire format is `docs/protocol.md`.

#![forbid(unsafe_code)]

pub mod b64;
pub mod continuity;
pub mod envelope;
pub mod error;
mod hpke_recipient;
pub mod ip;
pub mod key_exchange;
pub mod keys;
pub mod login_seal;
pub mod protect;
pub mod saslprep;
pub mod scram;

pub use error::{Error, Result};
/// The RNG traits accepted wherever this crate needs randomness.
pub use hpke::rand_core;
