//! The web example's HTTP service: routes, ETag / If-Match handling, `Idempotency-Key`,
//! JSON errors.
//!
//! Kept apart from `main.rs` so that `tests/web_example.rs` can include this file with
//! `#[path]` and serve the very same router on `127.0.0.1:0`.
//!
//! - `GET /users/{id}`: the user as JSON, `ETag: "<version>"`; 404 when there is none.
//! - `PUT /users/{id}`: a JSON object with the fields to change (`email`, `name`, `bio`).
//!   Needs `If-Match` with the ETag the client edited: 428 without it, 412 when the user
//!   is at another version (the body says which), 200 with the new ETag on success.
//!   `If-Match: *` updates whatever version is current.
//! - `POST /users`: creates a user from `{"id", "email", "name", "bio"}` (the client picks
//!   the id): 201 with `Location`, `ETag: "1"` and the user; 409 when the id or the email
//!   is taken.
//! - `GET /stats`: the cache statistics as JSON.
//!
//! **`Idempotency-Key`** (the IETF draft's header), on `PUT` and `POST`: the request runs
//! through [`Db::retry_once`] with the key as the operation id, and its response (status,
//! ETag, `Location`, body) is recorded in the same transaction as the write (C6). A client
//! that lost the response sends the same request with the same key again and gets the
//! recorded response back, with `Idempotent-Replayed: true`, and nothing is written a
//! second time — even though its `If-Match` is now stale (a PUT) or the user now exists (a
//! POST): without a key those answer 412 and 409, because the server cannot tell the
//! client's own earlier write from somebody else's. Two requests with one key at the same
//! time: one runs, the other waits for it and replays. The key names one request: the same
//! key with another method, path or body is 422. Keys are 1 to 255 bytes (400 otherwise).
//! Only successful responses are recorded; an error (412, 409, …) records nothing, so the
//! same key can be sent again once the cause is fixed.
//!
//! **Async** (diesel-l2's `tokio` feature): `GET /users/{id}` reads with
//! [`Db::find_async`]: a cached user is answered inline on the worker thread — no SQL, no
//! thread hop — and only a miss is loaded on tokio's blocking pool. PUT and POST block on
//! the database, so they run their transactions there with [`Db::spawn_blocking`].
//! [`app_with`]`(db, Reads::Blocking)` serves GET the old way, every read through
//! `tokio::task::spawn_blocking` (`--blocking` in `main.rs`), to compare the two (P8 in
//! BENCHMARKS.md).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use diesel::prelude::*;
use diesel::result::DatabaseErrorKind;
use diesel_l2::{Cached, CachedOps, Db, Error, Operation, OperationLog, RetryPolicy, Tx};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};

diesel::table! {
    users (id) {
        id -> BigInt,
        version -> BigInt,
        email -> Text,
        name -> Text,
        bio -> Nullable<Text>,
    }
}

/// The request header that makes a PUT or POST exactly-once.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The response header that marks a replayed response.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// A user as stored and as served; `version` is the ETag.
#[derive(Queryable, Selectable, Clone, Debug, PartialEq, Serialize, Cached)]
#[diesel(table_name = users)]
#[cache(ttl = "10m", max_entries = 100_000, negative_ttl = "30s")]
pub struct User {
    pub id: i64,
    pub version: i64,
    pub email: String,
    pub name: String,
    pub bio: Option<String>,
}

/// Inserts the users the example serves: ids 1 to 3, at version 1.
pub fn seed<C>(db: &Db<C>) -> Result<(), Error>
where
    C: OperationLog,
    User: CachedOps<C>,
{
    db.transaction(|tx| {
        for (id, name) in [(1, "Ada"), (2, "Grace"), (3, "Edsger")] {
            tx.insert(&User {
                id,
                version: 1,
                email: format!("{}@example.com", name.to_lowercase()),
                name: name.to_string(),
                bio: None,
            })?;
        }
        Ok(())
    })
}

/// How `GET /users/{id}` calls diesel-l2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reads {
    /// `Db::find_async`: a hit inline on the worker thread, a miss on the blocking pool.
    Inline,
    /// Every read through `tokio::task::spawn_blocking`, hit or miss (the way before the
    /// async front; kept to measure against).
    Blocking,
}

