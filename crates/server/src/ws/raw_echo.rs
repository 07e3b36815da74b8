//! `/raw-echo` (only with `[testing] raw_echo = true`): a plain WebSocket
//! echo on the gateway's own WebSocket stack — no subprotocol, envelope,
//! login or crypto. The Autobahn conformance suite runs against it, and the
//! benchmarks use it as the baseline ("the limit" of the stack).

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fastwebsockets::{FragmentCollector, OpCode};

/// Messages up to 64 MiB, as conformance cases need (9.x sends 16 MiB).
const MAX_MESSAGE: usize = 64 << 20;

pub(crate) async fn upgrade(mut req: Request) -> Response {
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return (StatusCode::BAD_REQUEST, "WebSocket upgrades only\n").into_response();
    }
    let (response, upgraded) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(parts) => parts,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("invalid WebSocket upgrade: {e}\n"),
            )
                .into_response();
        }
    };
    tokio::spawn(async move {
        let Ok(mut ws) = upgraded.await else { return };
        ws.set_max_message_size(MAX_MESSAGE);
        let mut ws = FragmentCollector::new(ws);
        loop {
            let Ok(frame) = ws.read_frame().await else {
                break;
            };
            let done = match frame.opcode {
                OpCode::Text | OpCode::Binary => ws.write_frame(frame).await.is_err(),
                OpCode::Close => true,
                _ => false,
            };
            if done {
                break;
            }
        }
    });
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, axum::body::Body::new(body))
}
