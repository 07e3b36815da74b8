//! Embedding the gateway in an existing axum service with in-process route
//! handlers (the pattern of `crates/server/examples/embed.rs`).

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use wsgate_client::{ClientConfig, login};
use wsgate_server::Gateway;
use wsgate_server::handler::{HandlerError, handler_fn};
use wsgate_server::keys::DataDir;

use crate::util::*;

#[tokio::test]
async fn an_axum_app_serves_its_routes_and_wsgate_side_by_side() {
    let fleet = Fleet::new().await;
    let mut config = config("");
    config.data_dir = fleet.data.path().to_owned();
    config
        .add_handler(
            "app.greet",
            true,
            handler_fn(|req| async move {
                if req.body.is_empty() {
                    return Err(HandlerError::new("bad_request", "send your name"));
                }
                assert!(req.encrypted);
                Ok(format!(
                    "hello {} ({})",
                    String::from_utf8_lossy(&req.body),
                    req.user
                )
                .into_bytes())
            }),
        )
        .unwrap();
    let (keys, secret) = DataDir::new(fleet.data.path()).load().unwrap();
    let gateway = Gateway::new(
        config,
        keys,
        secret,
        fleet.credentials.clone(),
        fleet.state.clone(),
    );
    let app = Router::new()
        .route("/hello", get(|| async { "existing" }))
        .merge(gateway.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });

    let mut http = RawHttp::connect(addr, None).await;
    assert_eq!(http.request("GET", "/hello", b"").await.status, 200);
    let client = ClientConfig::from_addr(addr);
    let session = login(&client, ALICE, ALICE_PASSWORD).await.unwrap();
    let mut conn = session.connect(&client).await.unwrap();
    assert_eq!(
        conn.request("app.greet", b"Ada", true).await.unwrap(),
        b"hello Ada (alice)"
    );
    let e = conn.request("app.greet", b"", true).await.unwrap_err();
    assert_eq!(e.server_code(), Some("bad_request"));
    let e = conn.request("app.greet", b"Ada", false).await.unwrap_err();
    assert_eq!(e.server_code(), Some("encryption_required"));
}
