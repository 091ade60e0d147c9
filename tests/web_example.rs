//! The web example's service (`examples/web/app.rs`, included below) served on
//! `127.0.0.1:0` and driven over real TCP with a real HTTP client (ureq), on every
//! configured backend: ETags from versions, If-Match rules (428, 412, 400), read-your-writes
//! after a PUT, a repeated PUT answered with the ETag it produced, two clients racing on one
//! ETag (exactly one wins), and the statistics as JSON.

mod common;

// Examples cannot be imported, so the router's source is compiled into this test.
#[path = "../examples/web/app.rs"]
mod app;

use std::net::SocketAddr;
use std::sync::{mpsc, Barrier};
use std::thread::{self, JoinHandle};

use diesel::r2d2::R2D2Connection;
use diesel_l2::{CachedOps, Db};
use serde_json::{json, Value};

/// The example's router on a tokio runtime of its own, on a free port.
struct Server {
    base: String,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Seeds users 1 to 3 (version 1) and serves them.
    fn start<C>(t: &common::TestDb<C>) -> Server
    where
        C: R2D2Connection + 'static,
        app::User: CachedOps<C>,
    {
        let db = Db::builder(t.pool.clone())
            .cache::<app::User>()
            .build()
            .expect("valid region settings");
        app::seed(&db).expect("seed users");
        let (addr_tx, addr_rx) = mpsc::channel::<SocketAddr>();
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind 127.0.0.1:0");
                addr_tx
                    .send(listener.local_addr().expect("bound address"))
                    .expect("the test waits for the address");
                axum::serve(listener, app::app(db))
                    // The sender is dropped when the test ends; `recv` then returns.
                    .with_graceful_shutdown(async move {
                        let _ = tokio::task::spawn_blocking(move || stopped.recv()).await;
                    })
                    .await
                    .expect("serve");
            });
        });
        let addr = addr_rx
            .recv()
            .expect("the server thread reports its address");
        Server {
            base: format!("http://{addr}"),
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Stop and join, so the `Db` is gone before the test database is dropped.
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() && !thread::panicking() {
                panic!("the server thread panicked");
            }
        }
    }
}

/// One HTTP client; 4xx and 5xx are answers to inspect, not errors.
fn client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

#[derive(Debug)]
struct Reply {
    status: u16,
    etag: Option<String>,
    body: Value,
}

fn reply(resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    let mut resp = resp.expect("an HTTP response");
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("application/json"),
        "every response is JSON, got {content_type:?}"
    );
    Reply {
        status: resp.status().as_u16(),
        etag: resp
            .headers()
            .get("etag")
            .map(|v| v.to_str().expect("ASCII ETag").to_string()),
        body: resp.body_mut().read_json().expect("a JSON body"),
    }
}

fn get(agent: &ureq::Agent, url: &str) -> Reply {
    reply(agent.get(url).call())
}

fn put(agent: &ureq::Agent, url: &str, if_match: Option<&str>, body: Value) -> Reply {
    let mut req = agent.put(url);
    if let Some(tag) = if_match {
        req = req.header("If-Match", tag);
    }
    reply(req.send_json(body))
}

/// An error reply: the status, and a JSON body whose `error` says something.
fn assert_error(r: &Reply, status: u16, mentions: &str) {
    assert_eq!(r.status, status, "{r:?}");
    let message = r.body["error"].as_str().expect("an error message");
    assert!(
        message.contains(mentions),
        "{message:?} should mention {mentions:?}"
    );
}

