//! The authentication module: `GET /auth/key` and `PUT /auth/session`
//! (protocol.md §3–4). SCRAM itself is `wsgate_proto::scram::server` and the
//! sealing of its messages `wsgate_proto::login_seal` (§4.1); this file adds
//! the stores, rate limits and HTTP shapes.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use wsgate_proto::login_seal::{self, BoxNumber, ExchangeKey, SealedFirstRequest};
use wsgate_proto::scram::ScramError;
use wsgate_proto::scram::server::{
    Exchange, parse_client_first, unknown_user_salt, unknown_user_verifier,
};
use wsgate_proto::{b64, ip};

use zeroize::{Zeroize as _, Zeroizing};

use super::json_response;
use crate::Shared;
use crate::store::{
    ExchangeAdmission, ExchangeQuota, FailureLimit, MAX_USER_NAME_LEN, SessionRecord, StoreError,
};

/// `GET /auth/key`.
pub(crate) async fn get_key(State(shared): State<Arc<Shared>>) -> Response {
    let mut resp = axum::Json(shared.keys.response()).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// The observed IP of a request (protocol.md §2).
pub(crate) fn observed_ip(shared: &Shared, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
    crate::forwarded::observed_ip(peer.ip(), headers, &shared.config.trusted_proxies)
}

fn with_www_authenticate(mut resp: Response) -> Response {
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("wsgate-v1"),
    );
    resp
}

fn failed(e: ScramError) -> Response {
    with_www_authenticate(json_response(
        StatusCode::UNAUTHORIZED,
        &json!({"status": "failed", "scram": e.server_final()}),
    ))
}

/// A reply 2 failure, in `box(3, {"scram":"e=…"})` (protocol.md §4.1).
fn failed_sealed(key: &ExchangeKey, e: ScramError) -> Response {
    let ct = key.seal(BoxNumber::Reply2, &login_seal::reply2_failure_inner(e));
    with_www_authenticate(json_response(
        StatusCode::UNAUTHORIZED,
        &json!({"status": "failed", "ct": ct}),
    ))
}

/// The clear `400` of a first request that is not sealed or does not open.
fn seal_refused(error: &'static str) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        &json!({"status": "failed", "error": error}),
    )
}

fn bad_request(message: &str) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        &json!({"status": "bad_request", "message": message}),
    )
}

/// `Retry-After` in whole seconds, rounded up, at least 1.
fn retry_after_secs(retry_after: Duration) -> HeaderValue {
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    HeaderValue::from(secs.max(1))
}

fn rate_limited(retry_after: Duration) -> Response {
    let mut resp = json_response(
        StatusCode::TOO_MANY_REQUESTS,
        &json!({"status": "rate_limited"}),
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, retry_after_secs(retry_after));
    resp
}

/// The clear `503` of a first request when the store holds
/// `max_exchanges` live exchanges: nothing was stored.
fn exchanges_full(retry_after: Duration) -> Response {
    let mut resp = json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &json!({"status": "unavailable", "message": "too many logins in progress; retry shortly"}),
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, retry_after_secs(retry_after));
    resp
}

