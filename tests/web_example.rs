//! The web example's service (`examples/web/app.rs`, included below) served on
//! `127.0.0.1:0` and driven over real TCP with a real HTTP client (ureq), on every
//! configured backend: ETags from versions, If-Match rules (428, 412, 400), read-your-writes
//! after a PUT, two clients racing on one ETag (exactly one wins), the statistics as JSON,
//! and `Idempotency-Key` (C6 in `../shared/DESIGN.md`: replays are recognised by an
//! operation id recorded in the writes' transaction, never by content): a PUT or POST
//! resent after a lost response gets the recorded response and writes nothing again, a
//! resend without a key is 412 / 409, a key reused for another request is 422, and two
//! concurrent requests with one key create one user.
//!
//! `mod blog` does the same for the blog example (`examples/blog/app.rs`, on its own
//! schema `examples/blog/migrations/`, with the change feed listening): generated ids,
//! 409 on a taken email or slug, partial PATCH with If-Match (428, 412), POSTs resent with
//! their `Idempotency-Key` (also two at the same moment), reads served by the cache, a
//! write by plain SQL reaching the cache through the change feed (C7), a post deleted
//! with its comments, and a bulk unpublish.

mod common;

// Examples cannot be imported, so the router's source is compiled into this test.
#[path = "../examples/web/app.rs"]
mod app;
#[path = "../examples/blog/app.rs"]
mod blog_app;

use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::sync::{mpsc, Barrier};
use std::thread::{self, JoinHandle};

use diesel::prelude::*;
use diesel_l2::{CachedOps, Db, OperationLog};
use serde_json::{json, Value};

/// The example's router on a tokio runtime of its own, on a free port.
struct Server {
    addr: SocketAddr,
    base: String,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Seeds users 1 to 3 (version 1) and serves them, GET reading inline.
    fn start<C>(t: &common::TestDb<C>) -> Server
    where
        C: OperationLog,
        app::User: CachedOps<C>,
    {
        Self::start_with(t, app::Reads::Inline)
    }

    /// `start`, with GET reading as `reads` says.
    fn start_with<C>(t: &common::TestDb<C>, reads: app::Reads) -> Server
    where
        C: OperationLog,
        app::User: CachedOps<C>,
    {
        let db = Db::builder(t.pool.clone())
            .cache::<app::User>()
            .build()
            .expect("valid region settings");
        app::seed(&db).expect("seed users");
        Self::serve(app::app_with(db, reads))
    }

    /// Serves `router` on a free port of 127.0.0.1.
    fn serve(router: axum::Router) -> Server {
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
                axum::serve(listener, router)
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
            addr,
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
    location: Option<String>,
    /// `Idempotent-Replayed: true`: the recorded response of an earlier request.
    replayed: bool,
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
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().expect("an ASCII header").to_string())
    };
    let (etag, location) = (header("etag"), header("location"));
    let replayed = match header("idempotent-replayed").as_deref() {
        None => false,
        Some("true") => true,
        Some(other) => panic!("Idempotent-Replayed: {other:?}"),
    };
    Reply {
        status: resp.status().as_u16(),
        etag,
        location,
        replayed,
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

/// Sends `body` as compact JSON, byte for byte as `send_and_hang_up` does. A resend is the
/// same bytes: the server fingerprints the body as sent (another layout of the same JSON
/// is another request to it).
fn send_compact(
    req: ureq::RequestBuilder<ureq::typestate::WithBody>,
    body: &Value,
) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
    req.header("Content-Type", "application/json")
        .send(body.to_string())
}

/// A PUT with an `Idempotency-Key`.
fn put_once(agent: &ureq::Agent, url: &str, if_match: &str, key: &str, body: &Value) -> Reply {
    reply(send_compact(
        agent
            .put(url)
            .header("If-Match", if_match)
            .header("Idempotency-Key", key),
        body,
    ))
}

/// `POST /users`, with an `Idempotency-Key` when `key` is given.
fn post(agent: &ureq::Agent, server: &Server, key: Option<&str>, body: &Value) -> Reply {
    let mut req = agent.post(server.url("/users"));
    if let Some(key) = key {
        req = req.header("Idempotency-Key", key);
    }
    reply(send_compact(req, body))
}

/// Sends a request over a fresh TCP connection and hangs up without reading a byte of
/// the response: the response is lost, whether or not the server got to run the request.
fn send_and_hang_up(
    server: &Server,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
) {
    let body = body.to_string();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        server.addr,
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let mut stream = TcpStream::connect(server.addr).expect("connect to the server");
    stream
        .write_all(format!("{head}\r\n{body}").as_bytes())
        .expect("send the request");
    drop(stream);
}