/// The service's routes over `db`, reading inline ([`Reads::Inline`]).
#[allow(dead_code)] // main.rs picks the mode with `app_with`; tests/web_example.rs uses this
pub fn app<C>(db: Db<C>) -> Router
where
    C: OperationLog,
    User: CachedOps<C>,
{
    app_with(db, Reads::Inline)
}

/// The service's routes over `db`, with GET reading as `reads` says.
pub fn app_with<C>(db: Db<C>, reads: Reads) -> Router
where
    C: OperationLog,
    User: CachedOps<C>,
{
    let read = match reads {
        Reads::Inline => get(get_user::<C>),
        Reads::Blocking => get(get_user_blocking::<C>),
    };
    Router::new()
        .route("/users", post(post_user::<C>))
        .route("/users/{id}", read.put(put_user::<C>))
        .route("/stats", get(stats::<C>))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .with_state(db)
}

async fn get_user<C>(State(db): State<Db<C>>, Path(id): Path<String>) -> Result<Response, ApiError>
where
    C: OperationLog,
    User: CachedOps<C>,
{
    let id = parse_id(&id)?;
    // A hit (or a cached 404) is answered here, on the worker thread; a miss is loaded on
    // the blocking pool.
    match db.find_async::<User>(id).await? {
        Some(user) => Ok(user_response(&user)),
        None => Err(no_user(id)),
    }
}

/// `GET /users/{id}` the old way ([`Reads::Blocking`]): hit or miss, through
/// `spawn_blocking`.
async fn get_user_blocking<C>(
    State(db): State<Db<C>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError>
where
    C: OperationLog,
    User: CachedOps<C>,
{
    let id = parse_id(&id)?;
    match blocking(move || db.find::<User>(id).map_err(ApiError::from)).await? {
        Some(user) => Ok(user_response(&user)),
        None => Err(no_user(id)),
    }
}

async fn put_user<C>(
    State(db): State<Db<C>>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError>
where
    C: OperationLog,
    User: CachedOps<C>,
{
    let id = parse_id(&id)?;
    let precondition = parse_if_match(&headers)?;
    let op = operation(&headers, &method, &uri, &body)?;
    let changes: Changes = parse_body(&body, "a JSON object with email, name and/or bio")?;
    if let Precondition::Versions(v) = &precondition {
        if v.is_empty() {
            return Err(ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "If-Match compares strongly and weak tags (W/\"…\") never match; send the strong ETag from GET",
            ));
        }
    }
    let (answer, replayed) = db
        .spawn_blocking(move |db| {
            run_write(db, op, |tx| {
                // Read in the transaction, then the versioned UPDATE: a write that lands between
                // the two is a conflict, and the retry re-reads and answers 412 below.
                let current = tx.get::<User>(id)?;
                if let Precondition::Versions(versions) = &precondition {
                    if !versions.contains(&current.version) {
                        return Err(stale(id, current.version));
                    }
                }
                let stored = tx.update(&changes.apply_to(current))?;
                Ok(Answer::user(StatusCode::OK, &stored))
            })
        })
        .await??;
    Ok(answer.into_response(replayed))
}

async fn post_user<C>(
    State(db): State<Db<C>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError>
where
    C: OperationLog,
    User: CachedOps<C>,
{
    let op = operation(&headers, &method, &uri, &body)?;
    let new: NewUser = parse_body(
        &body,
        "a JSON object with id, email, name and bio (optional)",
    )?;
    let (answer, replayed) = db
        .spawn_blocking(move |db| {
            run_write(db, op, |tx| {
            if let Some(existing) = tx.find::<User>(new.id)? {
                return Err(refuse(ApiError::new(
                    StatusCode::CONFLICT,
                    format!(
                        "user {} exists (version {}); to resend a create whose response was lost, send the same Idempotency-Key",
                        existing.id, existing.version
                    ),
                )));
            }
            let stored = tx.insert(&User {
                id: new.id,
                version: 1,
                email: new.email.clone(),
                name: new.name.clone(),
                bio: new.bio.clone(),
            })?;
            let mut answer = Answer::user(StatusCode::CREATED, &stored);
            answer.location = Some(format!("/users/{}", stored.id));
            Ok(answer)
        })
        })
        .await??;
    Ok(answer.into_response(replayed))
}

async fn stats<C>(State(db): State<Db<C>>) -> Json<diesel_l2::Stats>
where
    C: OperationLog,
{
    // Reads in-memory counters only: no database, nothing to move off the async threads.
    Json(db.stats())
}

/// Runs `f` in a transaction, re-run on a conflict (RetryPolicy::default()). With an
/// operation (an `Idempotency-Key`), exactly once: the answer is recorded with the writes,
/// and a later request with the key gets the recorded answer and `true` (a replay).
fn run_write<C, F>(db: &Db<C>, op: Option<Operation>, f: F) -> Result<(Answer, bool), ApiError>
where
    C: OperationLog,
    F: FnMut(&mut Tx<'_, C>) -> Result<Answer, Error>,
{
    let outcome = match op {
        Some(op) => db.retry_once(RetryPolicy::default(), op, f).map(|o| {
            let replayed = o.is_replay();
            (o.into_inner(), replayed)
        }),
        None => db.retry(RetryPolicy::default(), f).map(|a| (a, false)),
    };
    outcome.map_err(ApiError::from)
}

/// `200 OK`: the user as JSON, its version as a strong ETag (serialized straight from the
/// cached row; PUT and POST build the same body as an [`Answer`]).
fn user_response(user: &User) -> Response {
    let etag = HeaderValue::from_str(&format!("\"{}\"", user.version))
        .unwrap_or_else(|_| HeaderValue::from_static("\"\""));
    ([(header::ETAG, etag)], Json(user)).into_response()
}

/// The response a PUT or POST recorded: what the client needs back, replayed as is.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Answer {
    status: u16,
    etag: Option<String>,
    location: Option<String>,
    body: Value,
}

impl Answer {
    /// The user as JSON, with its version as a strong ETag.
    fn user(status: StatusCode, user: &User) -> Self {
        Answer {
            status: status.as_u16(),
            etag: Some(format!("\"{}\"", user.version)),
            location: None,
            body: json!(user),
        }
    }

    fn into_response(self, replayed: bool) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK);
        let mut resp = (status, Json(self.body)).into_response();
        let headers = resp.headers_mut();
        for (name, value) in [(header::ETAG, self.etag), (header::LOCATION, self.location)] {
            if let Some(v) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
                headers.insert(name, v);
            }
        }
        if replayed {
            headers.insert(
                HeaderName::from_static(IDEMPOTENT_REPLAYED),
                HeaderValue::from_static("true"),
            );
        }
        resp
    }
}

