//! The blog example's HTTP service: users, posts and comments as a diesel app has them
//! (database-generated ids, `NewX` insertable structs, `AsChangeset` partial updates,
//! unique emails and slugs, `updated_at` set by the app), read through diesel-l2's cache
//! and written through it at commit.
//!
//! Kept apart from `main.rs` so that `tests/web_example.rs` can include this file with
//! `#[path]` and serve the very same router on `127.0.0.1:0`.
//!
//! | route | what it does | diesel-l2 |
//! |---|---|---|
//! | `POST /users` | `{"email", "name"}` → 201, `Location`; 409 when the email is taken | `retry_once_async` / `retry_async`, `Tx::find_by`, `Tx::insert_new` |
//! | `GET /users/{id}` | the user, `ETag: "<version>"` | `find_async` |
//! | `GET /users/by-email/{email}` | the user with that email (a cached key answered inline) | `Db::find_by_async` |
//! | `POST /users/{id}/unpublish-all` | unpublishes every post of the user | `Tx::update_where` |
//! | `POST /posts` | `{"author_id", "title", "body"}` → 201; the slug comes from the title, 409 when taken | `Tx::insert_new`, `Tx::update_changes_unversioned` (the author's `last_seen_at`) |
//! | `GET /posts` | the newest published posts (`?limit=`, at most 100) | `Db::query_async`: the query cache, per `limit` (a stored page answered inline), unusable after any committed write to `posts` |
//! | `GET /posts/{id}` | the post, `ETag: "<version>"` | `find_async` |
//! | `GET /posts/by-slug/{slug}` | the post with that slug (a cached key answered inline) | `Db::find_by_async` |
//! | `PATCH /posts/{id}` | `{"title"?, "body"?}`, only the fields given; `If-Match: "<version>"` needed (428 without, 412 on another version), `If-Match: *` overwrites | `transaction_async` + `Tx::update_changes` / `update_changes_unversioned` |
//! | `DELETE /posts/{id}` | deletes the post and its comments | `retry_async`, `Tx::delete_where`, `Tx::delete` |
//! | `POST /posts/{id}/comments` | `{"author_id", "body"}` → 201 | `Tx::insert_new` |
//! | `GET /posts/{id}/comments` | the post's comments, oldest first | `get_async` for the post, `find_all_by_async(CommentByPostId(id))`: a cached list, answered inline on a hit |
//! | `GET /comments/{id}` | the comment | `find_async` |
//! | `GET /stats` | the cache's counters as JSON | `Db::stats` |
//!
//! **`Idempotency-Key`** on every POST: the request runs through
//! [`Db::retry_once_async`] with the key as the operation id, and its response is
//! recorded in the transaction of its writes (C6). The same request sent again with the
//! key gets the recorded status, headers and body, with `Idempotent-Replayed: true`, and
//! writes nothing; the key with another method, path or body is 422. Without a key a POST
//! is re-run on a version conflict ([`Db::retry_async`]).
//!
//! Reads by id are answered inline on the async worker when cached
//! ([`Db::find_async`]); misses, lookups by email or slug, lists and writes run on
//! tokio's blocking pool. Every response is JSON; errors are `{"error": "..."}`.

use std::marker::PhantomData;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::NaiveDateTime;
use diesel::dsl;
use diesel::prelude::*;
use diesel::result::DatabaseErrorKind;
use diesel_l2::{
    Cached, CachedOps, ChangeFeed, ChangesetOps, Db, DbPool, DeleteWhereOps, Error, IndexOps,
    InsertOps, List, ListenConfig, Operation, OperationLog, RetryPolicy, RetryableError, Tx,
    UniqueOps, UpdateWhereOps,
};
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

/// The blog's schema, `examples/blog/migrations/<backend>/`: the tables, the change-feed
/// triggers and the operations table of `Idempotency-Key`.
#[allow(dead_code)] // each build uses the backends it was compiled with
pub mod migrations {
    use diesel_migrations::{embed_migrations, EmbeddedMigrations};

    pub const SQLITE: EmbeddedMigrations = embed_migrations!("examples/blog/migrations/sqlite");
    pub const POSTGRES: EmbeddedMigrations = embed_migrations!("examples/blog/migrations/postgres");
    pub const MYSQL: EmbeddedMigrations = embed_migrations!("examples/blog/migrations/mysql");
}

/// The request header that makes a POST exactly-once.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The response header that marks a replayed response.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