fn unavailable(e: &StoreError) -> Response {
    crate::log_limit::error_limited!(e, "store unavailable during login");
    let mut resp = json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &json!({"status": "unavailable", "message": "the login store is unreachable; retry shortly"}),
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

fn user_key(user: &str) -> String {
    format!("login-fail:user:{user}")
}

/// `group` here and below is the client's IP group: its IPv4 address or its
/// IPv6 prefix ([`crate::config::LoginPolicy::ip_group`]).
fn start_key(group: &str) -> String {
    format!("login-start:ip:{group}")
}

fn ip_key(group: &str) -> String {
    format!("login-fail:ip:{group}")
}

/// Refreshes the gauges read from the state store (`GET /metrics`): the
/// live login exchanges. A store that does not answer leaves the last value.
pub(crate) async fn refresh_gauges(shared: &Shared) {
    match shared.state.live_exchanges().await {
        Ok(n) => shared.metrics.login_exchanges.set(n),
        Err(e) => tracing::debug!(error = %e, "cannot count the live login exchanges"),
    }
}

/// What the state store keeps between the two requests of an exchange: the
/// SCRAM state, the key request 1 was sealed to, and `exchange_key`. Sealed
/// by the node (`store::SealedState`, the `sid` in the AAD) before any
/// backend sees it.
#[derive(Serialize, Deserialize)]
struct ExchangeRecord {
    #[serde(flatten)]
    scram: Exchange,
    /// `fp` of the key request 1 was sealed to: the only one cbind may name.
    sealed_to: String,
    /// b64u `exchange_key`.
    exchange_key: String,
}

impl Drop for ExchangeRecord {
    fn drop(&mut self) {
        self.exchange_key.zeroize();
    }
}

impl ExchangeRecord {
    fn exchange_key(&self) -> Option<ExchangeKey> {
        let raw = Zeroizing::new(b64::decode_b64u_array::<32>(&self.exchange_key).ok()?);
        Some(ExchangeKey::from_bytes(*raw))
    }
}

/// `Some(time left)` when `key` already holds `limit` failures: an early,
/// read-only refusal that saves work. The authoritative check is the
/// atomic one before a proof is evaluated ([`second_request`]).
async fn at_limit(shared: &Shared, key: &str, limit: u32) -> Result<Option<Duration>, StoreError> {
    let (count, left) = shared.state.failures(key).await?;
    Ok((count >= limit).then_some(left))
}

/// Counts a failure that names no trustworthy user (a request that does
/// not open or parse, an unknown exchange) against the IP group.
async fn count_ip_failure(shared: &Shared, group: &str) -> Result<(), StoreError> {
    let window = shared.config.login.failure_window;
    shared.state.record_failure(&ip_key(group), window).await?;
    Ok(())
}

/// `PUT /auth/session`: first or second request, told apart by `sid`.
pub(crate) async fn put_session(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !shared.config.auth_module {
        return match &shared.config.auth_redirect {
            // 307 keeps the method and body, so the PUT is repeated there.
            Some(url) => {
                let location = format!("{}/auth/session", url.trim_end_matches('/'));
                let mut resp = StatusCode::TEMPORARY_REDIRECT.into_response();
                if let Ok(v) = HeaderValue::from_str(&location) {
                    resp.headers_mut().insert(header::LOCATION, v);
                }
                resp
            }
            None => json_response(
                StatusCode::NOT_FOUND,
                &json!({"status": "not_found", "message": "this node does not host the authentication module; log in at a node with auth_module = true"}),
            ),
        };
    }
    if body.len() > shared.config.limits.http_body_limit {
        return json_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &json!({"status": "bad_request", "message": "request body too large"}),
        );
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return bad_request(
            "body must be a JSON object like {\"scram\": \"p=wsgate-v1,,n=<user>,r=<nonce>\"}",
        );
    };
    let Some(obj) = value.as_object() else {
        return bad_request("body must be a JSON object");
    };
    let observed = observed_ip(&shared, peer, &headers);
    // The login binds the address itself; the limits count its group.
    let client = Client {
        ip_text: ip::to_text(observed),
        group: shared.config.login.ip_group(observed),
    };
    let result = match obj.get("sid") {
        Some(sid) => match sid.as_str() {
            Some(sid) => {
                let ct = obj.get("ct").and_then(|c| c.as_str());
                second_request(&shared, sid, ct, &client).await
            }
            None => Ok(failed(ScramError::OtherError)),
        },
        // The clear v1 form: refused, so no client sends a name in clear.
        None if obj.contains_key("scram") && !obj.contains_key("ct") => {
            Ok(seal_refused("sealed_login_required"))
        }
        None => first_request(&shared, obj, &client).await,
    };
    result.unwrap_or_else(|e| unavailable(&e))
}

/// Who sent a login request.
struct Client {
    /// The observed IP in the protocol's text form (the login binds it).
    ip_text: String,
    /// What every per-IP limit counts it under: the address (IPv4) or the
    /// `ipv6_prefix_len` prefix (IPv6).
    group: String,
}

/// Opens request 1 (protocol.md §4.1): the sealing key's `fp`, the inner
/// plaintext and `login_key`, or `None` for `400 bad_seal`.
fn open_first(
    shared: &Shared,
    outer: &serde_json::Map<String, serde_json::Value>,
) -> Option<(String, Zeroizing<Vec<u8>>, login_seal::LoginKey)> {
    let field = |name: &str| outer.get(name).and_then(|v| v.as_str()).map(str::to_owned);
    let request = SealedFirstRequest {
        kid: field("kid")?,
        enc: field("enc")?,
        ct: field("ct")?,
    };
    let key = shared.keys.by_kid(&request.kid)?;
    let (plain, login_key) = login_seal::open_first_request(key, &request).ok()?;
    Some((key.fingerprint().to_owned(), plain, login_key))
}

