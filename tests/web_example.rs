//! The web example's service (`examples/web/app.rs`, included below) served on
//! `127.0.0.1:0` and driven over real TCP with a real HTTP client (ureq), on every
//! configured backend: ETags from versions, If-Match rules (428, 412, 400), read-your-writes
//! after a PUT, two clients racing on one ETag (exactly one wins), the statistics as JSON,
//! and `Idempotency-Key` (C6 in `../shared/DESIGN.md`: replays are recognised by an
//! operation id recorded in the writes' transaction, never by content): a PUT or POST
//! resent after a lost response gets the recorded response and writes nothing again, a
//! resend without a key is 412 / 409, a key reused for another request is 422, and two
//! concurrent requests with one key create one user.

mod common;

// Examples cannot be imported, so the router's source is compiled into this test.
#[path = "../examples/web/app.rs"]
mod app;

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
                axum::serve(listener, app::app_with(db, reads))
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
