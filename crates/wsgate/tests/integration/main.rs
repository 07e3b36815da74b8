//! Integration tests over real sockets on 127.0.0.0/8: an in-process gateway
//! driven by the Rust client and by hand-built frames, and the built
//! `wsgate` binary driven as a user would.

// Test code: panicking on an unexpected value is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::zombie_processes)]

mod attacks;
mod backend;
mod channels;
mod cli;
mod client;
mod cluster;
mod continuity;
mod continuity_fleet;
mod embedding;
mod exposure;
mod failover;
mod fleet;
mod fleet_load;
mod hardening;
mod limits;
mod login;
mod logs;
mod metrics;
mod nginx;
mod origins;
mod presence;
mod presence_fleet;
mod roles;
mod state_seal;
mod unauthenticated;
mod upstream;
mod util;
mod websocket;
