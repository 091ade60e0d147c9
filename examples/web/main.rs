//! Web: an axum service for users with ETags from versions, If-Match updates,
//! exactly-once PUT and POST with the `Idempotency-Key` header, and the cache statistics
//! as JSON. `GET /users/{id}` takes a cached user inline on the worker thread
//! (`Db::find_async`, diesel-l2's `tokio` feature); misses and writes run on tokio's
//! blocking pool.
//!
//! ```text
//! cargo run --features tokio --example web                # serves on 127.0.0.1:3000 (SQLite)
//! cargo run --features tokio --example web -- --listen 127.0.0.1:8080
//! cargo run --features tokio --example web -- --blocking  # every GET through spawn_blocking,
//!                                                         # as before the async front (to compare)
//! cargo run --features tokio --example web -- --smoke     # serves on a free port, runs a client
//!                                                         # session against itself, exits
//! DIESEL_L2_EXAMPLE_BACKEND=postgres DIESEL_L2_PG_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo run --example web --features postgres,tokio   # a fresh PostgreSQL schema
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
//! # Exactly-once: send it twice (a lost response); the second is the recorded 201,
//! # with Idempotent-Replayed: true, and one user exists
//! curl -i -X POST localhost:3000/users -H 'Idempotency-Key: 7c1e-signup' \
//!      -d '{"id":4,"email":"alan@example.com","name":"Alan"}'      # 201, Location: /users/4
//! curl -i -X POST localhost:3000/users -d '{"id":4,"email":"alan@example.com","name":"Alan"}'
//!                                                                   # 409: no key, user 4 exists
//! curl -i -X POST localhost:3000/users -H 'Idempotency-Key: 7c1e-signup' \
//!      -d '{"id":5,"email":"alan@example.com","name":"Alan"}'      # 422: the key named another body
//! curl -i -X PUT localhost:3000/users/4 -H 'If-Match: "1"' -H 'Idempotency-Key: 9f2a' \
//!      -d '{"bio":"computing machinery"}'                           # 200, ETag: "2"; again: the
//!                                                                   # same 200, replayed, not 412
//! curl -s localhost:3000/stats                                      # cache counters
//! ```
//!
//! A request with an `Idempotency-Key` runs once: its response (status, ETag, `Location`,
//! body) is recorded with its writes in one transaction, and the same key with the same
//! method, path and body gets that response again, marked `Idempotent-Replayed: true`,
//! however often it is sent and even while the first one is still running. A replay is
//! recognised by the key, never by comparing content (C6): without a key, a resent PUT
//! from an old ETag is 412 and a resent POST is 409.
//!
//! APIs: `Db::builder().cache::<E>()`, `Db::find_async` (a hit inline, a miss on the
//! blocking pool), `Db::spawn_blocking` for the writes, `Db::retry` with `Tx::get` /
//! `Tx::update` / `Tx::insert` (versions as ETags, a stale version as 412),
//! `Db::retry_once` with `Operation::new(key).fingerprint(hash)` and `Outcome::is_replay`
//! (the `Idempotency-Key`), `Error::OperationMismatch` as 422, `Db::stats` (serialized
//! with serde).

// Shared backend selection (examples/common/mod.rs), used through `on_selected_backend!`.
#[macro_use]
#[path = "../common/mod.rs"]
mod common;
mod app;

use std::net::SocketAddr;

use diesel_l2::{CachedOps, Db, OperationLog};
use serde_json::{json, Value};

use app::User;
use common::{BoxError, ExampleDb};

/// Command-line options.
struct Args {
    listen: SocketAddr,
    smoke: bool,
    reads: app::Reads,
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
    let mut reads = app::Reads::Inline;
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
            "--blocking" => reads = app::Reads::Blocking,
            other => {
                return Err(format!(
                    "unknown argument {other:?}; expected --listen ADDR, --smoke and/or --blocking"
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
        reads,
    })
}

fn run<C>(ex: ExampleDb<C>, args: Args) -> Result<(), BoxError>
where
    C: OperationLog,
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
        println!(
            "listening on http://{addr} (GET /users/{{id}}: {:?})",
            args.reads
        );
        if !args.smoke {
            println!("try: curl -i http://{addr}/users/1   (Ctrl-C stops)");
            axum::serve(listener, app::app_with(db, args.reads))
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
            axum::serve(listener, app::app_with(db, args.reads))
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

    let (etag, ..) = expect("GET /users/1", agent.get(&user).call()?, 200)?;
    expect(
        "PUT /users/1 without If-Match",
        agent
            .put(&user)
            .send_json(json!({ "bio": "first programmer" }))?,
        428,
    )?;
    let (etag2, ..) = expect(
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

    // A PUT with an Idempotency-Key, sent twice as a client does when a response is lost:
    // the second gets the recorded answer, although its If-Match is stale by then.
    let edit = json!({ "name": "Ada King" });
    let put_once = || {
        agent
            .put(&user)
            .header("If-Match", &etag2)
            .header("Idempotency-Key", "smoke-put-1")
            .send_json(&edit)
    };
    let (etag3, first, _) = expect("PUT /users/1 with Idempotency-Key", put_once()?, 200)?;
    let (again, body, replayed) = expect("the same PUT again", put_once()?, 200)?;
    if again != etag3 || body != first || !replayed {
        return Err(format!(
            "the resent PUT was not a replay: ETag {again} (first {etag3}), replayed: {replayed}"
        )
        .into());
    }

    // A new user, created once however often the request is sent.
    let alan = json!({ "id": 4, "email": "alan@example.com", "name": "Alan" });
    let post_once = |body: &Value| {
        agent
            .post(format!("{base}/users"))
            .header("Idempotency-Key", "smoke-signup-4")
            .send_json(body)
    };
    let (_, created, _) = expect("POST /users with Idempotency-Key", post_once(&alan)?, 201)?;
    let (_, body, replayed) = expect("the same POST again", post_once(&alan)?, 201)?;
    if body != created || !replayed {
        return Err(
            format!("the resent POST was not a replay: {body}, replayed: {replayed}").into(),
        );
    }
    expect(
        "the same POST without the key",
        agent.post(format!("{base}/users")).send_json(&alan)?,
        409,
    )?;
    expect(
        "the key with another body",
        post_once(&json!({ "id": 5, "email": "alan@example.com", "name": "Alan" }))?,
        422,
    )?;
    let (etag4, ..) = expect(
        "GET /users/4",
        agent.get(format!("{base}/users/4")).call()?,
        200,
    )?;
    if etag4 != "\"1\"" {
        return Err(format!("user 4 was written more than once: ETag {etag4}").into());
    }

    expect(
        "GET /users/42",
        agent.get(format!("{base}/users/42")).call()?,
        404,
    )?;
    let (_, stats, _) = expect(
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

/// Prints one exchange and fails unless the status is `want`; returns the ETag, the body
/// and whether the response was a replay (`Idempotent-Replayed: true`).
fn expect(
    what: &str,
    mut resp: ureq::http::Response<ureq::Body>,
    want: u16,
) -> Result<(String, Value, bool), BoxError> {
    let status = resp.status().as_u16();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let etag = header("etag");
    let replayed = header("idempotent-replayed") == "true";
    let body: Value = resp.body_mut().read_json()?;
    let mark = if replayed { " (replayed)" } else { "" };
    println!("{what}: {status} {etag}{mark} {body}");
    if status != want {
        return Err(format!("{what}: expected {want}, got {status}").into());
    }
    Ok((etag, body, replayed))
}
