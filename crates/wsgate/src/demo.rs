//! `serve --demo`: the public demo account lives only while the demo runs.
//!
//! Its password is printed on start and in the README, so it must never
//! reach the real credential store: a later `serve` without `--demo` on the
//! same data directory (or a fleet sharing the PostgreSQL) would still
//! accept it. [`DemoOverlay`] answers for the demo user from memory and
//! passes every other name to the real store.

use std::sync::Arc;

use anyhow::{Result, bail};
use subtle::ConstantTimeEq as _;
use wsgate_proto::scram;
use wsgate_server::store::{CredentialStore, StoreError, UserRecord};

/// The demo user's name and password (public by design; see README).
pub(crate) const DEMO_USER: &str = "demo";
pub(crate) const DEMO_PASSWORD: &str = "wsgate-demo";
/// The presence channel the demo page shows who is online on.
pub(crate) const DEMO_ROOM: &str = "demo.room";

/// `demo.*` with presence, for `--demo` when the configuration has no
/// pattern for [`DEMO_ROOM`].
pub(crate) fn demo_channel() -> Result<wsgate_server::channels::ChannelRule> {
    use wsgate_server::channels::{ChannelRule, PublishPolicy, SubscribePolicy};
    ChannelRule::new(
        "demo.*",
        false,
        SubscribePolicy::Authenticated,
        PublishPolicy::Authenticated,
    )
    .map(|rule| rule.with_presence(true))
    .map_err(|e| anyhow::anyhow!("the demo channel: {e}"))
}

/// The demo password is public, so its iteration count only costs time.
const DEMO_ITERATIONS: u32 = scram::MIN_ITERATIONS;

/// A credential store with the demo user added in memory, in front of the
/// real one. Only lookups see the demo user: `user list`, `add`, `remove`
/// go to the real store (they do not run through `serve` anyway).
#[derive(Debug)]
pub(crate) struct DemoOverlay {
    inner: Arc<dyn CredentialStore>,
    demo: UserRecord,
}

impl DemoOverlay {
    /// The demo user over `inner`; warns if `inner` has a user of that name,
    /// which the demo shadows while it runs.
    pub(crate) async fn new(inner: Arc<dyn CredentialStore>) -> Result<Self> {
        if inner.get_user(DEMO_USER).await?.is_some() {
            tracing::warn!(
                user = DEMO_USER,
                "the credential store has a user named like the demo account: --demo shadows it until the gateway stops"
            );
        }
        let demo = crate::commands::make_record(DEMO_USER, DEMO_PASSWORD, DEMO_ITERATIONS)?;
        Ok(Self { inner, demo })
    }
}

#[async_trait::async_trait]
impl CredentialStore for DemoOverlay {
    async fn get_user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        if name == DEMO_USER {
            return Ok(Some(self.demo.clone()));
        }
        self.inner.get_user(name).await
    }
    async fn add_user(&self, record: UserRecord) -> Result<(), StoreError> {
        if record.name == DEMO_USER {
            return Err(StoreError::UserExists(record.name));
        }
        self.inner.add_user(record).await
    }
    async fn set_user(&self, record: UserRecord) -> Result<(), StoreError> {
        self.inner.set_user(record).await
    }
    async fn remove_user(&self, name: &str) -> Result<bool, StoreError> {
        self.inner.remove_user(name).await
    }
    async fn list_users(&self) -> Result<Vec<String>, StoreError> {
        self.inner.list_users().await
    }
}

/// Refuses to serve without `--demo` while the real store still holds the
/// public demo account (left by a version that stored it): anyone who read
/// the README could log in. A user named `demo` with another password is
/// someone's real account and is left alone.
pub(crate) async fn refuse_leftover_demo_account(store: &dyn CredentialStore) -> Result<()> {
    let Some(user) = store.get_user(DEMO_USER).await? else {
        return Ok(());
    };
    // Bounded: a stored record with absurd iterations is not the demo's.
    if user.iterations > 10 * DEMO_ITERATIONS {
        return Ok(());
    }
    let Ok(verifier) = scram::derive_verifier(DEMO_PASSWORD, &user.salt, user.iterations) else {
        return Ok(());
    };
    if bool::from(verifier.stored_key.ct_eq(&user.stored_key)) {
        bail!(
            "the credential store still holds the public demo account {DEMO_USER} / {DEMO_PASSWORD} \
             (created by an earlier `wsgate serve --demo`), which anyone could log in with; \
             remove it with `wsgate user remove {DEMO_USER}` (same --data-dir / --config), \
             or run with --demo"
        );
    }
    Ok(())
}
