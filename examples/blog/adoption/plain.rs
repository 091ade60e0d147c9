//! The blog example's HTTP service: users, posts and comments as a diesel app has them
//! (database-generated ids, `NewX` insertable structs, `AsChangeset` partial updates,
//! unique emails and slugs, `updated_at` set by the app), on plain diesel.
//!
//! Kept apart from `main.rs` so that `tests/web_example.rs` can include this file with
//! `#[path]` and serve the very same router on `127.0.0.1:0`.
//!
//! | route | what it does |
//! |---|---|
//! | `POST /users` | `{"email", "name"}` → 201, `Location`; 409 when the email is taken |
//! | `GET /users/{id}` | the user, `ETag: "<version>"` |
//! | `GET /users/by-email/{email}` | the user with that email |
//! | `POST /users/{id}/unpublish-all` | unpublishes every post of the user |
//! | `POST /posts` | `{"author_id", "title", "body"}` → 201; the slug comes from the title, 409 when taken |
//! | `GET /posts` | the newest published posts (`?limit=`, at most 100) |
//! | `GET /posts/{id}` | the post, `ETag: "<version>"` |
//! | `GET /posts/by-slug/{slug}` | the post with that slug |
//! | `PATCH /posts/{id}` | `{"title"?, "body"?}`, only the fields given; `If-Match: "<version>"` needed (428 without, 412 on another version), `If-Match: *` overwrites |
//! | `DELETE /posts/{id}` | deletes the post and its comments |
//! | `POST /posts/{id}/comments` | `{"author_id", "body"}` → 201 |
//! | `GET /posts/{id}/comments` | the post's comments, oldest first |
//! | `GET /comments/{id}` | the comment |
//!
//! Every read and write runs on tokio's blocking pool with a pooled connection, each write
//! in one transaction. Every response is JSON; errors are `{"error": "..."}`.

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::NaiveDateTime;
use diesel::dsl;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel::result::DatabaseErrorKind;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{json, Value};

diesel::table! {
    users (id) {
        id -> BigInt,
        version -> BigInt,
        #[max_length = 255]
        email -> Varchar,
        name -> Text,
        last_seen_at -> Nullable<Timestamp>,
        created_at -> Timestamp,
    }
}

diesel::table! {
    posts (id) {
        id -> BigInt,
        version -> BigInt,
        author_id -> BigInt,
        #[max_length = 255]
        slug -> Varchar,
        title -> Text,
        body -> Text,
        published -> Bool,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    comments (id) {
        id -> BigInt,
        version -> BigInt,
        post_id -> BigInt,
        author_id -> BigInt,
        body -> Text,
        created_at -> Timestamp,
    }
}

diesel::joinable!(posts -> users (author_id));
diesel::joinable!(comments -> posts (post_id));
diesel::allow_tables_to_appear_in_same_query!(users, posts, comments);

/// The blog's schema, `examples/blog/migrations/sqlite/`.
pub mod migrations {
    use diesel_migrations::{embed_migrations, EmbeddedMigrations};

    pub const SQLITE: EmbeddedMigrations = embed_migrations!("examples/blog/migrations/sqlite");
}

#[derive(Queryable, Selectable, Identifiable, Clone, Debug, Serialize)]
#[diesel(table_name = users)]
pub struct User {
    pub id: i64,
    pub version: i64,
    pub email: String,
    pub name: String,
    #[serde(serialize_with = "timestamp_opt")]
    pub last_seen_at: Option<NaiveDateTime>,
    #[serde(serialize_with = "timestamp")]
    pub created_at: NaiveDateTime,
}

#[derive(Queryable, Selectable, Identifiable, Associations, Clone, Debug, Serialize)]
#[diesel(table_name = posts)]
#[diesel(belongs_to(User, foreign_key = author_id))]
pub struct Post {
    pub id: i64,
    pub version: i64,
    pub author_id: i64,
    pub slug: String,
    pub title: String,
    pub body: String,
    pub published: bool,
    #[serde(serialize_with = "timestamp")]
    pub created_at: NaiveDateTime,
    #[serde(serialize_with = "timestamp")]
    pub updated_at: NaiveDateTime,
}

#[derive(Queryable, Selectable, Identifiable, Associations, Clone, Debug, Serialize)]
#[diesel(table_name = comments)]
#[diesel(belongs_to(Post))]
pub struct Comment {
    pub id: i64,
    pub version: i64,
    pub post_id: i64,
    pub author_id: i64,
    pub body: String,
    #[serde(serialize_with = "timestamp")]
    pub created_at: NaiveDateTime,
}

/// The body of `POST /users`, inserted as is: the database picks the id.
#[derive(Insertable, Deserialize, Clone, Debug)]
#[diesel(table_name = users)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub email: String,
    pub name: String,
}

