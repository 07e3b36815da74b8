//! The HTTP API for upstream applications (protocol.md §6.3), authorized by a
//! bearer API key from the configuration:
//!
//! * `POST /api/publish {"channel","data"}` — publish an EVENT fleet-wide;
//! * `POST /auth/introspect {"session"}` — the centralized answer to "is
//!   this session alive, and whose is it?" for servers that do not hold the
//!   WebSocket.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde_json::json;

use super::json_response;
use crate::Shared;

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Checks the API key; every configured key is compared (constant time each).
fn authorized(shared: &Shared, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let presented = bearer(headers).unwrap_or_default();
    let ok = shared
        .config
        .api_keys
        .iter()
        .fold(false, |acc, key| key.matches(presented) | acc);
    if ok {
        return Ok(());
    }
    let mut resp = json_response(
        StatusCode::UNAUTHORIZED,
        &json!({"status": "unauthorized", "message": "send `Authorization: Bearer <api key>` with a key from api_keys"}),
    );
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer"),
    );
    Err(Box::new(resp))
}

/// Middleware in front of the API routes, outside `http::body::bounded`:
/// a request without a valid key gets `401` from its headers alone, before
/// a byte of its body (up to a megabyte on `/api/publish`) is read or
/// buffered (issue 11, item 10).
pub(crate) async fn require_api_key(
    State(shared): State<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Err(resp) = authorized(&shared, request.headers()) {
        return *resp;
    }
    next.run(request).await
}

/// A `404` with its `status` code and a message saying what to configure.
fn not_found(status: &str, message: String) -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({"status": status, "message": message}),
    )
}

fn bad_request(message: &str) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        &json!({"status": "bad_request", "message": message}),
    )
}

fn unavailable(e: &crate::store::StoreError) -> Response {
    tracing::error!(error = %e, "state store unavailable in the upstream API");
    json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &json!({"status": "unavailable", "message": "the state store is unreachable; retry shortly"}),
    )
}

/// `POST /api/publish`.
pub(crate) async fn publish(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // `require_api_key` already refused before the body was read; checked
    // again so that the handler is safe even if mounted without it.
    if let Err(resp) = authorized(&shared, &headers) {
        return *resp;
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return bad_request("body must be JSON like {\"channel\": \"news\", \"data\": {...}}");
    };
    let (Some(channel), Some(data)) = (
        value.get("channel").and_then(|c| c.as_str()),
        value.get("data"),
    ) else {
        return bad_request("body needs a string `channel` and a `data` member");
    };
    if shared.config.channels.lookup(channel).is_none() {
        return not_found(
            "not_found",
            format!("no channel pattern matches {channel:?}"),
        );
    }
    // `data` arrives parsed, so re-serializing gives compact JSON.
    let payload = data.to_string();
    if payload.len() > shared.config.limits.max_message_size {
        return json_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &json!({"status": "bad_request", "message": "data is larger than limits.max_message_size"}),
        );
    }
    let history = shared
        .config
        .channels
        .lookup(channel)
        .and_then(|m| m.rule.history);
    match history {
        // A history channel answers with the event's position (§6.5).
        Some(policy) => match shared
            .state
            .publish_at(channel, payload.as_bytes(), &policy)
            .await
        {
            Ok(at) => json_response(
                StatusCode::OK,
                &json!({"status": "published", "ok": true, "epoch": at.epoch, "offset": at.offset}),
            ),
            Err(e) => unavailable(&e),
        },
        None => match shared
            .state
            .publish_event(channel, payload.as_bytes())
            .await
        {
            Ok(()) => json_response(StatusCode::OK, &json!({"status": "published"})),
            Err(e) => unavailable(&e),
        },
    }
}

/// Events `/api/history` returns unless `limit` says otherwise.
const DEFAULT_HISTORY_LIMIT: usize = 100;