#[derive(Queryable, Selectable, Identifiable, Clone, Debug, Serialize, Cached)]
#[diesel(table_name = users)]
#[cache(ttl = "10m", max_entries = 100_000)]
pub struct User {
    pub id: i64,
    pub version: i64,
    #[cache(unique)]
    pub email: String,
    pub name: String,
    #[serde(serialize_with = "timestamp_opt")]
    pub last_seen_at: Option<NaiveDateTime>,
    #[serde(serialize_with = "timestamp")]
    pub created_at: NaiveDateTime,
}

#[derive(Queryable, Selectable, Identifiable, Associations, Clone, Debug, Serialize, Cached)]
#[diesel(table_name = posts)]
#[diesel(belongs_to(User, foreign_key = author_id))]
#[cache(ttl = "10m", max_entries = 100_000)]
pub struct Post {
    pub id: i64,
    pub version: i64,
    pub author_id: i64,
    #[cache(unique)]
    pub slug: String,
    pub title: String,
    pub body: String,
    pub published: bool,
    #[serde(serialize_with = "timestamp")]
    pub created_at: NaiveDateTime,
    #[serde(serialize_with = "timestamp")]
    pub updated_at: NaiveDateTime,
}

#[derive(Queryable, Selectable, Identifiable, Associations, Clone, Debug, Serialize, Cached)]
#[diesel(table_name = comments)]
#[diesel(belongs_to(Post))]
#[cache(ttl = "10m", max_entries = 100_000)]
pub struct Comment {
    pub id: i64,
    pub version: i64,
    /// `#[cache(index)]`: a post's comments are a cached list (`CommentByPostId`).
    #[cache(index)]
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

/// `posts::author_id.eq(id).and(posts::published.eq(true))`: a user's published posts.
pub type PublishedPostsOf =
    dsl::And<dsl::Eq<posts::author_id, i64>, dsl::Eq<posts::published, bool>>;
/// `comments::post_id.eq(id)`: a post's comments.
pub type CommentsOf = dsl::Eq<comments::post_id, i64>;

/// The future of [`Backend::newest_posts`].
pub type NewestPosts =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<List<Post>, Error>> + Send>>;

/// A connection type the blog runs on (SQLite, PostgreSQL, MariaDB/MySQL; implemented
/// below for each backend this build has). The handlers are generic over it, so the
/// example can pick its database at run time; an app on one backend writes its
/// connection type instead and needs none of this.
pub trait Backend: OperationLog + ChangeFeed {
    /// A `Db` over `pool` caching the blog's three models, listening for changes made by
    /// other processes when `listen` is given (C7).
    fn db(pool: DbPool<Self>, listen: Option<ListenConfig>) -> Result<Db<Self>, Error>;
    /// The service's routes over `db`.
    fn app(db: Db<Self>) -> Router;
    /// The newest published posts, from the query cache: stored per `limit`, unusable
    /// after any committed write to `posts` (C10). A stored page is answered on the
    /// calling task; a miss runs on the blocking pool (`Db::query_async`).
    fn newest_posts(db: Db<Self>, limit: i64) -> NewestPosts;
}

macro_rules! backend {
    ($($feature:literal => $conn:ty),* $(,)?) => {$(
        #[cfg(feature = $feature)]
        impl Backend for $conn {
            fn db(pool: DbPool<Self>, listen: Option<ListenConfig>) -> Result<Db<Self>, Error> {
                let db = Db::builder(pool)
                    .cache::<User>()
                    .cache::<Post>()
                    .cache::<Comment>();
                match listen {
                    Some(listen) => db.listen(listen).build(),
                    None => db.build(),
                }
            }

            fn app(db: Db<Self>) -> Router {
                Blog::<Self>::router(db)
            }

            fn newest_posts(db: Db<Self>, limit: i64) -> NewestPosts {
                Box::pin(async move {
                    db.query_async::<Post, _>(
                        posts::table
                            .filter(posts::published.eq(true))
                            .order(posts::id.desc())
                            .limit(limit)
                            .select(Post::as_select()),
                    )
                    .await
                })
            }
        }
    )*};
}

backend!(
    "sqlite" => diesel::sqlite::SqliteConnection,
    "postgres" => diesel::pg::PgConnection,
    "mysql" => diesel::mysql::MysqlConnection,
);

/// The handlers. The where-clause names what `#[derive(Cached)]` generates for the models
/// on each backend, which code generic over the connection type has to spell out.
pub struct Blog<C>(PhantomData<C>);

impl<C> Blog<C>
where
    C: Backend,
    User: CachedOps<C> + for<'a> InsertOps<C, &'a NewUser> + ChangesetOps<C, LastSeen>,
    Post: CachedOps<C>
        + for<'a> InsertOps<C, NewPost<'a>>
        + for<'a> ChangesetOps<C, &'a UpdatePost>
        + UpdateWhereOps<C, PublishedPostsOf, Unpublish>,
    Comment: CachedOps<C> + for<'a> InsertOps<C, NewComment<'a>> + DeleteWhereOps<C, CommentsOf>,
    UserByEmail: UniqueOps<C>,
    PostBySlug: UniqueOps<C>,
    CommentByPostId: IndexOps<C>,
{
    /// The routes.
    pub fn router(db: Db<C>) -> Router {
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
            .route("/stats", get(Self::stats))
            .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
            .with_state(db)
    }

    async fn create_user(
        State(db): State<Db<C>>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response, ApiError> {
        let op = idempotency_key(&headers, &method, &uri, &body)?;
        let new: NewUser = json_body(&body, "{\"email\", \"name\"}")?;
        if !new.email.contains('@') || new.name.trim().is_empty() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "an email with an @ and a name are needed",
            ));
        }
        write(&db, op, move |tx| {
            if tx.find_by(UserByEmail(new.email.clone()))?.is_some() {
                return Err(refuse(
                    StatusCode::CONFLICT,
                    format!("{} is taken", new.email),
                ));
            }
            let user = tx.insert_new::<User, _>(&new)?;
            Ok(Answer::created(
                format!("/users/{}", user.id),
                user.version,
                &user,
            ))
        })
        .await
    }

    async fn get_user(
        State(db): State<Db<C>>,
        Path(id): Path<String>,
    ) -> Result<Response, ApiError> {
        let id = parse_id(&id)?;
        match db.find_async::<User>(id).await? {
            Some(user) => Ok(with_etag(user.version, &*user)),
            None => Err(not_found("user", id)),
        }
    }

    async fn user_by_email(
        State(db): State<Db<C>>,
        Path(email): Path<String>,
    ) -> Result<Response, ApiError> {
        let key = UserByEmail(email.clone());
        match db.find_by_async(key).await? {
            Some(user) => Ok(with_etag(user.version, &*user)),
            None => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no user with email {email}"),
            )),
        }
    }

    async fn unpublish_all(
        State(db): State<Db<C>>,
        Path(id): Path<String>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response, ApiError> {
        let id = parse_id(&id)?;
        let op = idempotency_key(&headers, &method, &uri, &body)?;
        write(&db, op, move |tx| {
            tx.get::<User>(id)?;
            let published = posts::author_id.eq(id).and(posts::published.eq(true));
            let unpublish = Unpublish {
                published: false,
                updated_at: now(),
            };
            let mut ids = tx.update_where::<Post, _, _>(published, unpublish)?;
            ids.sort_unstable();
            Ok(Answer::ok(json!({ "unpublished": ids })))
        })
        .await
    }

    async fn create_post(
        State(db): State<Db<C>>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response, ApiError> {
        let op = idempotency_key(&headers, &method, &uri, &body)?;
        let form: PostForm = json_body(&body, "{\"author_id\", \"title\", \"body\"}")?;
        let slug = slugify(&form.title)?;
        write(&db, op, move |tx| {
            if tx.find::<User>(form.author_id)?.is_none() {
                return Err(no_author(form.author_id));
            }
            if tx.find_by(PostBySlug(slug.clone()))?.is_some() {
                return Err(refuse(
                    StatusCode::CONFLICT,
                    format!("the slug {slug:?} is taken: choose another title"),
                ));
            }
            let post = tx.insert_new::<Post, _>(NewPost {
                author_id: form.author_id,
                slug: &slug,
                title: &form.title,
                body: &form.body,
                updated_at: now(),
            })?;
            let seen = LastSeen {
                last_seen_at: post.updated_at,
            };
            tx.update_changes_unversioned::<User, _>(form.author_id, seen)?;
            Ok(Answer::created(
                format!("/posts/{}", post.id),
                post.version,
                &post,
            ))
        })
        .await
    }

    async fn newest_posts(
        State(db): State<Db<C>>,
        page: Result<Query<Page>, QueryRejection>,
    ) -> Result<Response, ApiError> {
        let Query(page) =
            page.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
        let limit = page.limit.unwrap_or(20).clamp(1, 100);
        // The query cache: a stored page inline, a miss on the blocking pool.
        let posts = C::newest_posts(db, limit).await?;
        let posts: Vec<&Post> = posts.iter().map(|p| &**p).collect();
        Ok(Json(posts).into_response())
    }

    async fn get_post(
        State(db): State<Db<C>>,
        Path(id): Path<String>,
    ) -> Result<Response, ApiError> {
        let id = parse_id(&id)?;
        match db.find_async::<Post>(id).await? {
            Some(post) => Ok(with_etag(post.version, &*post)),
            None => Err(not_found("post", id)),
        }
    }

    async fn post_by_slug(
        State(db): State<Db<C>>,
        Path(slug): Path<String>,
    ) -> Result<Response, ApiError> {
        let key = PostBySlug(slug.clone());
        match db.find_by_async(key).await? {
            Some(post) => Ok(with_etag(post.version, &*post)),
            None => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no post with slug {slug:?}"),
            )),
        }
    }

    async fn update_post(
        State(db): State<Db<C>>,
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
        let post = db
            .transaction_async(move |tx| match if_match {
                // The version the client edited: another one is a conflict (412).
                IfMatch::Version(version) => tx.update_changes::<Post, _>(id, version, &changes),
                // `If-Match: *`: whatever version is current; the last writer wins.
                IfMatch::Any => tx.update_changes_unversioned::<Post, _>(id, &changes),
            })
            .await?;
        Ok(with_etag(post.version, &post))
    }

    async fn delete_post(
        State(db): State<Db<C>>,
        Path(id): Path<String>,
    ) -> Result<Response, ApiError> {
        let id = parse_id(&id)?;
        let deleted = db
            .retry_async_with_error(RetryPolicy::default(), move |tx| -> Result<_, ApiError> {
                let post = tx.get::<Post>(id)?;
                // The comments first (their foreign key), by predicate; then the post, at
                // the version just read (a write in between is a conflict, and a retry).
                let comments = tx.delete_where::<Comment, _>(comments::post_id.eq(id))?;
                tx.delete(&post)?;
                Ok(json!({ "deleted": id, "comments_deleted": comments.len() }))
            })
            .await?;
        Ok(Json(deleted).into_response())
    }

    async fn create_comment(
        State(db): State<Db<C>>,
        Path(post_id): Path<String>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response, ApiError> {
        let post_id = parse_id(&post_id)?;
        let op = idempotency_key(&headers, &method, &uri, &body)?;
        let form: CommentForm = json_body(&body, "{\"author_id\", \"body\"}")?;
        write(&db, op, move |tx| {
            if tx.find::<Post>(post_id)?.is_none() {
                return Err(refuse(StatusCode::NOT_FOUND, format!("no post {post_id}")));
            }
            if tx.find::<User>(form.author_id)?.is_none() {
                return Err(no_author(form.author_id));
            }
            let comment = tx.insert_new::<Comment, _>(NewComment {
                post_id,
                author_id: form.author_id,
                body: &form.body,
            })?;
            let seen = LastSeen {
                last_seen_at: now(),
            };
            tx.update_changes_unversioned::<User, _>(form.author_id, seen)?;
            Ok(Answer::created(
                format!("/comments/{}", comment.id),
                comment.version,
                &comment,
            ))
        })
        .await
    }

    async fn comments_of(
        State(db): State<Db<C>>,
        Path(post_id): Path<String>,
    ) -> Result<Response, ApiError> {
        let post_id = parse_id(&post_id)?;
        // The post from the cache (a missing one is `Error::NotFound`, a 404).
        db.get_async::<Post>(post_id).await?;
        // A cached list, answered inline on a hit; invalidated by the commit of any
        // comment added to, moved from or deleted from the post (C10).
        let comments = db.find_all_by_async(CommentByPostId(post_id)).await?;
        let comments: Vec<&Comment> = comments.iter().map(|c| &**c).collect();
        Ok(Json(comments).into_response())
    }

    async fn get_comment(
        State(db): State<Db<C>>,
        Path(id): Path<String>,
    ) -> Result<Response, ApiError> {
        let id = parse_id(&id)?;
        match db.find_async::<Comment>(id).await? {
            Some(comment) => Ok(with_etag(comment.version, &*comment)),
            None => Err(not_found("comment", id)),
        }
    }

    async fn stats(State(db): State<Db<C>>) -> Json<diesel_l2::Stats> {
        // In-memory counters: nothing to move off the async worker.
        Json(db.stats())
    }
}