/// The body of `POST /posts`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct PostForm {
    pub author_id: i64,
    pub title: String,
    pub body: String,
}

#[derive(Insertable, Debug)]
#[diesel(table_name = posts)]
pub struct NewPost<'a> {
    pub author_id: i64,
    pub slug: &'a str,
    pub title: &'a str,
    pub body: &'a str,
    pub updated_at: NaiveDateTime,
}

/// The body of `POST /posts/{id}/comments`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct CommentForm {
    pub author_id: i64,
    pub body: String,
}

#[derive(Insertable, Debug)]
#[diesel(table_name = comments)]
pub struct NewComment<'a> {
    pub post_id: i64,
    pub author_id: i64,
    pub body: &'a str,
}

/// The body of `PATCH /posts/{id}`: the fields to change (absent ones are left alone);
/// `updated_at` is set here, not by the client.
#[derive(AsChangeset, Deserialize, Debug)]
#[diesel(table_name = posts)]
#[serde(deny_unknown_fields)]
pub struct UpdatePost {
    pub title: Option<String>,
    pub body: Option<String>,
    #[serde(skip_deserializing, default = "now")]
    pub updated_at: NaiveDateTime,
}

/// When a user last wrote something: the last writer wins.
#[derive(AsChangeset, Debug)]
#[diesel(table_name = users)]
pub struct LastSeen {
    pub last_seen_at: NaiveDateTime,
}

/// What `POST /users/{id}/unpublish-all` sets on each post.
#[derive(AsChangeset, Debug)]
#[diesel(table_name = posts)]
pub struct Unpublish {
    pub published: bool,
    pub updated_at: NaiveDateTime,
}

/// The connection type the blog runs on.
pub type Conn = diesel::sqlite::SqliteConnection;

/// The connection pool the handlers share.
pub type DbPool = Pool<ConnectionManager<Conn>>;

/// The newest published posts.
fn newest_posts(conn: &mut Conn, limit: i64) -> QueryResult<Vec<Post>> {
    posts::table
        .filter(posts::published.eq(true))
        .order(posts::id.desc())
        .limit(limit)
        .select(Post::as_select())
        .load(conn)
}

/// The handlers.
pub struct Blog;

impl Blog {
    /// The routes.
    pub fn router(db: DbPool) -> Router {
        Router::new()
            .route("/users", post(Self::create_user))
            .route("/users/{id}", get(Self::get_user))
            .route("/users/by-email/{email}", get(Self::user_by_email))
            .route("/users/{id}/unpublish-all", post(Self::unpublish_all))
            .route("/posts", post(Self::create_post).get(Self::newest_posts))
            .route(
                "/posts/{id}",
                get(Self::get_post)
                    .patch(Self::update_post)
                    .delete(Self::delete_post),
            )
            .route("/posts/by-slug/{slug}", get(Self::post_by_slug))
            .route(
                "/posts/{id}/comments",
                post(Self::create_comment).get(Self::comments_of),
            )
            .route("/comments/{id}", get(Self::get_comment))
            .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
            .with_state(db)
    }

