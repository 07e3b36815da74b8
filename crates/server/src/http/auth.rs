//! The authentication module: `GET /auth/key` and `PUT /auth/session`
//! (DESIGN §3–4). SCRAM itself is `wsgate_proto::scram::server`; this file
//! adds the stores, rate limits and HTTP shapes.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use wsgate_proto::scram::ScramError;
use wsgate_proto::scram::server::{
    Exchange, parse_client_first, unknown_user_salt, unknown_user_verifier,
};
use wsgate_proto::{b64, ip};

use super::json_response;
use crate::Shared;
use crate::store::{SessionRecord, StoreError};

/// `GET /auth/key`.
pub(crate) async fn get_key(State(shared): State<Arc<Shared>>) -> Response {
    let mut resp = axum::Json(shared.keys.response()).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// The observed IP of a request (DESIGN §2).
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

fn bad_request(message: &str) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        &json!({"status": "bad_request", "message": message}),
    )
}

fn rate_limited(retry_after: Duration) -> Response {
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    let mut resp = json_response(
        StatusCode::TOO_MANY_REQUESTS,
        &json!({"status": "rate_limited"}),
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    resp
}

fn unavailable(e: &StoreError) -> Response {
    tracing::error!(error = %e, "store unavailable during login");
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

fn start_key(ip: &str) -> String {
    format!("login-start:ip:{ip}")
}

fn ip_key(ip: &str) -> String {
    format!("login-fail:ip:{ip}")
}

/// `Some(retry_after)` when the user or the IP is over its failure limit.
async fn limited(shared: &Shared, user: &str, ip: &str) -> Result<Option<Duration>, StoreError> {
    let policy = &shared.config.login;
    let (user_count, user_left) = shared.state.failures(&user_key(user)).await?;
    let (ip_count, ip_left) = shared.state.failures(&ip_key(ip)).await?;
    let mut wait = None;
    if user_count >= policy.max_failures_per_user {
        wait = Some(user_left);
    }
    if ip_count >= policy.max_failures_per_ip {
        wait = Some(wait.map_or(ip_left, |w: Duration| w.max(ip_left)));
    }
    Ok(wait)
}

async fn count_failure(shared: &Shared, user: Option<&str>, ip: &str) -> Result<(), StoreError> {
    let window = shared.config.login.failure_window;
    if let Some(user) = user {
        shared.state.record_failure(&user_key(user), window).await?;
    }
    shared.state.record_failure(&ip_key(ip), window).await?;
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
    let ip_text = ip::to_text(observed_ip(&shared, peer, &headers));
    let Some(scram) = obj.get("scram").and_then(|s| s.as_str()) else {
        return failed(ScramError::InvalidEncoding);
    };
    let result = match obj.get("sid") {
        None => first_request(&shared, scram, &ip_text).await,
        Some(sid) => match sid.as_str() {
            Some(sid) => second_request(&shared, sid, scram, &ip_text).await,
            None => Ok(failed(ScramError::OtherError)),
        },
    };
    result.unwrap_or_else(|e| unavailable(&e))
}

async fn first_request(
    shared: &Shared,
    client_first: &str,
    ip_text: &str,
) -> Result<Response, StoreError> {
    let first = match parse_client_first(client_first) {
        Ok(f) => f,
        Err(e) => {
            count_failure(shared, None, ip_text).await?;
            return Ok(failed(e));
        }
    };
    if let Some(wait) = limited(shared, &first.username, ip_text).await? {
        return Ok(rate_limited(wait));
    }
    // Every first request stores an exchange for a minute: bound how many
    // one address may open per window.
    let policy = &shared.config.login;
    let (starts, left) = shared
        .state
        .record_failure(&start_key(ip_text), policy.failure_window)
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
    let sid = b64::encode_b64u(&crate::random_bytes::<16>());
    let state = serde_json::to_vec(&exchange).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    shared
        .state
        .put_exchange(&sid, state, shared.config.login.exchange_ttl)
        .await?;
    Ok(with_www_authenticate(json_response(
        StatusCode::UNAUTHORIZED,
        &json!({"status": "unauthenticated", "sid": sid, "scram": exchange.server_first, "ip": ip_text}),
    )))
}

async fn second_request(
    shared: &Shared,
    sid: &str,
    client_final: &str,
    ip_text: &str,
) -> Result<Response, StoreError> {
    // Taken whatever the outcome: a retried second request starts over.
    let exchange = match shared.state.take_exchange(sid).await? {
        Some(bytes) => serde_json::from_slice::<Exchange>(&bytes).ok(),
        None => None,
    };
    let Some(exchange) = exchange else {
        count_failure(shared, None, ip_text).await?;
        return Ok(failed(ScramError::OtherError));
    };
    if let Some(wait) = limited(shared, &exchange.username, ip_text).await? {
        shared.metrics.logins_limited.inc();
        return Ok(rate_limited(wait));
    }
    let user = shared.credentials.get_user(&exchange.username).await?;
    let verifier = user.as_ref().map(|u| u.verifier());
    let fallback = unknown_user_verifier(shared.secret.as_bytes(), &exchange.username);
    let keys = &shared.keys;
    let outcome = exchange.verify_client_final(
        client_final,
        ip_text,
        |fp| keys.by_fingerprint(fp).is_some(),
        verifier.as_ref(),
        &fallback,
    );
    let verified = match (outcome, user) {
        (Ok(v), Some(user)) => (v, user),
        (Err(e), _) => {
            count_failure(shared, Some(&exchange.username), ip_text).await?;
            tracing::info!(user = %exchange.username, ip = %ip_text, reason = e.code(), "login failed");
            shared.metrics.logins_failed.inc();
            return Ok(failed(e));
        }
        (Ok(_), None) => return Ok(failed(ScramError::InvalidProof)),
    };
    let (verified, user) = verified;
    shared
        .state
        .reset_failures(&user_key(&exchange.username))
        .await?;
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
    tracing::info!(user = %user.name, ip = %ip_text, "login succeeded");
    shared.metrics.logins_ok.inc();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "status": "authenticated",
            "scram": verified.server_final,
            "session": session_id,
            "user": user.name,
            "expires_in": ttl.as_secs().max(1),
        }),
    ))
}