/// `?limit=` of `GET /posts`.
#[derive(Deserialize, Debug)]
pub struct Page {
    pub limit: Option<i64>,
}

/// Runs a write in a transaction. With an `Idempotency-Key` (`op`), exactly once: the
/// answer is recorded with the writes, and the key sent again gets the recorded answer,
/// marked replayed. Without one, re-run on a version conflict.
async fn write<C, F>(db: &Db<C>, op: Option<Operation>, f: F) -> Result<Response, ApiError>
where
    C: OperationLog,
    F: FnMut(&mut Tx<'_, C>) -> Result<Answer, ApiError> + Send + 'static,
{
    let (answer, replayed) = match op {
        Some(op) => {
            let outcome = db
                .retry_once_async_with_error(RetryPolicy::default(), op, f)
                .await?;
            let replayed = outcome.is_replay();
            (outcome.into_inner(), replayed)
        }
        None => (
            db.retry_async_with_error(RetryPolicy::default(), f).await?,
            false,
        ),
    };
    Ok(answer.into_response(replayed))
}

/// The response of a POST, as recorded for an `Idempotency-Key` and replayed as is.
#[derive(Clone, Debug, Serialize, Deserialize)]
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

/// The operation an `Idempotency-Key` names, fingerprinted with the request's method, path
/// and body (so the key reused for another request is 422); `None` without the header.
fn idempotency_key(
    headers: &HeaderMap,
    method: &Method,
    uri: &Uri,
    body: &[u8],
) -> Result<Option<Operation>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = value.to_str().unwrap_or_default();
    if key.is_empty() || key.len() > diesel_l2::inbox::MAX_OPERATION_ID_BYTES {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "Idempotency-Key must be 1 to {} bytes of visible ASCII (a UUID, say)",
                diesel_l2::inbox::MAX_OPERATION_ID_BYTES
            ),
        ));
    }
    // FNV-1a, 128 bits: the same in every process and build (std's hasher is not), so a
    // fingerprint recorded before a restart still matches.
    let mut hash: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for part in [method.as_str().as_bytes(), uri.path().as_bytes(), body] {
        // Lengths first, so no two requests concatenate to the same bytes.
        for &b in (part.len() as u64).to_le_bytes().iter().chain(part) {
            hash = (hash ^ u128::from(b)).wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
        }
    }
    Ok(Some(
        Operation::new(key).fingerprint(format!("fnv1a128:{hash:032x}")),
    ))
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