    async fn create_user(State(db): State<DbPool>, body: Bytes) -> Result<Response, ApiError> {
        let new: NewUser = json_body(&body, "{\"email\", \"name\"}")?;
        if !new.email.contains('@') || new.name.trim().is_empty() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "an email with an @ and a name are needed",
            ));
        }
        write(&db, move |conn| {
            let taken = users::table.filter(users::email.eq(&new.email));
            if diesel::select(dsl::exists(taken)).get_result(conn)? {
                return Err(refuse(
                    StatusCode::CONFLICT,
                    format!("{} is taken", new.email),
                ));
            }
            let user = diesel::insert_into(users::table)
                .values(&new)
                .returning(User::as_returning())
                .get_result(conn)?;
            Ok(Answer::created(
                format!("/users/{}", user.id),
                user.version,
                &user,
            ))
        })
        .await
    }

    async fn get_user(
        State(db): State<DbPool>,
        Path(id): Path<String>,
    ) -> Result<Response, ApiError> {
        let id = parse_id(&id)?;
        let user = blocking(&db, move |conn| {
            Ok(users::table
                .find(id)
                .select(User::as_select())
                .first(conn)
                .optional()?)
        })
        .await?;
        match user {
            Some(user) => Ok(with_etag(user.version, &user)),
            None => Err(not_found("user", id)),
        }
    }

    async fn user_by_email(
        State(db): State<DbPool>,
        Path(email): Path<String>,
    ) -> Result<Response, ApiError> {
        let key = email.clone();
        let user = blocking(&db, move |conn| {
            Ok(users::table
                .filter(users::email.eq(key))
                .select(User::as_select())
                .first(conn)
                .optional()?)
        })
        .await?;
        match user {
            Some(user) => Ok(with_etag(user.version, &user)),
            None => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no user with email {email}"),
            )),
        }
    }

    async fn unpublish_all(
        State(db): State<DbPool>,
        Path(id): Path<String>,
    ) -> Result<Response, ApiError> {
        let id = parse_id(&id)?;
        write(&db, move |conn| {
            if !diesel::select(dsl::exists(users::table.find(id))).get_result(conn)? {
                return Err(not_found("user", id));
            }
            let published = posts::author_id.eq(id).and(posts::published.eq(true));
            let unpublish = Unpublish {
                published: false,
                updated_at: now(),
            };
            let mut ids: Vec<i64> = diesel::update(posts::table.filter(published))
                .set((unpublish, posts::version.eq(posts::version + 1)))
                .returning(posts::id)
                .get_results(conn)?;
            ids.sort_unstable();
            Ok(Answer::ok(json!({ "unpublished": ids })))
        })
        .await
    }

    async fn create_post(State(db): State<DbPool>, body: Bytes) -> Result<Response, ApiError> {
        let form: PostForm = json_body(&body, "{\"author_id\", \"title\", \"body\"}")?;
        let slug = slugify(&form.title)?;
        write(&db, move |conn| {
            let author = users::table.find(form.author_id);
            if !diesel::select(dsl::exists(author)).get_result(conn)? {
                return Err(no_author(form.author_id));
            }
            let taken = posts::table.filter(posts::slug.eq(&slug));
            if diesel::select(dsl::exists(taken)).get_result(conn)? {
                return Err(refuse(
                    StatusCode::CONFLICT,
                    format!("the slug {slug:?} is taken: choose another title"),
                ));
            }
            let post = diesel::insert_into(posts::table)
                .values(NewPost {
                    author_id: form.author_id,
                    slug: &slug,
                    title: &form.title,
                    body: &form.body,
                    updated_at: now(),
                })
                .returning(Post::as_returning())
                .get_result(conn)?;
            let seen = LastSeen {
                last_seen_at: post.updated_at,
            };
            diesel::update(users::table.find(form.author_id))
                .set((seen, users::version.eq(users::version + 1)))
                .execute(conn)?;
            Ok(Answer::created(
                format!("/posts/{}", post.id),
                post.version,
                &post,
            ))
        })
        .await
    }

    async fn newest_posts(
        State(db): State<DbPool>,
        page: Result<Query<Page>, QueryRejection>,
    ) -> Result<Response, ApiError> {
        let Query(page) =
            page.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
        let limit = page.limit.unwrap_or(20).clamp(1, 100);
        let posts = blocking(&db, move |conn| Ok(newest_posts(conn, limit)?)).await?;
        Ok(Json(posts).into_response())
    }

    async fn get_post(
        State(db): State<DbPool>,
        Path(id): Path<String>,
    ) -> Result<Response, ApiError> {
        let id = parse_id(&id)?;
        let post = blocking(&db, move |conn| {
            Ok(posts::table
                .find(id)
                .select(Post::as_select())
                .first(conn)
                .optional()?)
        })
        .await?;
        match post {
            Some(post) => Ok(with_etag(post.version, &post)),
            None => Err(not_found("post", id)),
        }
    }

    async fn post_by_slug(
        State(db): State<DbPool>,
        Path(slug): Path<String>,
    ) -> Result<Response, ApiError> {
        let key = slug.clone();
        let post = blocking(&db, move |conn| {
            Ok(posts::table
                .filter(posts::slug.eq(key))
                .select(Post::as_select())
                .first(conn)
                .optional()?)
        })
        .await?;
        match post {
            Some(post) => Ok(with_etag(post.version, &post)),
            None => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no post with slug {slug:?}"),
            )),
        }
    }

    async fn update_post(
        State(db): State<DbPool>,
        Path(id): Path<String>,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response, ApiError> {
        let id = parse_id(&id)?;
        let if_match = if_match(&headers)?;
        let changes: UpdatePost = json_body(&body, "{\"title\"?, \"body\"?}")?;
        if changes
            .title
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "the title is empty"));
        }
        let post = blocking(&db, move |conn| {
            conn.transaction(|conn| {
                let bump = (&changes, posts::version.eq(posts::version + 1));
                let updated = match if_match {
                    // The version the client edited: another one is a conflict (412).
                    IfMatch::Version(version) => {
                        diesel::update(posts::table.find(id).filter(posts::version.eq(version)))
                            .set(bump)
                            .returning(Post::as_returning())
                            .get_result(conn)
                            .optional()?
                    }
                    // `If-Match: *`: whatever version is current; the last writer wins.
                    IfMatch::Any => diesel::update(posts::table.find(id))
                        .set(bump)
                        .returning(Post::as_returning())
                        .get_result(conn)
                        .optional()?,
                };
                if let Some(post) = updated {
                    return Ok(post);
                }
                // Nothing updated: another version (412) or no such post (404).
                let current = posts::table
                    .find(id)
                    .select(posts::version)
                    .first::<i64>(conn)
                    .optional()?;
                Err(match current {
                    Some(current) => stale("post", id, current),
                    None => not_found("post", id),
                })
            })
        })
        .await?;
        Ok(with_etag(post.version, &post))
    }

    async fn delete_post(
        State(db): State<DbPool>,
        Path(id): Path<String>,
    ) -> Result<Response, ApiError> {
        let id = parse_id(&id)?;
        let deleted = blocking(&db, move |conn| {
            conn.transaction(|conn| {
                // The comments first (their foreign key), then the post.
                let comments = diesel::delete(comments::table.filter(comments::post_id.eq(id)))
                    .execute(conn)?;
                if diesel::delete(posts::table.find(id)).execute(conn)? == 0 {
                    return Err(not_found("post", id));
                }
                Ok(json!({ "deleted": id, "comments_deleted": comments }))
            })
        })
        .await?;
        Ok(Json(deleted).into_response())
    }

    async fn create_comment(
        State(db): State<DbPool>,
        Path(post_id): Path<String>,
        body: Bytes,
    ) -> Result<Response, ApiError> {
        let post_id = parse_id(&post_id)?;
        let form: CommentForm = json_body(&body, "{\"author_id\", \"body\"}")?;
        write(&db, move |conn| {
            if !diesel::select(dsl::exists(posts::table.find(post_id))).get_result(conn)? {
                return Err(refuse(StatusCode::NOT_FOUND, format!("no post {post_id}")));
            }
            let author = users::table.find(form.author_id);
            if !diesel::select(dsl::exists(author)).get_result(conn)? {
                return Err(no_author(form.author_id));
            }
            let comment = diesel::insert_into(comments::table)
                .values(NewComment {
                    post_id,
                    author_id: form.author_id,
                    body: &form.body,
                })
                .returning(Comment::as_returning())
                .get_result(conn)?;
            let seen = LastSeen {
                last_seen_at: now(),
            };
            diesel::update(users::table.find(form.author_id))
                .set((seen, users::version.eq(users::version + 1)))
                .execute(conn)?;
            Ok(Answer::created(
                format!("/comments/{}", comment.id),
                comment.version,
                &comment,
            ))
        })
        .await
    }

    async fn comments_of(
        State(db): State<DbPool>,
        Path(post_id): Path<String>,
    ) -> Result<Response, ApiError> {
        let post_id = parse_id(&post_id)?;
        let comments = blocking(&db, move |conn| {
            let post = posts::table
                .find(post_id)
                .select(Post::as_select())
                .first(conn)
                .optional()?
                .ok_or_else(|| not_found("post", post_id))?;
            Ok(Comment::belonging_to(&post)
                .order(comments::id)
                .select(Comment::as_select())
                .load(conn)?)
        })
        .await?;
        Ok(Json(comments).into_response())
    }

    async fn get_comment(
        State(db): State<DbPool>,
        Path(id): Path<String>,
    ) -> Result<Response, ApiError> {
        let id = parse_id(&id)?;
        let comment = blocking(&db, move |conn| {
            Ok(comments::table
                .find(id)
                .select(Comment::as_select())
                .first(conn)
                .optional()?)
        })
        .await?;
        match comment {
            Some(comment) => Ok(with_etag(comment.version, &comment)),
            None => Err(not_found("comment", id)),
        }
    }
}

