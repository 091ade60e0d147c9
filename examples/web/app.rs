//! The web example's HTTP service: routes, ETag / If-Match handling, JSON errors.
//!
//! Kept apart from `main.rs` so that `tests/web_example.rs` can include this file with
//! `#[path]` and serve the very same router on `127.0.0.1:0`.
//!
//! - `GET /users/{id}`: the user as JSON, `ETag: "<version>"`; 404 when there is none.
//! - `PUT /users/{id}`: a JSON object with the fields to change (`email`, `name`, `bio`).
//!   Needs `If-Match` with the ETag the client edited: 428 without it, 412 when the user
//!   is at another version (the body says which), 200 with the new ETag on success. A PUT
//!   that sends every field is replayable: repeating it after it committed (a lost
//!   response) answers 200 with the ETag it produced instead of 412. `If-Match: *` updates
//!   whatever version is current.
//! - `GET /stats`: the cache statistics as JSON.
//!
//! The diesel-l2 API is synchronous and blocks on the database, so every handler calls it
//! through `tokio::task::spawn_blocking`, off the async worker threads.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use diesel::prelude::*;
use diesel::r2d2::R2D2Connection;
use diesel::result::DatabaseErrorKind;
use diesel_l2::{Cached, CachedOps, Db, Error, RetryPolicy};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::json;

diesel::table! {
    users (id) {
        id -> BigInt,
        version -> BigInt,
        email -> Text,
        name -> Text,
        bio -> Nullable<Text>,
    }
}

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
    C: R2D2Connection + 'static,
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

/// The service's routes over `db`.
pub fn app<C>(db: Db<C>) -> Router
where
    C: R2D2Connection + 'static,
    User: CachedOps<C>,
{
    Router::new()
        .route("/users/{id}", get(get_user::<C>).put(put_user::<C>))
        .route("/stats", get(stats::<C>))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .with_state(db)
}

async fn get_user<C>(State(db): State<Db<C>>, Path(id): Path<String>) -> Result<Response, ApiError>
where
    C: R2D2Connection + 'static,
    User: CachedOps<C>,
{
    let id = parse_id(&id)?;
    match blocking(move || db.find::<User>(id)).await? {
        Some(user) => Ok(with_etag(&user)),
        None => Err(no_user(id)),
    }
}

async fn put_user<C>(
    State(db): State<Db<C>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError>
where
    C: R2D2Connection + 'static,
    User: CachedOps<C>,
{
    let id = parse_id(&id)?;
    let precondition = parse_if_match(&headers)?;
    let changes: Changes = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body must be a JSON object with email, name and/or bio: {e}"),
        )
    })?;
    match blocking(move || update(&db, id, precondition, &changes)).await? {
        Updated::Stored(user) => Ok(with_etag(&user)),
        Updated::NotFound => Err(no_user(id)),
        Updated::Stale { current } => Err(ApiError::with(
            StatusCode::PRECONDITION_FAILED,
            format!(
                "user {id} is at version {current}, not the one you edited: GET it, reapply your change, and send its ETag"
            ),
            json!({ "current_version": current }),
        )),
        Updated::WeakOnly => Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "If-Match compares strongly and weak tags (W/\"…\") never match; send the strong ETag from GET",
        )),
    }
}

async fn stats<C>(State(db): State<Db<C>>) -> Json<diesel_l2::Stats>
where
    C: R2D2Connection + 'static,
{
    // Reads in-memory counters only: no database, nothing to move off the async threads.
    Json(db.stats())
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

    /// The whole row the client means at `version`, when the body names every field.
    fn full_row(&self, id: i64, version: i64) -> Option<User> {
        Some(User {
            id,
            version,
            email: self.email.clone()?,
            name: self.name.clone()?,
            bio: self.bio.clone()?,
        })
    }
}

enum Updated {
    Stored(User),
    NotFound,
    Stale { current: i64 },
    WeakOnly,
}

/// The PUT itself, on a blocking thread.
fn update<C>(
    db: &Db<C>,
    id: i64,
    precondition: Precondition,
    changes: &Changes,
) -> Result<Updated, Error>
where
    C: R2D2Connection + 'static,
    User: CachedOps<C>,
{
    let versions = match precondition {
        Precondition::Any => {
            // Last writer wins: re-read and re-apply until no one writes in between.
            let stored = db.retry(RetryPolicy::default(), |tx| {
                let current = tx.get::<User>(id)?;
                tx.update(&changes.apply_to(current))
            });
            return match stored {
                Ok(user) => Ok(Updated::Stored(user)),
                Err(Error::NotFound { .. }) => Ok(Updated::NotFound),
                Err(e) => Err(e),
            };
        }
        Precondition::Versions(v) if v.is_empty() => return Ok(Updated::WeakOnly),
        Precondition::Versions(v) => v,
    };
    // From the cache: no SQL on a hit. It is this process's latest committed state (C2);
    // the versioned UPDATE below is the real check.
    let Some(current) = db.find::<User>(id)? else {
        return Ok(Updated::NotFound);
    };
    let replayable = match versions[..] {
        [only] => changes.full_row(id, only),
        _ => None,
    };
    let write = if versions.contains(&current.version) {
        // The usual case: the client edited the current version.
        changes.apply_to((*current).clone())
    } else if let Some(row) = replayable {
        // The client edited an older version but sent every field, so its write from that
        // version is known exactly: `tx.update` either finds it already applied (a
        // repeated PUT whose response was lost) or reports the conflict.
        row
    } else {
        // A partial change to an older version: its result depends on fields the client
        // did not send, as they were at a version we no longer have. Only 412 is safe.
        return Ok(Updated::Stale {
            current: current.version,
        });
    };
    // `already_applied` is taken at its word: a PUT sets state, so when two clients race
    // with the same change from the same version, the later one may get 200 too: the
    // state it asked for holds, written once. (A delta, like "take 3 from stock", must not
    // trust it that way: see the inventory example.)
    match db.transaction(|tx| tx.update(&write)) {
        Ok(written) => Ok(Updated::Stored(written)),
        Err(Error::Conflict {
            found: Some(current),
            ..
        }) => Ok(Updated::Stale { current }),
        Err(Error::Conflict { found: None, .. }) => Ok(Updated::NotFound),
        Err(e) => Err(e),
    }
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

/// 200 with the user as JSON and its version as a strong ETag.
fn with_etag(user: &User) -> Response {
    let etag = HeaderValue::from_str(&format!("\"{}\"", user.version))
        .expect("a quoted integer is a valid header value");
    ([(header::ETAG, etag)], Json(user)).into_response()
}

/// Runs blocking diesel-l2 work on tokio's blocking pool.
async fn blocking<T, F>(f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Error> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("handler failed: {e}"),
            )
        })?
        .map_err(ApiError::from)
}

/// An error response: `{"error": "...", ...details}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    body: serde_json::Value,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self::with(status, message, json!({}))
    }

    fn with(status: StatusCode, message: impl Into<String>, details: serde_json::Value) -> Self {
        let mut body = details;
        body["error"] = json!(message.into());
        ApiError { status, body }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::NotFound { .. } => StatusCode::NOT_FOUND,
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
            // The only unique column besides the id is the email.
            format!("that email belongs to another user ({e})")
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
