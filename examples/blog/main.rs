//! Blog: an axum service with users, posts and comments as most diesel apps have them —
//! database-generated ids, `NewX` insertable structs, `AsChangeset` partial updates,
//! unique emails and slugs, `updated_at` set by the app — on diesel-l2: reads by id, email
//! and slug from the cache, writes through it at commit, ETags from versions, exactly-once
//! POSTs with `Idempotency-Key`, and the change feed so that writes by any other client
//! reach the cache. `ADOPTING.md` counts the lines that differ from the same app on plain
//! diesel.
//!
//! ```text
//! cargo run --features tokio --example blog                # serves on 127.0.0.1:3000 (SQLite)
//! cargo run --features tokio --example blog -- --listen 127.0.0.1:8080
//! cargo run --features tokio --example blog -- --smoke     # serves on a free port, runs a client
//!                                                          # session against itself, exits
//! DIESEL_L2_EXAMPLE_BACKEND=postgres DIESEL_L2_PG_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo run --features postgres,tokio --example blog   # a fresh PostgreSQL schema
//! DIESEL_L2_EXAMPLE_BACKEND=mysql DIESEL_L2_MYSQL_URL=mysql://root@127.0.0.1:3306/test \
//!     cargo run --features mysql,tokio --example blog      # a fresh MariaDB database
//! ```
//!
//! A session (routes in `examples/blog/app.rs`; `tests/web_example.rs` serves the same
//! router and drives it over HTTP on every backend):
//!
//! ```text
//! curl -i localhost:3000/users -H 'Idempotency-Key: 5b1c' \
//!      -d '{"email":"ada@example.com","name":"Ada"}'         # 201, Location: /users/1
//! curl -i localhost:3000/users -H 'Idempotency-Key: 5b1c' \
//!      -d '{"email":"ada@example.com","name":"Ada"}'         # the same 201, Idempotent-Replayed: true
//! curl -i localhost:3000/posts -d '{"author_id":1,"title":"Hello, World","body":"First!"}'
//!                                                            # 201, slug "hello-world", ETag: "1"
//! curl -i localhost:3000/posts/by-slug/hello-world           # 200, from the cache
//! curl -i -X PATCH localhost:3000/posts/1 -d '{"title":"Hi"}'                   # 428: no If-Match
//! curl -i -X PATCH localhost:3000/posts/1 -H 'If-Match: "1"' -d '{"title":"Hi"}' # 200, ETag: "2"
//! curl -i -X PATCH localhost:3000/posts/1 -H 'If-Match: "1"' -d '{"body":"x"}'   # 412
//! curl -i localhost:3000/posts/1/comments -d '{"author_id":1,"body":"Nice"}'    # 201
//! curl -i -X DELETE localhost:3000/posts/1                   # the post and its comments
//! curl -s localhost:3000/stats                               # cache counters
//! ```
//!
//! APIs: `#[derive(Cached)]` with `#[cache(unique)]`, `Db::builder().cache::<E>().listen(..)`,
//! `Db::find_async` / `get_async` / `find_by`, `Db::transaction_async`, `retry_async`,
//! `retry_once_async` with `Operation::new(key).fingerprint(hash)`, `Tx::insert_new`,
//! `update_changes`, `update_changes_unversioned`, `update_where`, `delete_where`,
//! `find_by`, `Db::stats`.

// Shared backend selection (examples/common/mod.rs), used through `on_selected_backend!`.
#[macro_use]
#[path = "../common/mod.rs"]
mod common;
mod app;

use std::net::SocketAddr;

use diesel_l2::ListenConfig;
use serde_json::{json, Value};

use app::Backend;
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
    // The blog's own schema (examples/blog/migrations), in a fresh database.
    on_selected_backend!(migrations = app::migrations; "blog", 16, run, args)
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