/// `?limit=` of `GET /posts`.
#[derive(Deserialize, Debug)]
pub struct Page {
    pub limit: Option<i64>,
}

/// Runs a write in a transaction on tokio's blocking pool.
async fn write<F>(db: &DbPool, f: F) -> Result<Response, ApiError>
where
    F: FnOnce(&mut Conn) -> Result<Answer, ApiError> + Send + 'static,
{
    let answer = blocking(db, move |conn| conn.transaction(f)).await?;
    Ok(answer.into_response())
}

/// Runs `f` with a pooled connection on tokio's blocking pool.
async fn blocking<T, F>(db: &DbPool, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&mut Conn) -> Result<T, ApiError> + Send + 'static,
{
    let db = db.clone();
    tokio::task::spawn_blocking(move || f(&mut *db.get().map_err(unavailable)?))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

/// The response of a POST.
#[derive(Clone, Debug)]
struct Answer {
    status: u16,
    etag: Option<String>,
    location: Option<String>,
    body: Value,
}

impl Answer {
    /// 201 with `Location` and the new row, its version as the ETag.
    fn created<T: Serialize>(location: String, version: i64, row: &T) -> Self {
        Answer {
            status: StatusCode::CREATED.as_u16(),
            etag: Some(etag(version)),
            location: Some(location),
            body: json!(row),
        }
    }

    /// 200 with `body`.
    fn ok(body: Value) -> Self {
        Answer {
            status: StatusCode::OK.as_u16(),
            etag: None,
            location: None,
            body,
        }
    }

    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK);
        let mut resp = (status, Json(self.body)).into_response();
        let headers = resp.headers_mut();
        for (name, value) in [(header::ETAG, self.etag), (header::LOCATION, self.location)] {
            if let Some(v) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
                headers.insert(name, v);
            }
        }
        resp
    }
}

