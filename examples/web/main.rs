//! Web: an axum service for users with ETags from versions, If-Match updates, and the
//! cache statistics as JSON. diesel-l2 is synchronous, so handlers call it through
//! `tokio::task::spawn_blocking`.
//!
//! ```text
//! cargo run --example web                           # serves on 127.0.0.1:3000 (SQLite)
//! cargo run --example web -- --listen 127.0.0.1:8080
//! cargo run --example web -- --smoke                # serves on a free port, runs a client
//!                                                   # session against itself, exits
//! DIESEL_L2_EXAMPLE_BACKEND=postgres DIESEL_L2_PG_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo run --example web --features postgres   # a fresh PostgreSQL schema
//! ```
//!
//! Routes (`examples/web/app.rs`; `tests/web_example.rs` serves the same router and drives
//! it over HTTP):
//!
//! ```text
//! curl -i localhost:3000/users/1                                    # 200, ETag: "1"
//! curl -i -X PUT localhost:3000/users/1 -d '{"bio":"first programmer"}'  # 428: no If-Match
//! curl -i -X PUT localhost:3000/users/1 -H 'If-Match: "1"' -d '{"bio":"first programmer"}'
//!                                                                   # 200, ETag: "2"
//! curl -i -X PUT localhost:3000/users/1 -H 'If-Match: "1"' -d '{"name":"Countess"}'
//!                                                                   # 412, current_version 2
//! curl -s localhost:3000/stats                                      # cache counters
//! ```
//!
//! APIs: `Db::builder().cache::<E>()`, `Db::find`, `Db::transaction` with `Tx::update`
//! (versions as ETags, `Error::Conflict` as 412, `already_applied` for repeated PUTs),
//! `Db::retry` (for `If-Match: *`), `Db::stats` (serialized with serde).

// Shared backend selection (examples/common/mod.rs), used through `on_selected_backend!`.
#[macro_use]
#[path = "../common/mod.rs"]
mod common;
mod app;

use std::net::SocketAddr;

use diesel::r2d2::R2D2Connection;
use diesel_l2::{CachedOps, Db};
use serde_json::{json, Value};

use app::User;
use common::{BoxError, ExampleDb};

/// Command-line options.
struct Args {
    listen: SocketAddr,
    smoke: bool,
}

fn main() -> std::process::ExitCode {
    common::exit_code(start())
}

fn start() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = parse_args()?;
    // The blocking pool runs one request per connection at a time; 16 is plenty here.
    on_selected_backend!("web", 16, run, args)
}

fn parse_args() -> Result<Args, BoxError> {
    let mut listen = None;
    let mut smoke = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => {
                let addr = args
                    .next()
                    .ok_or("--listen needs an address, e.g. 127.0.0.1:3000")?;
                listen = Some(addr.parse().map_err(|e| format!("--listen {addr}: {e}"))?);
            }
            "--smoke" => smoke = true,
            other => {
                return Err(format!(
                    "unknown argument {other:?}; expected --listen ADDR and/or --smoke"
                )
                .into())
            }
        }
    }
    let default = if smoke {
        "127.0.0.1:0"
    } else {
        "127.0.0.1:3000"
    };
    Ok(Args {
        listen: listen.unwrap_or_else(|| default.parse().expect("a valid socket address")),
        smoke,
    })
}

fn run<C>(ex: ExampleDb<C>, args: Args) -> Result<(), BoxError>
where
    C: R2D2Connection + 'static,
    User: CachedOps<C>,
{
    println!("database: {}", ex.location);
    let db = Db::builder(ex.pool.clone()).cache::<User>().build()?;
    app::seed(&db)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        let addr = listener.local_addr()?;
        println!("listening on http://{addr}");
        if !args.smoke {
            println!("try: curl -i http://{addr}/users/1   (Ctrl-C stops)");
            axum::serve(listener, app::app(db))
                .with_graceful_shutdown(async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await?;
            return Ok(());
        }
        // The shutdown signal is a plain channel, waited for on the blocking pool: dropping
        // the sender after the session stops the server.
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let server = tokio::spawn(async move {
            axum::serve(listener, app::app(db))
                .with_graceful_shutdown(async move {
                    let _ = tokio::task::spawn_blocking(move || stopped.recv()).await;
                })
                .await
        });
        let session = tokio::task::spawn_blocking(move || smoke(&format!("http://{addr}"))).await?;
        drop(stop);
        server.await??;
        session
    })
}

/// A short client session over real HTTP; each step checks its status code.
fn smoke(base: &str) -> Result<(), BoxError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let user = format!("{base}/users/1");

    let (etag, _) = expect("GET /users/1", agent.get(&user).call()?, 200)?;
    expect(
        "PUT /users/1 without If-Match",
        agent
            .put(&user)
            .send_json(json!({ "bio": "first programmer" }))?,
        428,
    )?;
    let (etag2, _) = expect(
        &format!("PUT /users/1 with If-Match: {etag}"),
        agent
            .put(&user)
            .header("If-Match", &etag)
            .send_json(json!({ "bio": "first programmer" }))?,
        200,
    )?;
    expect(
        &format!("PUT /users/1 with the stale If-Match: {etag}"),
        agent
            .put(&user)
            .header("If-Match", &etag)
            .send_json(json!({ "name": "Countess" }))?,
        412,
    )?;
    // A PUT naming every field, sent twice as a client does when a response is lost.
    let full = json!({ "email": "ada@lovelace.org", "name": "Ada", "bio": "first programmer" });
    let (etag3, _) = expect(
        &format!("PUT /users/1 (every field) with If-Match: {etag2}"),
        agent
            .put(&user)
            .header("If-Match", &etag2)
            .send_json(&full)?,
        200,
    )?;
    let (again, _) = expect(
        "the same PUT again",
        agent
            .put(&user)
            .header("If-Match", &etag2)
            .send_json(&full)?,
        200,
    )?;
    if again != etag3 {
        return Err(format!("the repeated PUT wrote again: ETag {again}, first {etag3}").into());
    }
    expect(
        "GET /users/42",
        agent.get(format!("{base}/users/42")).call()?,
        404,
    )?;
    let (_, stats) = expect(
        "GET /stats",
        agent.get(format!("{base}/stats")).call()?,
        200,
    )?;
    if stats["regions"][0]["region"] != "users" {
        return Err(format!("GET /stats: no users region in {stats}").into());
    }
    println!("smoke session OK");
    Ok(())
}

/// Prints one exchange and fails unless the status is `want`; returns the ETag and body.
fn expect(
    what: &str,
    mut resp: ureq::http::Response<ureq::Body>,
    want: u16,
) -> Result<(String, Value), BoxError> {
    let status = resp.status().as_u16();
    let etag = resp
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body: Value = resp.body_mut().read_json()?;
    println!("{what}: {status} {etag} {body}");
    if status != want {
        return Err(format!("{what}: expected {want}, got {status}").into());
    }
    Ok((etag, body))
}