fn run<C: Backend>(ex: ExampleDb<C>, args: Args) -> Result<(), BoxError> {
    println!("database: {}", ex.location);
    // The change feed (installed by the migrations) tells this process about writes made
    // by other processes and SQL clients.
    let mut listen = ListenConfig::new(ex.url.clone());
    if let Some(schema) = &ex.schema {
        listen = listen.schema(schema.clone());
    }
    let db = C::db(ex.pool.clone(), Some(listen))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        let addr = listener.local_addr()?;
        println!("listening on http://{addr}");
        if !args.smoke {
            println!("try: curl -i http://{addr}/users -d '{{\"email\":\"ada@example.com\",\"name\":\"Ada\"}}'   (Ctrl-C stops)");
            axum::serve(listener, C::app(db))
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
            axum::serve(listener, C::app(db))
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
    let url = |path: &str| format!("{base}{path}");

    // A user, created once however often the request is sent with its key.
    let ada = json!({ "email": "ada@example.com", "name": "Ada" });
    let signup = || {
        agent
            .post(url("/users"))
            .header("Idempotency-Key", "smoke-signup-ada")
            .send_json(&ada)
    };
    let (_, user, _) = expect("POST /users with Idempotency-Key", signup()?, 201)?;
    let (_, again, replayed) = expect("the same POST again", signup()?, 201)?;
    if again != user || !replayed {
        return Err(format!("the resent POST was not a replay: {again}").into());
    }
    let author = user["id"].as_i64().ok_or("POST /users: no id")?;
    expect(
        "the email again, without a key",
        agent.post(url("/users")).send_json(&ada)?,
        409,
    )?;
    expect(
        "GET /users/by-email/ada@example.com",
        agent.get(url("/users/by-email/ada@example.com")).call()?,
        200,
    )?;

    // A post: the slug comes from the title; the same title again is 409.
    let hello = json!({ "author_id": author, "title": "Hello, World", "body": "First!" });
    let (etag, post, _) = expect(
        "POST /posts",
        agent.post(url("/posts")).send_json(&hello)?,
        201,
    )?;
    if post["slug"] != "hello-world" {
        return Err(format!("POST /posts: slug {} from \"Hello, World\"", post["slug"]).into());
    }
    let post_url = url(&format!("/posts/{}", post["id"]));
    expect(
        "POST /posts with a taken slug",
        agent.post(url("/posts")).send_json(&hello)?,
        409,
    )?;
    expect(
        "GET /posts/by-slug/hello-world",
        agent.get(url("/posts/by-slug/hello-world")).call()?,
        200,
    )?;

    // Partial updates with If-Match.
    expect(
        "PATCH without If-Match",
        agent.patch(&post_url).send_json(json!({ "title": "Hi" }))?,
        428,
    )?;
    let (etag2, patched, _) = expect(
        &format!("PATCH with If-Match: {etag}"),
        agent
            .patch(&post_url)
            .header("If-Match", &etag)
            .send_json(json!({ "title": "Hi" }))?,
        200,
    )?;
    if etag2 == etag || patched["body"] != "First!" {
        return Err(format!("PATCH changed more or less than the title: {patched}").into());
    }
    expect(
        &format!("PATCH with the stale If-Match: {etag}"),
        agent
            .patch(&post_url)
            .header("If-Match", &etag)
            .send_json(json!({ "body": "x" }))?,
        412,
    )?;

    // A comment, then the post deleted with it.
    let (_, comment, _) = expect(
        "POST a comment",
        agent
            .post(format!("{post_url}/comments"))
            .send_json(json!({ "author_id": author, "body": "Nice" }))?,
        201,
    )?;
    let comment_url = url(&format!("/comments/{}", comment["id"]));
    expect("GET the comment", agent.get(&comment_url).call()?, 200)?;
    expect("DELETE the post", agent.delete(&post_url).call()?, 200)?;
    expect("GET the deleted post", agent.get(&post_url).call()?, 404)?;
    expect(
        "GET its deleted comment",
        agent.get(&comment_url).call()?,
        404,
    )?;

    let (_, stats, _) = expect("GET /stats", agent.get(url("/stats")).call()?, 200)?;
    let hits: u64 = stats["regions"]
        .as_array()
        .ok_or("GET /stats: no regions")?
        .iter()
        .filter_map(|r| r["hits"].as_u64())
        .sum();
    if hits == 0 {
        return Err(format!("GET /stats: no cache hits in {stats}").into());
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