fn etag(version: i64) -> String {
    format!("\"{version}\"")
}

/// 200: `row` as JSON with `ETag: "<version>"`.
fn with_etag<T: Serialize>(version: i64, row: &T) -> Response {
    let tag = HeaderValue::from_str(&etag(version)).unwrap_or(HeaderValue::from_static("\"\""));
    ([(header::ETAG, tag)], Json(row)).into_response()
}

/// What `If-Match` asks for.
#[derive(Clone, Copy, Debug)]
enum IfMatch {
    /// `*`: any version.
    Any,
    /// `"<version>"`.
    Version(i64),
}

/// Parses `If-Match`: `*` or one strong ETag. Missing is 428, anything else 400.
fn if_match(headers: &HeaderMap) -> Result<IfMatch, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Err(ApiError::new(
            StatusCode::PRECONDITION_REQUIRED,
            "updates need If-Match with the ETag of the version you edited (from GET), or If-Match: * to overwrite",
        ));
    };
    let value = value.to_str().unwrap_or_default().trim();
    if value == "*" {
        return Ok(IfMatch::Any);
    }
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .and_then(|v| v.parse().ok())
        .map(IfMatch::Version)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "If-Match must be * or one ETag from GET, like \"3\" (quoted)",
            )
        })
}

/// The slug of a title: lower-case letters and digits, words joined by `-`.
fn slugify(title: &str) -> Result<String, ApiError> {
    let mut slug = String::new();
    for word in title
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        if !slug.is_empty() {
            slug.push('-');
        }
        slug.extend(word.chars().flat_map(char::to_lowercase));
    }
    if slug.is_empty() || slug.len() > 200 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "a title needs 1 to 200 characters of letters or digits",
        ));
    }
    Ok(slug)
}