async fn first_request(
    shared: &Shared,
    outer: &serde_json::Map<String, serde_json::Value>,
    client: &Client,
) -> Result<Response, StoreError> {
    let policy = &shared.config.login;
    let (ip_text, group) = (client.ip_text.as_str(), client.group.as_str());
    // An IP group at its failure limit gets nothing more, not even the
    // X25519 of opening its request.
    if let Some(wait) = at_limit(shared, &ip_key(group), policy.max_failures_per_ip).await? {
        return Ok(rate_limited(wait));
    }
    let Some((sealed_to, plain, login_key)) = open_first(shared, outer) else {
        count_ip_failure(shared, group).await?;
        shared.metrics.logins_bad_seal.inc();
        return Ok(seal_refused("bad_seal"));
    };
    // The inner first request; `pad` and unknown members are ignored.
    #[derive(Deserialize)]
    struct Inner {
        scram: String,
    }
    let parsed = serde_json::from_slice::<Inner>(&plain)
        .map_err(|_| ScramError::InvalidEncoding)
        .and_then(|inner| parse_client_first(&inner.scram));
    // A name longer than any stored one could be is refused before it is
    // looked up or kept: an exchange record stays small (issue 11).
    let parsed = parsed.and_then(|first| {
        if first.username.len() > MAX_USER_NAME_LEN {
            Err(ScramError::InvalidEncoding)
        } else {
            Ok(first)
        }
    });
    let first = match parsed {
        Ok(f) => f,
        Err(e) => {
            count_ip_failure(shared, group).await?;
            return Ok(failed(e));
        }
    };
    if let Some(wait) = at_limit(
        shared,
        &user_key(&first.username),
        policy.max_failures_per_user,
    )
    .await?
    {
        return Ok(rate_limited(wait));
    }
    // Every first request stores an exchange for a minute: bound how many
    // one address (IPv6: prefix) may open per window...
    let (starts, left) = shared
        .state
        .record_failure(&start_key(group), policy.failure_window)
        .await?;
    if starts > policy.max_starts_per_ip {
        return Ok(rate_limited(left));
    }
    // Computed for every name, so known and unknown users cost the same.
    let fake_salt = unknown_user_salt(shared.secret.as_bytes(), &first.username);
    let (salt, iterations) = match shared.credentials.get_user(&first.username).await? {
        Some(user) => (user.salt, user.iterations),
        None => (fake_salt.to_vec(), policy.iterations),
    };
    let exchange = Exchange::new(
        &first,
        &salt,
        iterations,
        &crate::random_bytes::<24>(),
        ip_text,
    );
    let raw_sid = crate::random_bytes::<{ login_seal::SID_LEN }>();
    let sid = b64::encode_b64u(&raw_sid);
    let exchange_key = login_key.exchange_key(&raw_sid);
    let ct = exchange_key.seal(
        BoxNumber::Reply1,
        &login_seal::reply1_inner(&exchange.server_first, ip_text),
    );
    let record = ExchangeRecord {
        scram: exchange,
        sealed_to,
        exchange_key: b64::encode_b64u(exchange_key.as_bytes()),
    };
    let mut state =
        crate::store::to_json_zeroizing(&record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    // ...and how many may be live at once, per address and in all: a full
    // table refuses, it never grows.
    let quota = ExchangeQuota {
        group,
        max_per_group: policy.max_exchanges_per_ip,
        max_total: policy.max_exchanges,
    };
    match shared
        .state
        .put_exchange(
            &sid,
            std::mem::take(&mut *state),
            policy.exchange_ttl,
            quota,
        )
        .await?
    {
        ExchangeAdmission::Stored => {}
        ExchangeAdmission::GroupFull { retry_after } => {
            shared.metrics.login_exchanges_refused_ip.inc();
            return Ok(rate_limited(retry_after));
        }
        ExchangeAdmission::StoreFull { retry_after } => {
            shared.metrics.login_exchanges_refused_full.inc();
            tracing::warn!(
                max_exchanges = policy.max_exchanges,
                "login exchange table full: first requests get 503 until exchanges expire or complete"
            );
            return Ok(exchanges_full(retry_after));
        }
    }
    Ok(with_www_authenticate(json_response(
        StatusCode::UNAUTHORIZED,
        &json!({"status": "unauthenticated", "sid": sid, "ct": ct}),
    )))
}

async fn second_request(
    shared: &Shared,
    sid: &str,
    ct: Option<&str>,
    client: &Client,
) -> Result<Response, StoreError> {
    let policy = &shared.config.login;
    let (ip_text, group) = (client.ip_text.as_str(), client.group.as_str());
    // Taken whatever the outcome: a retried second request starts over.
    let record = match shared.state.take_exchange(sid).await? {
        Some(bytes) => {
            let bytes = Zeroizing::new(bytes);
            serde_json::from_slice::<ExchangeRecord>(&bytes).ok()
        }
        None => None,
    };
    let Some((record, key)) = record.and_then(|r| r.exchange_key().map(|k| (r, k))) else {
        count_ip_failure(shared, group).await?;
        return Ok(failed(ScramError::OtherError));
    };
    let exchange = &record.scram;
    // Request 2's inner body; one that does not open is not the client's.
    #[derive(Deserialize)]
    struct Inner {
        scram: String,
    }
    let inner = ct
        .and_then(|ct| key.open(BoxNumber::Request2, ct).ok())
        .and_then(|plain| serde_json::from_slice::<Inner>(&plain).ok());
    let Some(inner) = inner else {
        count_ip_failure(shared, group).await?;
        shared.metrics.logins_bad_seal.inc();
        return Ok(failed_sealed(&key, ScramError::InvalidEncoding));
    };
    // The proof is about to be evaluated: count it as a failure of the user
    // and of the IP group first, in one atomic step that refuses if either
    // is at its limit — so concurrent second requests, on any node, never
    // evaluate more than the limits allow. A success gives the counts back
    // below.
    let user_failures = user_key(&exchange.username);
    let ip_failures = ip_key(group);
    let limits = [
        FailureLimit {
            key: &user_failures,
            limit: policy.max_failures_per_user,
        },
        FailureLimit {
            key: &ip_failures,
            limit: policy.max_failures_per_ip,
        },
    ];
    if let Some(wait) = shared
        .state
        .record_failure_within(&limits, policy.failure_window)
        .await?
    {
        shared.metrics.logins_limited.inc();
        return Ok(rate_limited(wait));
    }
    let user = shared.credentials.get_user(&exchange.username).await?;
    let verifier = user.as_ref().map(|u| u.verifier());
    let fallback = unknown_user_verifier(shared.secret.as_bytes(), &exchange.username);
    let keys = &shared.keys;
    // The binding must name the key request 1 was sealed to, and that key
    // must still be accepted.
    let outcome = exchange.verify_client_final(
        &inner.scram,
        ip_text,
        |fp| fp == record.sealed_to && keys.by_fingerprint(fp).is_some(),
        verifier.as_ref(),
        &fallback,
    );
    let verified = match (outcome, user) {
        (Ok(v), Some(user)) => (v, user),
        (Err(e), _) => {
            // Already counted, before the evaluation.
            tracing::info!(user = ?exchange.username, ip = %ip_text, reason = e.code(), "login failed");
            shared.metrics.logins_failed.inc();
            return Ok(failed_sealed(&key, e));
        }
        (Ok(_), None) => return Ok(failed_sealed(&key, ScramError::InvalidProof)),
    };
    let (verified, user) = verified;
    // A success resets the user's count and gives back the IP's.
    shared.state.reset_failures(&user_failures).await?;
    shared.state.forgive_failure(&ip_failures).await?;
    let ttl = shared.config.login.session_ttl;
    let session_id = b64::encode_b64u(&crate::random_bytes::<16>());
    let record = SessionRecord {
        user: user.name.clone(),
        ip: ip_text.to_owned(),
        key_fp: verified.key_fp.clone(),
        session_key: verified.session_key.clone(),
        expires_at: crate::store::unix_now() + ttl.as_secs(),
    };
    shared.state.put_session(&session_id, &record).await?;
    tracing::info!(user = ?user.name, ip = %ip_text, "login succeeded");
    shared.metrics.logins_ok.inc();
    let ct = key.seal(
        BoxNumber::Reply2,
        &login_seal::reply2_success_inner(
            &verified.server_final,
            &session_id,
            &user.name,
            ttl.as_secs().max(1),
        ),
    );
    Ok(json_response(
        StatusCode::OK,
        &json!({"status": "authenticated", "ct": ct}),
    ))
}
