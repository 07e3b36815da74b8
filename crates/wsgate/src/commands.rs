//! The subcommands. Each resolves its arguments into validated settings,
//! then acts; errors carry what to do next.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use wsgate_proto::saslprep;
use wsgate_proto::scram;
use wsgate_server::Gateway;
use wsgate_server::config::{Config, FileConfig};
use wsgate_server::keys::DataDir;
use wsgate_server::store::{self as store, CredentialStore, StoreError, UserRecord};

use crate::args::{Cli, Command, DataDirArgs, ServeArgs, UserCommand};

use crate::demo::{DEMO_PASSWORD, DEMO_USER, DemoOverlay, refuse_leftover_demo_account};

/// `println!` that never panics: a gateway whose stdout reader went away
/// (a supervisor, a bench, `wsgate serve | head -1`) must keep serving, and
/// `println!` panics on a closed pipe. What is lost is only the message.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

pub(crate) fn run(cli: Cli) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::User(cmd) => user(cmd).await,
            Command::Keygen(dir) => keygen(&dir),
            Command::Bench(args) => wsgate_bench::run(*args),
        }
    })
}

fn load_config(path: Option<&Path>) -> Result<Config> {
    match path {
        Some(p) => Ok(Config::from_file(FileConfig::from_path(p)?)?),
        None => Ok(Config::default()),
    }
}

fn resolve_data_dir(args: &DataDirArgs) -> Result<(Config, PathBuf)> {
    let config = load_config(args.config.as_deref())?;
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| config.data_dir.clone());
    Ok((config, dir))
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn serve(args: ServeArgs) -> Result<ExitCode> {
    init_logging();
    let mut config = load_config(args.config.as_deref())?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    config.demo = args.demo;
    if config.demo && config.channels.lookup(crate::demo::DEMO_ROOM).is_none() {
        // The demo page's "who is online" panel (protocol.md §6.6).
        config.channels.push(crate::demo::demo_channel()?);
    }

    let data = DataDir::new(&config.data_dir);
    let (keys, secret) = data
        .load_or_init(&mut rand::rng())
        .with_context(|| format!("preparing the data directory {}", config.data_dir.display()))?;
    let credentials = store::open_credentials(&config.credentials, &data.credentials_path())
        .await
        .with_context(|| {
            format!(
                "opening the credential store ({})",
                store::redact_url(&config.credentials)
            )
        })?;
    let state: Arc<dyn store::StateStore> = if config.state == "memory" {
        // One node: sessions survive a restart through a journal beside the key.
        Arc::new(
            store::PersistentSessions::open(&data.sessions_path(), store::MemoryStateStore::new())
                .await?,
        )
    } else {
        store::open_state(&config.state).await.with_context(|| {
            format!(
                "opening the state store ({})",
                store::redact_url(&config.state)
            )
        })?
    };
    // The demo account lives in memory while --demo runs, never in the
    // store; a store that still holds it (an older version put it there)
    // is refused without --demo.
    let credentials: Arc<dyn CredentialStore> = if config.demo {
        Arc::new(DemoOverlay::new(credentials).await?)
    } else {
        refuse_leftover_demo_account(credentials.as_ref()).await?;
        credentials
    };
    let listener = tokio::net::TcpListener::bind(config.listen).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => anyhow::anyhow!(
            "{} is already in use: stop the other process or pick another address with --listen 127.0.0.1:8081",
            config.listen
        ),
        std::io::ErrorKind::PermissionDenied => anyhow::anyhow!(
            "not allowed to listen on {}: ports below 1024 need privileges; use a port like 8080",
            config.listen
        ),
        _ => anyhow::anyhow!("cannot listen on {}: {e}", config.listen),
    })?;
    let addr = listener.local_addr()?;
    let fingerprint = keys.current().fingerprint().to_owned();
    let demo = config.demo;
    let metrics_listen = config.metrics_listen;
    let role = if config.auth_module {
        "authentication module on"
    } else {
        "authentication module off"
    };
    let backends = format!(
        "state: {}, credentials: {}",
        store::redact_url(&config.state),
        store::redact_url(&config.credentials)
    );
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let gateway = Gateway::new(config, keys, secret, credentials, state);
    say!(
        "wsgate {} listening on {scheme}://{addr}",
        env!("CARGO_PKG_VERSION")
    );
    say!("  server key fingerprint: {fingerprint}");
    say!("  {role}; {backends}");
    if demo {
        say!("  demo: open {scheme}://{addr}/ and log in as {DEMO_USER} / {DEMO_PASSWORD}");
    }
    let metrics = match metrics_listen {
        None => None,
        Some(at) => match tokio::net::TcpListener::bind(at).await {
            Ok(l) => {
                say!("  metrics: http://{}/metrics", l.local_addr()?);
                Some(tokio::spawn(gateway.serve_metrics(l)))
            }
            // The default port taken (a second gateway on this host): run
            // without metrics rather than not at all, and say so.
            Err(e) if at == Config::default().metrics_listen.unwrap_or(at) => {
                tracing::warn!(address = %at, error = %e, "/metrics is not served: set metrics_listen to a free address, or \"off\"");
                None
            }
            Err(e) => bail!(
                "cannot listen on metrics_listen {at}: {e}; pick a free address or set metrics_listen = \"off\""
            ),
        },
    };
    let served = gateway.serve(listener, shutdown_signal()).await;
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    served?;
    say!("wsgate stopped");
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            let _ = ctrl_c.await;
            return;
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}