/// The time the app writes to `updated_at` and `last_seen_at` (UTC, whole microseconds:
/// what every backend stores).
fn now() -> NaiveDateTime {
    let now = chrono::Utc::now().naive_utc();
    let micros = now.and_utc().timestamp_micros();
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.naive_utc())
        .unwrap_or(now)
}

/// Timestamps as ISO 8601 in UTC (this crate builds chrono without its `serde` feature).
fn timestamp<S: Serializer>(t: &NaiveDateTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&t.format("%Y-%m-%dT%H:%M:%S%.6fZ"))
}

fn timestamp_opt<S: Serializer>(t: &Option<NaiveDateTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => timestamp(t, s),
        None => s.serialize_none(),
    }
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body must be a JSON object {what}: {e}"),
        )
    })
}

fn parse_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("ids are integers, not {raw:?}"),
        )
    })
}

fn not_found(what: &str, id: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no {what} {id}"))
}

/// 412 for an edit of another version than `current`.
fn stale(what: &str, id: impl std::fmt::Display, current: i64) -> ApiError {
    ApiError::with(
        StatusCode::PRECONDITION_FAILED,
        format!(
            "{what} {id} is at version {current}, not the one you edited: GET it, reapply your change, and send its ETag"
        ),
        json!({ "current_version": current }),
    )
}

fn no_author(id: i64) -> ApiError {
    refuse(
        StatusCode::UNPROCESSABLE_ENTITY,
        format!("author_id {id}: no such user"),
    )
}

/// An HTTP error decided inside a transaction: it rolls the transaction back and comes
/// out of `write` as itself.
fn refuse(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError::new(status, message)
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("no database connection: {e}"),
    )
}

/// An error response: `{"error": "...", ...details}`.
#[derive(Debug)]
pub struct ApiError {
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

impl From<diesel::result::Error> for ApiError {
    fn from(e: diesel::result::Error) -> Self {
        use DatabaseErrorKind::{ForeignKeyViolation, UniqueViolation};
        let status = match &e {
            diesel::result::Error::NotFound => {
                return ApiError::new(StatusCode::NOT_FOUND, "not found")
            }
            diesel::result::Error::DatabaseError(UniqueViolation, _) => StatusCode::CONFLICT,
            diesel::result::Error::DatabaseError(ForeignKeyViolation, _) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::warn!(error = %e, "request failed");
        }
        ApiError::new(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}