/// An HTTP error decided inside a transaction: it rolls the transaction back (an
/// `Idempotency-Key` records nothing) and comes out of `write` as itself (the closures
/// return `ApiError`, which says whether to retry: `RetryableError`).
fn refuse(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError::new(status, message)
}

/// An error response: `{"error": "...", ...details}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: Value,
    /// From a diesel-l2 error that a retry may cure (a version conflict, a deadlock).
    retryable: bool,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self::with(status, message, json!({}))
    }

    fn with(status: StatusCode, message: impl Into<String>, details: Value) -> Self {
        let mut body = details;
        body["error"] = json!(message.into());
        ApiError {
            status,
            body,
            retryable: false,
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.body["error"])
    }
}

impl std::error::Error for ApiError {}

/// Transaction closures return `ApiError`: `retry_async` asks it whether to run again.
impl RetryableError for ApiError {
    fn is_retryable(&self) -> bool {
        self.retryable
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let retryable = e.is_retryable();
        let mut api = ApiError::from_library(e);
        api.retryable = retryable;
        api
    }
}

impl ApiError {
    fn from_library(e: Error) -> Self {
        let e = match e {
            Error::Database(e) => return ApiError::from(e),
            e => e,
        };
        // `table` is plural; the id is formatted with `Debug` (for an i64, the number).
        let status = match &e {
            Error::NotFound { table, id }
            | Error::Conflict {
                table,
                id,
                found: None,
                ..
            } => return not_found(table.strip_suffix('s').unwrap_or(table), id),
            Error::Conflict {
                table,
                id,
                found: Some(current),
                ..
            } => return stale(table.strip_suffix('s').unwrap_or(table), id, *current),
            Error::OperationMismatch { id, .. } => {
                return ApiError::with(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "Idempotency-Key {id:?} was already used for another request; use a new key for a new request"
                    ),
                    json!({ "idempotency_key": id }),
                )
            }
            Error::Pool { .. } | Error::RetriesExhausted { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        tracing::warn!(error = %e, "request failed");
        ApiError::new(status, e.to_string())
    }
}

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