backend_tests! {
    fn get_serves_json_with_the_version_as_a_strong_etag(t) {
        let server = Server::start(t);
        let http = client();
        let r = get(&http, &server.url("/users/1"));
        assert_eq!(r.status, 200);
        assert_eq!(r.etag.as_deref(), Some("\"1\""));
        assert_eq!(
            r.body,
            json!({ "id": 1, "version": 1, "email": "ada@example.com", "name": "Ada", "bio": null })
        );
        assert_error(&get(&http, &server.url("/users/99")), 404, "no user 99");
        assert_error(&get(&http, &server.url("/users/ada")), 400, "integers");
        assert_error(&get(&http, &server.url("/nowhere")), 404, "no such route");
    }

    fn put_needs_if_match_and_answers_with_the_new_etag(t) {
        let server = Server::start(t);
        let http = client();
        let ada = server.url("/users/1");
        let change = json!({ "bio": "first programmer" });

        assert_error(&put(&http, &ada, None, change.clone()), 428, "If-Match");
        assert_error(&put(&http, &ada, Some("1"), change.clone()), 400, "quoted");
        assert_error(&put(&http, &ada, Some("\"one\""), change.clone()), 400, "If-Match");
        // Weak tags never match under If-Match, even when the version is the current one.
        assert_error(&put(&http, &ada, Some("W/\"1\""), change.clone()), 412, "weak");
        assert_error(&put(&http, &ada, Some("\"1\""), json!({ "age": 3 })), 400, "unknown field");
        assert_error(&put(&http, &ada, Some("\"1\""), json!("bio")), 400, "JSON object");
        assert_error(&put(&http, &server.url("/users/99"), Some("\"1\""), change.clone()), 404, "no user 99");
        assert_eq!(get(&http, &ada).etag.as_deref(), Some("\"1\""), "rejected PUTs change nothing");

        let r = put(&http, &ada, Some("\"1\""), change.clone());
        assert_eq!((r.status, r.etag.as_deref()), (200, Some("\"2\"")), "{r:?}");
        assert_eq!((r.body["version"].as_i64(), r.body["bio"].as_str()), (Some(2), Some("first programmer")));
        assert_eq!(r.body["name"], "Ada", "fields not sent keep their value");

        // Read-your-writes: the next GET (served by the cache) has the new version.
        let r = get(&http, &ada);
        assert_eq!((r.etag.as_deref(), r.body["bio"].as_str()), (Some("\"2\""), Some("first programmer")));

        // An edit of version 1 now fails and says which version is current.
        let r = put(&http, &ada, Some("\"1\""), json!({ "name": "Countess" }));
        assert_error(&r, 412, "version 2");
        assert_eq!(r.body["current_version"], 2);
        assert_eq!(get(&http, &ada).body["name"], "Ada");

        // A list matches when it holds the current version; `null` clears the bio.
        let r = put(&http, &ada, Some("\"1\", W/\"2\", \"2\""), json!({ "bio": null }));
        assert_eq!((r.status, r.etag.as_deref()), (200, Some("\"3\"")), "{r:?}");
        assert_eq!(r.body["bio"], Value::Null);

        // `*` overwrites whatever version is current.
        let r = put(&http, &ada, Some("*"), json!({ "name": "Ada King" }));
        assert_eq!((r.status, r.etag.as_deref()), (200, Some("\"4\"")), "{r:?}");

        // A unique email taken by another user is a 409, and changes nothing.
        assert_error(&put(&http, &server.url("/users/2"), Some("\"1\""), json!({ "email": "ada@example.com" })), 409, "another user");
        assert_eq!(get(&http, &server.url("/users/2")).etag.as_deref(), Some("\"1\""));
    }

    fn a_repeated_full_put_gets_the_etag_it_produced_not_412(t) {
        let server = Server::start(t);
        let http = client();
        let grace = server.url("/users/2");
        let full = json!({ "email": "grace@navy.mil", "name": "Grace Hopper", "bio": "COBOL" });
        let first = put(&http, &grace, Some("\"1\""), full.clone());
        assert_eq!((first.status, first.etag.as_deref()), (200, Some("\"2\"")), "{first:?}");
        // The client lost the response and sends the same request again: already applied,
        // nothing written twice.
        let again = put(&http, &grace, Some("\"1\""), full.clone());
        assert_eq!((again.status, again.etag.as_deref()), (200, Some("\"2\"")), "{again:?}");
        assert_eq!(again.body, first.body);
        assert_eq!(get(&http, &grace).etag.as_deref(), Some("\"2\""));

        // Other content from the same old version is a real conflict.
        let other = json!({ "email": "grace@navy.mil", "name": "Amazing Grace", "bio": "COBOL" });
        let r = put(&http, &grace, Some("\"1\""), other);
        assert_error(&r, 412, "version 2");
        assert_eq!(r.body["current_version"], 2);
        // So is a partial repeat: its result depends on fields of version 1 it did not send.
        assert_error(&put(&http, &grace, Some("\"1\""), json!({ "bio": "COBOL" })), 412, "version 2");
        assert_eq!(get(&http, &grace).body["name"], "Grace Hopper");
    }

    fn two_clients_racing_on_one_etag_exactly_one_wins(t) {
        let server = Server::start(t);
        let edsger = server.url("/users/3");
        let clients = [client(), client()];
        for round in 1..=10i64 {
            let etag = format!("\"{round}\"");
            let start = Barrier::new(2);
            let replies: Vec<(usize, Reply)> = thread::scope(|s| {
                let racers: Vec<_> = clients
                    .iter()
                    .enumerate()
                    .map(|(i, http)| {
                        let (start, edsger, etag) = (&start, &edsger, &etag);
                        s.spawn(move || {
                            let change = json!({ "name": format!("racer {i}, round {round}") });
                            start.wait();
                            (i, put(http, edsger, Some(etag), change))
                        })
                    })
                    .collect();
                racers.into_iter().map(|r| r.join().expect("racer thread")).collect()
            });
            let winners: Vec<_> = replies.iter().filter(|(_, r)| r.status == 200).collect();
            let losers: Vec<_> = replies.iter().filter(|(_, r)| r.status == 412).collect();
            assert_eq!((winners.len(), losers.len()), (1, 1), "round {round}: {replies:?}");
            let (winner, won) = winners[0];
            let next = format!("\"{}\"", round + 1);
            assert_eq!(won.etag.as_deref(), Some(next.as_str()), "round {round}");
            assert_eq!(losers[0].1.body["current_version"], round + 1, "round {round}");
            // The winner's write is what every later read sees.
            let r = get(&clients[0], &edsger);
            assert_eq!(r.etag.as_deref(), Some(next.as_str()), "round {round}");
            assert_eq!(r.body["name"], format!("racer {winner}, round {round}"));
        }
    }

    fn stats_are_served_as_json(t) {
        let server = Server::start(t);
        let http = client();
        let ada = server.url("/users/1");
        for _ in 0..3 {
            assert_eq!(get(&http, &ada).status, 200);
        }
        // Every field from version 0, which never held this content: the versioned UPDATE
        // runs and reports a conflict, counted by the region.
        let full = json!({ "email": "ada@lovelace.org", "name": "Ada", "bio": null });
        assert_error(&put(&http, &ada, Some("\"0\""), full), 412, "version 1");
        let r = get(&http, &server.url("/stats"));
        assert_eq!(r.status, 200);
        let users = &r.body["regions"][0];
        assert_eq!((users["region"].as_str(), users["table"].as_str()), (Some("users"), Some("users")), "{}", r.body);
        // Seeding put user 1 in the cache at commit, so all three GETs were hits.
        assert!(users["hits"].as_u64().expect("hits") >= 3, "{}", r.body);
        assert_eq!(users["conflicts"], 1, "{}", r.body);
        assert_eq!(users["commits_applied"], 3, "seeding three users: {}", r.body);
    }
}
