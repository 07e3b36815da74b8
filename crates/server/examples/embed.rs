//! Embedding wsgate in an existing axum service, with a route served by
//! in-process Rust code.
//!
//! ```sh
//! cargo run -p wsgate-server --example embed
//! ```
//!
//! Then log in as `demo` / `wsgate-demo` on http://127.0.0.1:8090/ with any
//! wsgate client and send a REQUEST to `app.greet`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use wsgate_server::Gateway;
use wsgate_server::config::Config;
use wsgate_server::handler::{HandlerError, handler_fn};
use wsgate_server::keys::DataDir;
use wsgate_server::store::{
    CredentialStore as _, MemoryCredentialStore, MemoryStateStore, UserRecord,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data = tempfile::tempdir()?;
    let mut config = Config::default();
    config.data_dir = data.path().to_owned();

    // Your own code serves `app.greet`; `sensitive = true` means the client
    // must encrypt the request (and gets an encrypted answer).
    config.add_handler(
        "app.greet",
        true,
        handler_fn(|req| async move {
            if req.body.is_empty() {
                return Err(HandlerError::new(
                    "bad_request",
                    "send your name as the body",
                ));
            }
            let name = String::from_utf8_lossy(&req.body);
            Ok(format!("hello {name}, you are logged in as {}", req.user).into_bytes())
        }),
    )?;

    let (keys, secret) = DataDir::new(data.path()).load_or_init(&mut rand::rng())?;
    let users = Arc::new(MemoryCredentialStore::new());
    let salt = b"example salt 16b".to_vec();
    let verifier = wsgate_proto::scram::derive_verifier("wsgate-demo", &salt, 4096)?;
    users
        .add_user(UserRecord::from_verifier("demo", salt, 4096, &verifier))
        .await?;

    let gateway = Gateway::new(
        config,
        keys,
        secret,
        users,
        Arc::new(MemoryStateStore::new()),
    );
    // The existing application's routes, plus everything wsgate serves.
    let app = Router::new()
        .route("/hello", get(|| async { "the existing service\n" }))
        .merge(gateway.router());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:8090").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