/// The operation an `Idempotency-Key` names, fingerprinted with the request's method, path
/// and body; `None` without the header. A malformed or oversized key is 400.
fn operation(
    headers: &HeaderMap,
    method: &Method,
    uri: &Uri,
    body: &[u8],
) -> Result<Option<Operation>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = value.to_str().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "Idempotency-Key must be visible ASCII (a UUID, say)",
        )
    })?;
    if key.is_empty() || key.len() > diesel_l2::inbox::MAX_OPERATION_ID_BYTES {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "Idempotency-Key is {} bytes long; send 1 to {} bytes (a UUID, say)",
                key.len(),
                diesel_l2::inbox::MAX_OPERATION_ID_BYTES
            ),
        ));
    }
    let mut h = Fnv1a128::new();
    for part in [method.as_str().as_bytes(), uri.path().as_bytes(), body] {
        // Lengths first, so no two different requests concatenate to the same bytes.
        h.write(&(part.len() as u64).to_le_bytes());
        h.write(part);
    }
    Ok(Some(
        Operation::new(key).fingerprint(format!("fnv1a128:{:032x}", h.0)),
    ))
}

/// FNV-1a, 128 bits: a hash that is the same in every process and build (std's
/// `DefaultHasher` is not promised to be), so a fingerprint recorded before a restart
/// still matches. It tells requests apart; it is not a defence against forged collisions.
struct Fnv1a128(u128);

impl Fnv1a128 {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;

    fn new() -> Self {
        Fnv1a128(Self::OFFSET)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u128::from(b)).wrapping_mul(Self::PRIME);
        }
    }
}

/// What `If-Match` asks for.
#[derive(Clone, Debug)]
enum Precondition {
    /// `*`: any current version.
    Any,
    /// The strong tags sent (versions); empty when only weak tags were sent.
    Versions(Vec<i64>),
}

/// The fields a PUT changes; absent fields keep their value. `bio: null` clears the bio.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Changes {
    email: Option<String>,
    name: Option<String>,
    // Outer `None`: absent; `Some(None)`: null.
    #[serde(default, deserialize_with = "present")]
    bio: Option<Option<String>>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