/// The users with this email, as (id, version), read from the database (not the cache).
/// A macro: the connection type is concrete only inside each backend's test.
macro_rules! rows_with_email {
    ($t:expr, $email:expr) => {{
        let mut conn = $t.conn();
        app::users::table
            .filter(app::users::email.eq($email))
            .select((app::users::id, app::users::version))
            .order(app::users::id)
            .load::<(i64, i64)>(&mut *conn)
            .expect("read users")
    }};
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

    /// Without an `Idempotency-Key` a resent PUT is not recognised, whatever it holds: the
    /// server cannot tell it from another client's edit of the same version, and replays
    /// are never guessed from content (C6). It is 412, and nothing is written twice.
    fn a_put_from_an_old_version_without_a_key_is_412_even_when_it_repeats_one(t) {
        let server = Server::start(t);
        let http = client();
        let grace = server.url("/users/2");
        let full = json!({ "email": "grace@navy.mil", "name": "Grace Hopper", "bio": "COBOL" });
        let first = put(&http, &grace, Some("\"1\""), full.clone());
        assert_eq!((first.status, first.etag.as_deref(), first.replayed), (200, Some("\"2\""), false), "{first:?}");
        // The client lost the response and sends the same request again, without a key.
        let again = put(&http, &grace, Some("\"1\""), full.clone());
        assert_error(&again, 412, "version 2");
        assert_eq!((again.body["current_version"].as_i64(), again.replayed), (Some(2), false));
        // Other content from the same old version, whole or partial, is 412 as well.
        let other = json!({ "email": "grace@navy.mil", "name": "Amazing Grace", "bio": "COBOL" });
        assert_error(&put(&http, &grace, Some("\"1\""), other), 412, "version 2");
        assert_error(&put(&http, &grace, Some("\"1\""), json!({ "bio": "COBOL" })), 412, "version 2");
        // One write: version 2, in the database and in what GET serves.
        assert_eq!(rows_with_email!(t, "grace@navy.mil"), vec![(2, 2)]);
        let r = get(&http, &grace);
        assert_eq!((r.etag.as_deref(), r.body["name"].as_str()), (Some("\"2\""), Some("Grace Hopper")));
    }

    /// C6: a PUT with an `Idempotency-Key` whose response was lost, sent again with the
    /// same key, gets the recorded response (not 412, though its If-Match is stale by then)
    /// with `Idempotent-Replayed: true`, and the version is bumped once.
    fn a_put_resent_after_a_lost_response_gets_the_recorded_response(t) {
        let server = Server::start(t);
        let http = client();
        let ada = server.url("/users/1");
        let change = json!({ "bio": "first programmer" });
        // First delivery: it runs, and the client never reads the response.
        let lost = send_compact(
            http.put(&ada)
                .header("If-Match", "\"1\"")
                .header("Idempotency-Key", "edit-ada-1"),
            &change,
        );
        drop(lost.expect("the first PUT is sent"));
        let again = put_once(&http, &ada, "\"1\"", "edit-ada-1", &change);
        assert_eq!((again.status, again.etag.as_deref(), again.replayed), (200, Some("\"2\""), true), "{again:?}");
        assert_eq!(again.body, get(&http, &ada).body, "the recorded response is the user as written");
        assert_eq!((again.body["version"].as_i64(), again.body["bio"].as_str()), (Some(2), Some("first programmer")));
        // However often it is sent.
        let third = put_once(&http, &ada, "\"1\"", "edit-ada-1", &change);
        assert_eq!((third.status, third.etag, third.body, third.replayed), (200, again.etag.clone(), again.body.clone(), true));
        assert_eq!(rows_with_email!(t, "ada@example.com"), vec![(1, 2)], "one write");

        // A new key from the stale version is a new request: 412, and it records nothing,
        // so once the client has caught up the same key runs.
        let rename = json!({ "name": "Countess" });
        let r = put_once(&http, &ada, "\"1\"", "edit-ada-2", &rename);
        assert_error(&r, 412, "version 2");
        assert!(!r.replayed);
        let r = put_once(&http, &ada, "\"2\"", "edit-ada-2", &rename);
        assert_eq!((r.status, r.etag.as_deref(), r.replayed), (200, Some("\"3\""), false), "{r:?}");
        assert_eq!(rows_with_email!(t, "ada@example.com"), vec![(1, 3)]);
    }

    /// C6: a POST resent after a lost response creates one user and gets the recorded
    /// 201 (`Location`, `ETag`, body); without the key the same request is 409. Also when
    /// the client hangs up mid-request, before or after the server ran it.
    fn a_post_resent_after_a_lost_response_creates_one_user(t) {
        let server = Server::start(t);
        let http = client();
        let alan = json!({ "id": 4, "email": "alan@example.com", "name": "Alan" });
        let lost = send_compact(
            http.post(server.url("/users"))
                .header("Idempotency-Key", "signup-alan"),
            &alan,
        );
        drop(lost.expect("the first POST is sent"));
        let again = post(&http, &server, Some("signup-alan"), &alan);
        assert_eq!(
            (again.status, again.etag.as_deref(), again.location.as_deref(), again.replayed),
            (201, Some("\"1\""), Some("/users/4"), true),
            "{again:?}"
        );
        assert_eq!(
            again.body,
            json!({ "id": 4, "version": 1, "email": "alan@example.com", "name": "Alan", "bio": null })
        );
        assert_eq!(rows_with_email!(t, "alan@example.com"), vec![(4, 1)], "one user");
        let r = get(&http, &server.url("/users/4"));
        assert_eq!((r.status, r.body), (200, again.body.clone()));
        // Without the key the server cannot know the user is this client's own: 409.
        let r = post(&http, &server, None, &alan);
        assert_error(&r, 409, "user 4 exists");
        assert!(!r.replayed);
        // A duplicate email under a new id, without a key, is a 409 too.
        let r = post(&http, &server, None, &json!({ "id": 9, "email": "alan@example.com", "name": "A" }));
        assert_error(&r, 409, "another user");
        assert_eq!(rows_with_email!(t, "alan@example.com"), vec![(4, 1)]);

        // The client hangs up right after sending: the server may have run the request, be
        // running it, or not have started. The resend settles it, once.
        let bob = json!({ "id": 5, "email": "bob@example.com", "name": "Bob", "bio": "hangs up" });
        send_and_hang_up(&server, "POST", "/users", &[("Idempotency-Key", "signup-bob")], &bob);
        let first = post(&http, &server, Some("signup-bob"), &bob);
        assert_eq!((first.status, first.etag.as_deref(), first.body["id"].as_i64()), (201, Some("\"1\""), Some(5)), "{first:?}");
        let second = post(&http, &server, Some("signup-bob"), &bob);
        assert_eq!((second.status, &second.etag, &second.body, second.replayed), (201, &first.etag, &first.body, true));
        assert_eq!(rows_with_email!(t, "bob@example.com"), vec![(5, 1)], "one user");
    }

    /// C6: a key names one request (method, path and body): the same key with another
    /// request is 422 and runs nothing. Keys are 1 to 255 bytes.
    fn an_idempotency_key_reused_for_another_request_is_422(t) {
        let server = Server::start(t);
        let http = client();
        let key = "signup-xavier";
        let xavier = json!({ "id": 6, "email": "xavier@example.com", "name": "Xavier" });
        assert_eq!(post(&http, &server, Some(key), &xavier).status, 201);
        let yvonne = json!({ "id": 7, "email": "yvonne@example.com", "name": "Yvonne" });
        let r = post(&http, &server, Some(key), &yvonne);
        assert_error(&r, 422, "another request");
        assert_eq!((r.body["idempotency_key"].as_str(), r.replayed), (Some(key), false));
        // The same body with another method and path is another request too.
        let r = put_once(&http, &server.url("/users/6"), "\"1\"", key, &json!({ "name": "Xavier" }));
        assert_error(&r, 422, "another request");
        assert_eq!(rows_with_email!(t, "yvonne@example.com"), vec![]);
        assert_eq!(rows_with_email!(t, "xavier@example.com"), vec![(6, 1)]);
        // The key as sent first still replays.
        let r = post(&http, &server, Some(key), &xavier);
        assert_eq!((r.status, r.replayed), (201, true));

        let zoe = json!({ "id": 8, "email": "zoe@example.com", "name": "Zoe" });
        assert_error(&post(&http, &server, Some(""), &zoe), 400, "1 to 255 bytes");
        assert_error(&post(&http, &server, Some(&"k".repeat(256)), &zoe), 400, "1 to 255 bytes");
        assert_eq!(rows_with_email!(t, "zoe@example.com"), vec![]);
        let r = post(&http, &server, Some(&"k".repeat(255)), &zoe);
        assert_eq!((r.status, r.replayed), (201, false), "{r:?}");
    }

    /// C6: two requests with one key at the same time: one runs, the other waits for it
    /// and replays its response. One user is created; a PUT bumps the version once.
    fn two_concurrent_requests_with_one_key_take_effect_once(t) {
        let server = Server::start(t);
        let clients = [client(), client()];
        for round in 0..5i64 {
            let id = 20 + round;
            let email = format!("twin{round}@example.com");
            let body = json!({ "id": id, "email": email, "name": format!("Twin {round}") });
            let key = format!("twin-signup-{round}");
            let start = Barrier::new(2);
            let replies: Vec<Reply> = thread::scope(|s| {
                let senders: Vec<_> = clients
                    .iter()
                    .map(|http| {
                        let (start, server, body, key) = (&start, &server, &body, &key);
                        s.spawn(move || {
                            start.wait();
                            post(http, server, Some(key), body)
                        })
                    })
                    .collect();
                senders.into_iter().map(|h| h.join().expect("client thread")).collect()
            });
            assert!(replies.iter().all(|r| r.status == 201), "round {round}: {replies:?}");
            assert_eq!(replies.iter().filter(|r| !r.replayed).count(), 1, "round {round}: one ran: {replies:?}");
            assert_eq!((&replies[0].body, &replies[0].etag), (&replies[1].body, &replies[1].etag), "round {round}");
            assert_eq!(rows_with_email!(t, email.as_str()), vec![(id, 1)], "round {round}: one user");

            // The same for a PUT, from the user's first version.
            let change = json!({ "bio": format!("edited in round {round}") });
            let key = format!("twin-edit-{round}");
            let url = server.url(&format!("/users/{id}"));
            let start = Barrier::new(2);
            let replies: Vec<Reply> = thread::scope(|s| {
                let senders: Vec<_> = clients
                    .iter()
                    .map(|http| {
                        let (start, url, change, key) = (&start, &url, &change, &key);
                        s.spawn(move || {
                            start.wait();
                            put_once(http, url, "\"1\"", key, change)
                        })
                    })
                    .collect();
                senders.into_iter().map(|h| h.join().expect("client thread")).collect()
            });
            assert!(replies.iter().all(|r| r.status == 200 && r.etag.as_deref() == Some("\"2\"")), "round {round}: {replies:?}");
            assert_eq!(replies.iter().filter(|r| !r.replayed).count(), 1, "round {round}: one ran: {replies:?}");
            assert_eq!(rows_with_email!(t, email.as_str()), vec![(id, 2)], "round {round}: one write");
        }
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

    /// `GET /users/{id}` answers the same inline (`Db::find_async`) and through
    /// `spawn_blocking` (`--blocking`): a cached user with no SQL, a miss loaded once, an
    /// absent user 404 and then a negative hit, and a PUT read back at once (C2).
    fn get_answers_the_same_inline_and_through_spawn_blocking(t) {
        let mut answers = Vec::new();
        for reads in [app::Reads::Inline, app::Reads::Blocking] {
            let t = &t.fresh();
            let server = Server::start_with(t, reads);
            let http = client();
            t.exec("INSERT INTO users (id, version, email, name) VALUES (7, 1, 'seven@example.com', 'Seven')");
            t.sql.reset();
            let mut seen = Vec::new();
            for path in ["/users/1", "/users/1", "/users/7", "/users/7", "/users/99", "/users/99"] {
                let r = get(&http, &server.url(path));
                seen.push((r.status, r.etag, r.body));
            }
            assert_eq!(t.sql.selects(), 2, "{reads:?}: one load for user 7, one for 99; the rest were hits: {:?}", t.sql.statements());
            assert_eq!(put(&http, &server.url("/users/1"), Some("\"1\""), json!({ "bio": "x" })).status, 200);
            t.sql.reset();
            let r = get(&http, &server.url("/users/1"));
            assert_eq!((r.status, r.etag.as_deref()), (200, Some("\"2\"")), "{reads:?}: read your write");
            assert_eq!(t.sql.count(), 0, "{reads:?}: the PUT was written through");
            answers.push(seen);
        }
        assert_eq!(answers[0], answers[1]);
    }

    fn stats_are_served_as_json(t) {
        let server = Server::start(t);
        let http = client();
        let ada = server.url("/users/1");
        for _ in 0..3 {
            assert_eq!(get(&http, &ada).status, 200);
        }
        // A stale If-Match is answered from the version read in the transaction, before
        // any UPDATE: no conflict for the region to count. The PUT that matches commits.
        assert_error(&put(&http, &ada, Some("\"0\""), json!({ "bio": "x" })), 412, "version 1");
        assert_eq!(put(&http, &ada, Some("\"1\""), json!({ "bio": "x" })).status, 200);
        let r = get(&http, &server.url("/stats"));
        assert_eq!(r.status, 200);
        let users = &r.body["regions"][0];
        assert_eq!((users["region"].as_str(), users["table"].as_str()), (Some("users"), Some("users")), "{}", r.body);
        // Seeding put user 1 in the cache at commit, so all three GETs were hits.
        assert!(users["hits"].as_u64().expect("hits") >= 3, "{}", r.body);
        assert_eq!(users["conflicts"], 0, "{}", r.body);
        assert_eq!(users["commits_applied"], 4, "seeding three users, one PUT: {}", r.body);
    }
}

/// The blog example's service, on its own schema, with the change feed listening.
mod blog {
    use std::time::{Duration, Instant};

    use super::{assert_error, client, get, reply, send_compact, Reply, Server};
    use crate::backend_tests;
    use crate::blog_app;
    use crate::common::{Migrations, TestBackend, TestDb, TestDbOptions};
    use diesel::prelude::*;
    use diesel_l2::ListenConfig;
    use serde_json::{json, Value};

    /// A test database with the blog's schema instead of the project's.
    fn blog_schema() -> TestDbOptions {
        TestDbOptions::default().migrations(Migrations {
            sqlite: || blog_app::migrations::SQLITE,
            postgres: || blog_app::migrations::POSTGRES,
            mysql: || blog_app::migrations::MYSQL,
        })
    }

    /// The blog's router over `t`'s pool, its `Db` listening to the change feed.
    fn start<C: blog_app::Backend + TestBackend>(t: &TestDb<C>) -> Server {
        let mut listen = ListenConfig::new(t.url.clone());
        if let Some(schema) = t.pg_schema() {
            listen = listen.schema(schema);
        }
        let db = C::db(t.pool.clone(), Some(listen)).expect("the blog's Db builds and listens");
        Server::serve(C::app(db))
    }

    /// A POST of `body` as JSON, with an `Idempotency-Key` when `key` is given.
    fn post(http: &ureq::Agent, url: &str, key: Option<&str>, body: &Value) -> Reply {
        let mut req = http.post(url);
        if let Some(key) = key {
            req = req.header("Idempotency-Key", key);
        }
        reply(send_compact(req, body))
    }

    fn patch(http: &ureq::Agent, url: &str, if_match: Option<&str>, body: &Value) -> Reply {
        let mut req = http.patch(url);
        if let Some(tag) = if_match {
            req = req.header("If-Match", tag);
        }
        reply(send_compact(req, body))
    }

    fn delete(http: &ureq::Agent, url: &str) -> Reply {
        reply(http.delete(url).call())
    }

    /// Creates a user and returns its id.
    fn user(http: &ureq::Agent, server: &Server, email: &str) -> i64 {
        let r = post(
            http,
            &server.url("/users"),
            None,
            &json!({ "email": email, "name": email }),
        );
        assert_eq!(r.status, 201, "{r:?}");
        r.body["id"].as_i64().expect("an id")
    }

    /// Creates a post and returns it.
    fn new_post(http: &ureq::Agent, server: &Server, author: i64, title: &str) -> Value {
        let body =
            json!({ "author_id": author, "title": title, "body": format!("About {title}.") });
        let r = post(http, &server.url("/posts"), None, &body);
        assert_eq!(r.status, 201, "{r:?}");
        r.body
    }

    /// The regions' counters from `GET /stats`, by region name.
    fn region(http: &ureq::Agent, server: &Server, name: &str) -> Value {
        let r = get(http, &server.url("/stats"));
        assert_eq!(r.status, 200);
        r.body["regions"]
            .as_array()
            .expect("regions")
            .iter()
            .find(|r| r["region"] == name)
            .unwrap_or_else(|| panic!("no region {name} in {}", r.body))
            .clone()
    }

    /// Rows of a table, counted in the database.
    macro_rules! count {
        ($t:expr, $table:ident, $filter:expr) => {{
            let mut conn = $t.conn();
            blog_app::$table::table
                .filter($filter)
                .count()
                .get_result::<i64>(&mut *conn)
                .expect("count rows")
        }};
    }

    backend_tests! {
        /// Ids come from the database (BIGSERIAL, AUTO_INCREMENT, the rowid) through
        /// `Tx::insert_new`; the responses carry them, in `Location` too.
        fn creates_users_posts_and_comments_with_generated_ids(t, blog_schema()) {
            let server = start(t);
            let http = client();
            let ada = post(&http, &server.url("/users"), None, &json!({ "email": "ada@example.com", "name": "Ada" }));
            assert_eq!((ada.status, ada.etag.as_deref()), (201, Some("\"1\"")), "{ada:?}");
            let ada_id = ada.body["id"].as_i64().expect("a generated id");
            assert_eq!(ada.location, Some(format!("/users/{ada_id}")));
            assert_eq!((ada.body["version"].as_i64(), &ada.body["last_seen_at"]), (Some(1), &Value::Null));
            let grace_id = user(&http, &server, "grace@example.com");
            assert_ne!(ada_id, grace_id);
            assert_eq!(get(&http, &server.url(&format!("/users/{ada_id}"))).body, ada.body);

            let p = post(&http, &server.url("/posts"), None, &json!({ "author_id": ada_id, "title": "Notes on the Engine", "body": "Sketch G." }));
            assert_eq!((p.status, p.etag.as_deref()), (201, Some("\"1\"")), "{p:?}");
            let post_id = p.body["id"].as_i64().expect("a generated id");
            assert_eq!(p.location, Some(format!("/posts/{post_id}")));
            assert_eq!((p.body["slug"].as_str(), p.body["published"].as_bool()), (Some("notes-on-the-engine"), Some(true)));
            // Writing a post set its author's last_seen_at (last writer wins, version bumped).
            let a = get(&http, &server.url(&format!("/users/{ada_id}")));
            assert_eq!((a.etag.as_deref(), a.body["last_seen_at"].is_string()), (Some("\"2\""), true), "{a:?}");

            let c = post(&http, &server.url(&format!("/posts/{post_id}/comments")), None, &json!({ "author_id": grace_id, "body": "Brilliant" }));
            assert_eq!(c.status, 201, "{c:?}");
            let comment_id = c.body["id"].as_i64().expect("a generated id");
            assert_eq!(c.location, Some(format!("/comments/{comment_id}")));
            assert_eq!(get(&http, &server.url(&format!("/comments/{comment_id}"))).body, c.body);
            let second = post(&http, &server.url(&format!("/posts/{post_id}/comments")), None, &json!({ "author_id": ada_id, "body": "Thank you" }));
            assert!(second.body["id"].as_i64() > Some(comment_id), "{second:?}");

            // The lists: a post's comments are a cached list, the newest posts a cached
            // query (C10). The second read of each is a hit; a new comment and a new post
            // are seen by the next read.
            let comments = get(&http, &server.url(&format!("/posts/{post_id}/comments")));
            assert_eq!(comments.body, json!([c.body, second.body]));
            // The change feed also reports this process's own commits; a list they drop is
            // loaded again once. Once the feed has caught up, a read is a list hit.
            let list_hits = || region(&http, &server, "comments")["list_hits"].as_i64().expect("list_hits");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            loop {
                let before = list_hits();
                assert_eq!(get(&http, &server.url(&format!("/posts/{post_id}/comments"))).body, comments.body);
                if list_hits() == before + 1 {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "the comments were never served from the cached list");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let third = post(&http, &server.url(&format!("/posts/{post_id}/comments")), None, &json!({ "author_id": ada_id, "body": "More" }));
            assert_eq!(third.status, 201, "{third:?}");
            let comments = get(&http, &server.url(&format!("/posts/{post_id}/comments")));
            assert_eq!(comments.body, json!([c.body, second.body, third.body]), "the commit dropped the list");
            let newest = get(&http, &server.url("/posts"));
            assert_eq!(newest.body.as_array().map(Vec::len), Some(1));
            assert_eq!(newest.body[0]["id"].as_i64(), Some(post_id));
            let query_hits = || get(&http, &server.url("/stats")).body["queries"]["hits"].as_i64().expect("query hits");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            loop {
                let before = query_hits();
                assert_eq!(get(&http, &server.url("/posts")).body, newest.body);
                if query_hits() == before + 1 {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "the newest posts were never served from the query cache");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let later = new_post(&http, &server, grace_id, "A later post");
            let newest = get(&http, &server.url("/posts"));
            assert_eq!(newest.body[0]["id"], later["id"], "the new post is first: the commit made the stored page unusable");
            assert_eq!(get(&http, &server.url("/posts?limit=1")).body.as_array().map(Vec::len), Some(1));
            assert_error(&get(&http, &server.url("/posts?limit=many")), 400, "limit");

            // Bad input is a 4xx, never a panic.
            assert_error(&get(&http, &server.url("/users/ada")), 400, "integers");
            assert_error(&get(&http, &server.url("/posts/999")), 404, "no post 999");
            assert_error(&post(&http, &server.url("/users"), None, &json!({ "email": "x" })), 400, "JSON object");
            assert_error(&post(&http, &server.url("/posts"), None, &json!({ "author_id": 999, "title": "T", "body": "" })), 422, "no such user");
            assert_error(&post(&http, &server.url("/posts"), None, &json!({ "author_id": ada_id, "title": "?!", "body": "" })), 400, "letters or digits");
            assert_error(&post(&http, &server.url("/posts/999/comments"), None, &json!({ "author_id": ada_id, "body": "b" })), 404, "no post 999");
            assert_error(&get(&http, &server.url("/posts/999/comments")), 404, "no post 999");
        }

        /// Emails and slugs are unique: a taken one is 409 and writes nothing, whether the
        /// slug comes from the same title or from another that slugs alike.
        fn a_taken_email_or_slug_is_409(t, blog_schema()) {
            let server = start(t);
            let http = client();
            let ada = user(&http, &server, "ada@example.com");
            let r = post(&http, &server.url("/users"), None, &json!({ "email": "ada@example.com", "name": "Other Ada" }));
            assert_error(&r, 409, "ada@example.com is taken");
            assert_eq!(count!(t, users, blog_app::users::email.eq("ada@example.com")), 1);

            new_post(&http, &server, ada, "Hello, World");
            for title in ["Hello, World", "hello world!", "  HELLO -- world  "] {
                let r = post(&http, &server.url("/posts"), None, &json!({ "author_id": ada, "title": title, "body": "again" }));
                assert_error(&r, 409, "\"hello-world\" is taken");
            }
            assert_eq!(count!(t, posts, blog_app::posts::slug.eq("hello-world")), 1);
            // The lookups by email and slug find the first ones.
            let r = get(&http, &server.url("/users/by-email/ada@example.com"));
            assert_eq!((r.status, r.body["id"].as_i64()), (200, Some(ada)));
            let r = get(&http, &server.url("/posts/by-slug/hello-world"));
            assert_eq!((r.status, r.body["body"].as_str()), (200, Some("About Hello, World.")));
            assert_error(&get(&http, &server.url("/posts/by-slug/nothing-here")), 404, "nothing-here");
            assert_error(&get(&http, &server.url("/users/by-email/nobody@example.com")), 404, "nobody@example.com");
        }

        /// `PATCH` applies only the fields sent (an `AsChangeset` with `Option`s), sets
        /// `updated_at`, and bumps the version the ETag shows; it needs `If-Match` (428)
        /// and refuses another version than the one edited (412, C6).
        fn patch_changes_only_the_given_fields_and_bumps_the_etag(t, blog_schema()) {
            let server = start(t);
            let http = client();
            let ada = user(&http, &server, "ada@example.com");
            let created = new_post(&http, &server, ada, "First Draft");
            let url = server.url(&format!("/posts/{}", created["id"]));

            assert_error(&patch(&http, &url, None, &json!({ "title": "T" })), 428, "If-Match");
            assert_error(&patch(&http, &url, Some("1"), &json!({ "title": "T" })), 400, "quoted");
            assert_error(&patch(&http, &url, Some("\"1\""), &json!({ "slug": "x" })), 400, "unknown field");
            assert_error(&patch(&http, &url, Some("\"1\""), &json!({ "updated_at": "2000-01-01" })), 400, "unknown field");
            assert_error(&patch(&http, &url, Some("\"1\""), &json!({ "title": " " })), 400, "empty");
            assert_error(&patch(&http, &server.url("/posts/999"), Some("\"1\""), &json!({ "title": "T" })), 404, "no post 999");
            assert_eq!(get(&http, &url).etag.as_deref(), Some("\"1\""), "rejected PATCHes change nothing");

            let r = patch(&http, &url, Some("\"1\""), &json!({ "body": "Rewritten." }));
            assert_eq!((r.status, r.etag.as_deref()), (200, Some("\"2\"")), "{r:?}");
            assert_eq!(r.body["body"], "Rewritten.");
            for unchanged in ["title", "slug", "author_id", "created_at", "published"] {
                assert_eq!(r.body[unchanged], created[unchanged], "{unchanged} was not sent");
            }
            assert!(r.body["updated_at"].as_str() > created["updated_at"].as_str(), "{r:?}");
            // Read your write, from the cache (no SQL).
            t.sql.reset();
            let g = get(&http, &url);
            assert_eq!((g.etag.as_deref(), &g.body), (Some("\"2\""), &r.body));
            assert_eq!(t.sql.count(), 0, "served by the cache: {:?}", t.sql.statements());

            // The old ETag is stale now: 412, saying which version is current.
            let stale = patch(&http, &url, Some("\"1\""), &json!({ "title": "Lost Update" }));
            assert_error(&stale, 412, "version 2");
            assert_eq!(stale.body["current_version"], 2);
            let r = patch(&http, &url, Some("\"2\""), &json!({ "title": "Final" }));
            assert_eq!((r.status, r.etag.as_deref(), r.body["body"].as_str()), (200, Some("\"3\""), Some("Rewritten.")));
            // The slug stays: links keep working after a retitle.
            assert_eq!(r.body["slug"], "first-draft");
            // `*` overwrites whatever version is current (the last writer wins).
            let r = patch(&http, &url, Some("*"), &json!({ "title": "Forced" }));
            assert_eq!((r.status, r.etag.as_deref(), r.body["title"].as_str()), (200, Some("\"4\""), Some("Forced")));
        }

        /// C6: a POST resent with its `Idempotency-Key` after a lost response gets the
        /// recorded 201 (`Idempotent-Replayed: true`) and creates one row; without the key
        /// the resend is 409; the key with another body is 422.
        fn a_post_resent_with_its_idempotency_key_creates_one_row(t, blog_schema()) {
            let server = start(t);
            let http = client();
            let ada = json!({ "email": "ada@example.com", "name": "Ada" });
            let lost = send_compact(http.post(server.url("/users")).header("Idempotency-Key", "signup-ada"), &ada);
            drop(lost.expect("the first POST is sent"));
            let again = post(&http, &server.url("/users"), Some("signup-ada"), &ada);
            assert_eq!((again.status, again.replayed, again.etag.as_deref()), (201, true, Some("\"1\"")), "{again:?}");
            let ada_id = again.body["id"].as_i64().expect("an id");
            assert_eq!(again.location, Some(format!("/users/{ada_id}")));
            assert_eq!(count!(t, users, blog_app::users::email.eq("ada@example.com")), 1);

            let hello = json!({ "author_id": ada_id, "title": "Hello", "body": "Once." });
            let first = post(&http, &server.url("/posts"), Some("post-hello"), &hello);
            assert_eq!((first.status, first.replayed), (201, false), "{first:?}");
            for _ in 0..3 {
                let r = post(&http, &server.url("/posts"), Some("post-hello"), &hello);
                assert_eq!((r.status, r.replayed, &r.body, &r.location, &r.etag), (201, true, &first.body, &first.location, &first.etag));
            }
            assert_eq!(count!(t, posts, blog_app::posts::slug.eq("hello")), 1, "one post");
            // Without the key, the server cannot tell a resend from a new post: 409.
            assert_error(&post(&http, &server.url("/posts"), None, &hello), 409, "taken");
            // The key with another body (or path) is another request: 422, nothing written.
            let other = json!({ "author_id": ada_id, "title": "Other", "body": "Twice?" });
            let r = post(&http, &server.url("/posts"), Some("post-hello"), &other);
            assert_error(&r, 422, "another request");
            assert_eq!(r.body["idempotency_key"], "post-hello");
            assert_eq!(count!(t, posts, blog_app::posts::slug.eq("other")), 0);

            // A comment: the resend is the recorded one, and there is one comment.
            let post_id = first.body["id"].as_i64().expect("an id");
            let url = server.url(&format!("/posts/{post_id}/comments"));
            let nice = json!({ "author_id": ada_id, "body": "Nice" });
            let c1 = post(&http, &url, Some("comment-1"), &nice);
            let c2 = post(&http, &url, Some("comment-1"), &nice);
            assert_eq!((c1.status, c2.status, c2.replayed, &c2.body), (201, 201, true, &c1.body));
            assert_eq!(count!(t, comments, blog_app::comments::post_id.eq(post_id)), 1, "one comment");
            // Without a key, the same comment again is a second comment (nothing unique).
            assert_eq!(post(&http, &url, None, &nice).status, 201);
            assert_eq!(count!(t, comments, blog_app::comments::post_id.eq(post_id)), 2);
            assert_error(&post(&http, &url, Some(&"k".repeat(256)), &nice), 400, "1 to 255 bytes");
        }

        /// C6: two POSTs with one key at the same moment (a client retrying while the
        /// first attempt is still running): one runs, the other waits and replays it.
        fn two_concurrent_posts_with_one_key_create_one_post(t, blog_schema()) {
            let server = start(t);
            let clients = [client(), client()];
            let ada = user(&clients[0], &server, "ada@example.com");
            for round in 0..5 {
                let body = json!({ "author_id": ada, "title": format!("Race {round}"), "body": "once" });
                let key = format!("race-{round}");
                let start = std::sync::Barrier::new(2);
                let replies: Vec<Reply> = std::thread::scope(|s| {
                    let senders: Vec<_> = clients
                        .iter()
                        .map(|http| {
                            let (start, server, body, key) = (&start, &server, &body, &key);
                            s.spawn(move || {
                                start.wait();
                                post(http, &server.url("/posts"), Some(key), body)
                            })
                        })
                        .collect();
                    senders.into_iter().map(|h| h.join().expect("client thread")).collect()
                });
                assert!(replies.iter().all(|r| r.status == 201), "round {round}: {replies:?}");
                assert_eq!(replies.iter().filter(|r| !r.replayed).count(), 1, "round {round}: one ran: {replies:?}");
                assert_eq!(replies[0].body, replies[1].body, "round {round}");
                let slug = format!("race-{round}");
                assert_eq!(count!(t, posts, blog_app::posts::slug.eq(&slug)), 1, "round {round}: one post");
            }
        }

        /// Reads after the first are answered by the cache: no SQL, counted as hits in
        /// `/stats` (by id, and by the unique email and slug).
        fn reads_after_the_first_are_served_from_the_cache(t, blog_schema()) {
            let server = start(t);
            let http = client();
            let ada = user(&http, &server, "ada@example.com");
            let p = new_post(&http, &server, ada, "Cached");
            let url = server.url(&format!("/posts/{}", p["id"]));
            // The insert was written through at commit: the first GET is a hit already.
            let hits = region(&http, &server, "posts")["hits"].as_u64().expect("hits");
            t.sql.reset();
            for _ in 0..5 {
                let r = get(&http, &url);
                assert_eq!((r.status, &r.body), (200, &p));
            }
            assert_eq!(t.sql.count(), 0, "five GETs, no SQL: {:?}", t.sql.statements());
            let posts = region(&http, &server, "posts");
            assert_eq!(posts["hits"].as_u64(), Some(hits + 5), "{posts}");

            // By slug and by email: the first lookup loads, the next ones are hits.
            t.sql.reset();
            for _ in 0..3 {
                assert_eq!(get(&http, &server.url("/posts/by-slug/cached")).body, p);
                assert_eq!(get(&http, &server.url("/users/by-email/ada@example.com")).body["id"].as_i64(), Some(ada));
            }
            assert!(t.sql.selects() <= 2, "one load a key: {:?}", t.sql.statements());
            assert!(region(&http, &server, "posts")["key_hits"].as_u64() >= Some(2));
            assert!(region(&http, &server, "users")["key_hits"].as_u64() >= Some(2));
        }

        /// C7: a write by plain SQL on another connection (no diesel-l2 involved) reaches
        /// the cache through the change feed: the triggers bump the version and report
        /// the row, and the next read has it, by id and by its new unique values.
        fn a_write_by_plain_sql_is_seen_once_the_change_feed_delivers_it(t, blog_schema()) {
            let server = start(t);
            let http = client();
            let ada = user(&http, &server, "ada@example.com");
            let p = new_post(&http, &server, ada, "Before");
            let url = server.url(&format!("/posts/{}", p["id"]));
            assert_eq!(get(&http, &url).body["title"], "Before", "cached");
            assert_eq!(get(&http, &server.url("/users/by-email/ada@example.com")).status, 200, "cached by email");

            let mut other = t.raw_connection();
            diesel::sql_query(format!("UPDATE posts SET title = 'Edited elsewhere' WHERE id = {}", p["id"]))
                .execute(&mut other)
                .expect("plain SQL update");
            diesel::sql_query(format!("UPDATE users SET email = 'ada@lovelace.org' WHERE id = {ada}"))
                .execute(&mut other)
                .expect("plain SQL update");

            let deadline = Instant::now() + Duration::from_secs(5);
            let seen = loop {
                let r = get(&http, &url);
                if r.body["title"] == "Edited elsewhere" || Instant::now() > deadline {
                    break r;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            assert_eq!(seen.body["title"], "Edited elsewhere", "not delivered within 5 s: {seen:?}");
            // The trigger bumped the version the statement left alone: a new ETag.
            assert_eq!(seen.etag.as_deref(), Some("\"2\""));
            let by_email = loop {
                let r = get(&http, &server.url("/users/by-email/ada@lovelace.org"));
                if r.status == 200 || Instant::now() > deadline {
                    break r;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            assert_eq!((by_email.status, by_email.body["id"].as_i64()), (200, Some(ada)), "{by_email:?}");
            assert_error(&get(&http, &server.url("/users/by-email/ada@example.com")), 404, "no user with email");
            // And a PATCH from the old ETag is refused.
            assert_error(&patch(&http, &url, Some("\"1\""), &json!({ "body": "x" })), 412, "version 2");
            let remote = region(&http, &server, "posts")["remote_invalidations"].as_u64();
            assert!(remote >= Some(1), "{remote:?}");
        }

        /// `DELETE /posts/{id}` deletes its comments with `Tx::delete_where` and then the
        /// post, in one transaction; the cached comments and post are gone after it (C2).
        fn deleting_a_post_deletes_its_comments(t, blog_schema()) {
            let server = start(t);
            let http = client();
            let ada = user(&http, &server, "ada@example.com");
            let doomed = new_post(&http, &server, ada, "Doomed")["id"].as_i64().expect("an id");
            let kept = new_post(&http, &server, ada, "Kept")["id"].as_i64().expect("an id");
            let mut doomed_comments = Vec::new();
            for i in 0..3 {
                let r = post(&http, &server.url(&format!("/posts/{doomed}/comments")), None, &json!({ "author_id": ada, "body": format!("c{i}") }));
                doomed_comments.push(server.url(r.location.as_deref().expect("a Location")));
            }
            let r = post(&http, &server.url(&format!("/posts/{kept}/comments")), None, &json!({ "author_id": ada, "body": "stays" }));
            let kept_comment = server.url(r.location.as_deref().expect("a Location"));
            for url in &doomed_comments {
                assert_eq!(get(&http, url).status, 200, "cached");
            }

            let r = delete(&http, &server.url(&format!("/posts/{doomed}")));
            assert_eq!((r.status, &r.body), (200, &json!({ "deleted": doomed, "comments_deleted": 3 })), "{r:?}");
            assert_error(&get(&http, &server.url(&format!("/posts/{doomed}"))), 404, "no post");
            for url in &doomed_comments {
                assert_error(&get(&http, url), 404, "no comment");
            }
            assert_eq!(count!(t, comments, blog_app::comments::post_id.eq(doomed)), 0);
            assert_eq!(count!(t, posts, blog_app::posts::id.eq(doomed)), 0);
            assert_eq!(get(&http, &kept_comment).body["body"], "stays");
            assert_eq!(get(&http, &server.url(&format!("/posts/{kept}/comments"))).body.as_array().map(Vec::len), Some(1));
            assert_error(&delete(&http, &server.url(&format!("/posts/{doomed}"))), 404, "no post");
            // The slug is free again.
            assert_eq!(get(&http, &server.url("/posts/by-slug/doomed")).status, 404);
            new_post(&http, &server, ada, "Doomed");
        }

        /// `POST /users/{id}/unpublish-all`: one `Tx::update_where` over the user's
        /// published posts; each gets a new version, and cached copies are replaced.
        fn unpublish_all_updates_every_published_post_of_the_user(t, blog_schema()) {
            let server = start(t);
            let http = client();
            let ada = user(&http, &server, "ada@example.com");
            let grace = user(&http, &server, "grace@example.com");
            let a1 = new_post(&http, &server, ada, "One")["id"].as_i64().expect("an id");
            let a2 = new_post(&http, &server, ada, "Two")["id"].as_i64().expect("an id");
            let g1 = new_post(&http, &server, grace, "Three")["id"].as_i64().expect("an id");
            for id in [a1, a2, g1] {
                assert_eq!(get(&http, &server.url(&format!("/posts/{id}"))).body["published"], true);
            }
            let r = post(&http, &server.url(&format!("/users/{ada}/unpublish-all")), None, &json!({}));
            assert_eq!((r.status, &r.body), (200, &json!({ "unpublished": [a1, a2] })), "{r:?}");
            for id in [a1, a2] {
                let p = get(&http, &server.url(&format!("/posts/{id}")));
                assert_eq!((p.body["published"].as_bool(), p.etag.as_deref()), (Some(false), Some("\"2\"")), "{p:?}");
            }
            let g = get(&http, &server.url(&format!("/posts/{g1}")));
            assert_eq!((g.body["published"].as_bool(), g.etag.as_deref()), (Some(true), Some("\"1\"")));
            let newest = get(&http, &server.url("/posts"));
            assert_eq!(newest.body.as_array().map(|l| l.iter().map(|p| p["id"].as_i64()).collect::<Vec<_>>()), Some(vec![Some(g1)]));
            // Nothing left to unpublish; an unknown user is 404.
            let r = post(&http, &server.url(&format!("/users/{ada}/unpublish-all")), None, &json!({}));
            assert_eq!(r.body, json!({ "unpublished": [] }));
            assert_error(&post(&http, &server.url("/users/999/unpublish-all"), None, &json!({})), 404, "no user 999");
        }
    }
}