/// `POST /api/history` `{"channel","since"?,"limit"?}` (protocol.md §6.5):
/// the stream's position and, oldest first, the first `limit` kept events
/// after `since` (when it is in the current epoch), else the last `limit`.
pub(crate) async fn history(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(resp) = authorized(&shared, &headers) {
        return *resp;
    }
    #[derive(serde::Deserialize)]
    struct Request {
        channel: String,
        since: Option<crate::store::Position>,
        limit: Option<usize>,
    }
    let Ok(request) = serde_json::from_slice::<Request>(&body) else {
        return bad_request(
            "body must be JSON like {\"channel\": \"news\", \"since\": {\"epoch\": \"…\", \"offset\": 7}, \"limit\": 100}",
        );
    };
    let Some(rule) = shared.config.channels.lookup(&request.channel) else {
        return not_found(
            "not_found",
            format!("no channel pattern matches {:?}", request.channel),
        );
    };
    let Some(policy) = rule.rule.history else {
        return not_found(
            "no_history",
            format!(
                "channel {:?} keeps no history (set history = N on its pattern)",
                request.channel
            ),
        );
    };
    let max = shared.config.limits.max_replay;
    let limit = request.limit.unwrap_or(DEFAULT_HISTORY_LIMIT);
    if limit == 0 || limit > max {
        return bad_request(&format!("limit must be 1 to {max} (limits.max_replay)"));
    }
    match shared
        .state
        .read_history(&request.channel, request.since.as_ref(), limit, &policy)
        .await
    {
        Ok(read) => {
            let events: Vec<serde_json::Value> = read
                .events
                .iter()
                .map(|e| match serde_json::from_slice::<serde_json::Value>(&e.payload) {
                    Ok(data) => json!({"offset": e.offset, "data": data}),
                    // A WebSocket PUBLISH may carry any bytes: those that
                    // are not JSON come base64-encoded.
                    Err(_) => json!({"offset": e.offset, "data_b64": wsgate_proto::b64::encode_b64(&e.payload)}),
                })
                .collect();
            json_response(
                StatusCode::OK,
                &json!({"epoch": read.position.epoch, "offset": read.position.offset, "events": events}),
            )
        }
        Err(e) => unavailable(&e),
    }
}

/// `POST /auth/introspect`.
pub(crate) async fn introspect(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(resp) = authorized(&shared, &headers) {
        return *resp;
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return bad_request("body must be JSON like {\"session\": \"<session id>\"}");
    };
    let Some(id) = value.get("session").and_then(|s| s.as_str()) else {
        return bad_request("body needs a string `session`");
    };
    match shared.state.get_session(id).await {
        Ok(Some(record)) if !record.is_expired_at(crate::store::unix_now()) => json_response(
            StatusCode::OK,
            &json!({
                "active": true,
                "user": record.user,
                "ip": record.ip,
                "expires_in": record.expires_in_at(crate::store::unix_now()),
            }),
        ),
        Ok(_) => json_response(StatusCode::OK, &json!({"active": false})),
        Err(e) => unavailable(&e),
    }
}

/// `POST /api/presence` `{"channel"}` (protocol.md §6.6): who is present,
/// as PRESENCE answers it.
pub(crate) async fn presence(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(resp) = authorized(&shared, &headers) {
        return *resp;
    }
    #[derive(serde::Deserialize)]
    struct Request {
        channel: String,
    }
    let Ok(request) = serde_json::from_slice::<Request>(&body) else {
        return bad_request("body must be JSON like {\"channel\": \"room.1\"}");
    };
    let Some(rule) = shared.config.channels.lookup(&request.channel) else {
        return not_found(
            "not_found",
            format!("no channel pattern matches {:?}", request.channel),
        );
    };
    if !rule.rule.presence {
        return not_found(
            "no_presence",
            format!(
                "channel {:?} has no presence (set presence = true on its pattern)",
                request.channel
            ),
        );
    }
    let limit = shared.config.limits.max_presence_list;
    match shared.state.presence_list(&request.channel, limit).await {
        Ok(list) => json_response(StatusCode::OK, &crate::ws::presence_reply(&list)),
        Err(e) => unavailable(&e),
    }
}