pub(crate) fn make_record(name: &str, password: &str, iterations: u32) -> Result<UserRecord> {
    let salt: [u8; 16] = {
        use rand::Rng as _;
        let mut s = [0u8; 16];
        rand::rng().fill_bytes(&mut s);
        s
    };
    let verifier = scram::derive_verifier(password, &salt, iterations)
        .map_err(|e| anyhow::anyhow!("password not allowed: {e}"))?;
    Ok(UserRecord {
        name: name.to_owned(),
        salt: salt.to_vec(),
        iterations,
        stored_key: verifier.stored_key,
        server_key: *verifier.server_key,
    })
}

/// The credential store of `config` (SQLite in `dir` unless the config
/// names another), for the `user` subcommands.
async fn open_credentials(config: &Config, dir: &Path) -> Result<Arc<dyn CredentialStore>> {
    let data = DataDir::new(dir);
    store::open_credentials(&config.credentials, &data.credentials_path())
        .await
        .with_context(|| {
            format!(
                "opening the credential store ({})",
                store::redact_url(&config.credentials)
            )
        })
}

fn read_password(from_stdin: bool) -> Result<zeroize::Zeroizing<String>> {
    let password = if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        zeroize::Zeroizing::new(line.trim_end_matches(['\n', '\r']).to_owned())
    } else {
        let first = zeroize::Zeroizing::new(rpassword::prompt_password("Password: ").context(
            "cannot prompt for a password (no terminal?); pipe it in with --password-stdin",
        )?);
        let again = zeroize::Zeroizing::new(rpassword::prompt_password("Repeat password: ")?);
        if *first != *again {
            bail!("the passwords differ; nothing was changed");
        }
        first
    };
    if password.is_empty() {
        bail!("the password is empty; nothing was changed");
    }
    Ok(password)
}

async fn user(cmd: UserCommand) -> Result<ExitCode> {
    match cmd {
        UserCommand::Add {
            name,
            dir,
            password_stdin,
            iterations,
        } => {
            let (config, dir) = resolve_data_dir(&dir)?;
            let stored = saslprep::prepare_stored(&name)
                .map_err(|e| anyhow::anyhow!("user name {name:?} is not allowed: {e}"))?;
            let iterations = iterations.unwrap_or(config.login.iterations);
            if !(scram::MIN_ITERATIONS..=scram::MAX_ITERATIONS).contains(&iterations) {
                bail!(
                    "--iterations must be between {} and {}",
                    scram::MIN_ITERATIONS,
                    scram::MAX_ITERATIONS
                );
            }
            DataDir::new(&dir).ensure_exists()?;
            let store = open_credentials(&config, &dir).await?;
            if store.get_user(&stored).await?.is_some() {
                bail!(
                    "user {stored:?} already exists; remove it first with `wsgate user remove {stored}`"
                );
            }
            let password = read_password(password_stdin)?;
            let record =
                tokio::task::spawn_blocking(move || make_record(&stored, &password, iterations))
                    .await??;
            let stored = record.name.clone();
            match store.add_user(record).await {
                Ok(()) => {}
                Err(StoreError::UserExists(_)) => bail!("user {stored:?} already exists"),
                Err(e) => return Err(e.into()),
            }
            say!("added user {stored:?} ({iterations} iterations)");
        }
        UserCommand::List { dir } => {
            let (config, dir) = resolve_data_dir(&dir)?;
            if config.credentials == "sqlite" && !DataDir::new(&dir).credentials_path().exists() {
                bail!(
                    "no user database in {}; add a user with `wsgate user add NAME --data-dir {}`",
                    dir.display(),
                    dir.display()
                );
            }
            for name in open_credentials(&config, &dir).await?.list_users().await? {
                say!("{name}");
            }
        }
        UserCommand::Remove { name, dir } => {
            let (config, dir) = resolve_data_dir(&dir)?;
            let stored = saslprep::prepare_stored(&name).unwrap_or(name);
            if !open_credentials(&config, &dir)
                .await?
                .remove_user(&stored)
                .await?
            {
                bail!("no user {stored:?}; see `wsgate user list`");
            }
            say!("removed user {stored:?}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn keygen(args: &DataDirArgs) -> Result<ExitCode> {
    let (_, dir) = resolve_data_dir(args)?;
    // Creates the directory and the server secret on first use.
    let key = DataDir::new(&dir).generate_key(&mut rand::rng())?;
    say!(
        "new current key {} (fingerprint {})",
        key.kid(),
        key.fingerprint()
    );
    say!("older keys stay accepted; restart the gateway to serve the new key");
    Ok(ExitCode::SUCCESS)
}