impl Changes {
    fn apply_to(&self, mut user: User) -> User {
        if let Some(email) = &self.email {
            user.email.clone_from(email);
        }
        if let Some(name) = &self.name {
            user.name.clone_from(name);
        }
        if let Some(bio) = &self.bio {
            user.bio.clone_from(bio);
        }
        user
    }
}

/// The body of `POST /users`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    id: i64,
    email: String,
    name: String,
    #[serde(default)]
    bio: Option<String>,
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body must be {what}: {e}"),
        )
    })
}

/// Parses `If-Match`: `*`, or a list of entity tags. Missing is 428, malformed is 400.
fn parse_if_match(headers: &HeaderMap) -> Result<Precondition, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Err(ApiError::new(
            StatusCode::PRECONDITION_REQUIRED,
            "updates need If-Match with the ETag of the version you edited (from GET /users/{id}), or If-Match: * to overwrite",
        ));
    };
    let malformed = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "If-Match must be *, or entity tags like \"3\" (quoted), comma-separated",
        )
    };
    let value = value.to_str().map_err(|_| malformed())?.trim();
    if value == "*" {
        return Ok(Precondition::Any);
    }
    let mut versions = Vec::new();
    for tag in value.split(',').map(str::trim) {
        let (weak, quoted) = match tag.strip_prefix("W/") {
            Some(rest) => (true, rest),
            None => (false, tag),
        };
        let inner = quoted
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .ok_or_else(malformed)?;
        // Weak tags are well-formed but never match under If-Match's strong comparison.
        if !weak {
            versions.push(inner.parse::<i64>().map_err(|_| malformed())?);
        }
    }
    Ok(Precondition::Versions(versions))
}

fn parse_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("user ids are integers, not {raw:?}"),
        )
    })
}

fn no_user(id: i64) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no user {id}"))
}

/// 412 for an edit of another version than `current`, as a transaction error (it rolls
/// back, and is not retried).
fn stale(id: i64, current: i64) -> Error {
    refuse(ApiError::with(
        StatusCode::PRECONDITION_FAILED,
        format!(
            "user {id} is at version {current}, not the one you edited: GET it, reapply your change, and send its ETag"
        ),
        json!({ "current_version": current }),
    ))
}

/// An HTTP error decided inside a transaction: it rolls the transaction back (an
/// operation id records nothing) and comes out of `run_write` as itself.
fn refuse(e: ApiError) -> Error {
    Error::Other(Box::new(e))
}

/// Runs blocking diesel-l2 work on tokio's blocking pool ([`Reads::Blocking`]).
async fn blocking<T, F>(f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ApiError> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("handler failed: {e}"),
        )
    })?
}

/// An error response: `{"error": "...", ...details}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    body: Value,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self::with(status, message, json!({}))
    }

    fn with(status: StatusCode, message: impl Into<String>, details: Value) -> Self {
        let mut body = details;
        body["error"] = json!(message.into());
        ApiError { status, body }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.body["error"])
    }
}

impl std::error::Error for ApiError {}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let e = match e {
            // Decided by a handler inside its transaction (`refuse`).
            Error::Other(boxed) => match boxed.downcast::<ApiError>() {
                Ok(api) => return *api,
                Err(other) => Error::Other(other),
            },
            // The library formats the key with `Debug`: for an i64, the number.
            Error::NotFound { id, .. } => {
                return ApiError::new(StatusCode::NOT_FOUND, format!("no user {id}"))
            }
            Error::OperationMismatch { id, .. } => {
                return ApiError::with(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "Idempotency-Key {id:?} was already used for another request (method, path or body differ); use a new key for a new request"
                    ),
                    json!({ "idempotency_key": id }),
                )
            }
            e => e,
        };
        let status = match &e {
            Error::Database(diesel::result::Error::DatabaseError(
                DatabaseErrorKind::UniqueViolation,
                _,
            )) => StatusCode::CONFLICT,
            Error::Pool { .. } | Error::RetriesExhausted { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::warn!(error = %e, "request failed");
        }
        let message = if status == StatusCode::CONFLICT {
            // The unique columns are the id and the email.
            format!("that id or email belongs to another user ({e})")
        } else {
            e.to_string()
        };
        ApiError::new(status, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}
