//! Redis for the shared-tier tests (C9): the CI server with a fresh key prefix per test,
//! or a private `redis-server` on a Unix socket for tests that flush, pause, restart or
//! starve it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use diesel_l2::shared::SharedConfig;

pub const REDIS_URL_ENV: &str = "DIESEL_L2_REDIS_URL";

static SKIP_REPORTED: AtomicBool = AtomicBool::new(false);

/// A key prefix no other test uses.
pub fn unique_prefix() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "l2t-{}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        fastrand::u32(..)
    )
}

/// The settings for the CI Redis with a fresh prefix, or `None` when
/// `DIESEL_L2_REDIS_URL` is unset (reported; a panic under `CI=true`). Calls get a
/// 250 ms timeout: the tests run beside builds on 2 cores, where 5 ms would trip the
/// breaker on a scheduling hiccup and make the figures the tests check wander.
pub fn shared_config() -> Option<SharedConfig> {
    let url = super::db::env_url_or_skip(REDIS_URL_ENV, "shared tier (Redis)", &SKIP_REPORTED)?;
    Some(relaxed(SharedConfig::new(url).prefix(unique_prefix())))
}

/// Test timeouts (see `shared_config`).
pub fn relaxed(config: SharedConfig) -> SharedConfig {
    config.timeout(Duration::from_millis(250))
}

/// A connection to the Redis of `config`, to look at or change what the tier stored.
pub fn client(config: &SharedConfig) -> redis::Connection {
    redis::Client::open(config.url.as_str())
        .expect("redis url")
        .get_connection()
        .expect("redis connection")
}

/// The entry of `region` / `id` (as the tier formats ids: `Debug`) under the current
/// generation, or `None`.
pub fn entry(config: &SharedConfig, region: &str, id: &str) -> Option<Vec<u8>> {
    let mut con = client(config);
    let gen: Option<String> = redis::cmd("GET")
        .arg(format!("{}:gen", config.prefix))
        .query(&mut con)
        .expect("GET gen");
    let gen = gen?;
    redis::cmd("GET")
        .arg(format!("{}:{gen}:{region}:{id}", config.prefix))
        .query(&mut con)
        .expect("GET entry")
}

/// The version an entry holds (`V…` row or `T…` tombstone), or `None`.
pub fn entry_version(bytes: &[u8]) -> Option<(char, i64)> {
    let kind = *bytes.first()? as char;
    if !(kind == 'V' || kind == 'T') || bytes.len() < 17 {
        return None;
    }
    let hex = std::str::from_utf8(&bytes[1..17]).ok()?;
    let v = u64::from_str_radix(hex, 16).ok()? ^ (1 << 63);
    Some((kind, v as i64))
}

/// A `redis-server` of this test's own, on a Unix socket in a temp dir, killed on drop.
pub struct PrivateRedis {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    child: Option<Child>,
    extra: Vec<String>,
}

impl PrivateRedis {
    /// Starts one, or `None` when the Redis tests are not configured (no CI Redis URL:
    /// they are skipped together) . `extra`: more `redis-server` arguments, e.g.
    /// `["--maxmemory", "2mb", "--maxmemory-policy", "allkeys-lru"]`.
    pub fn start(extra: &[&str]) -> Option<PrivateRedis> {
        super::db::env_url_or_skip(REDIS_URL_ENV, "shared tier (Redis)", &SKIP_REPORTED)?;
        let dir = tempfile::Builder::new()
            .prefix("diesel-l2-redis-")
            .tempdir()
            .expect("temp dir");
        let socket = dir.path().join("redis.sock");
        let mut r = PrivateRedis {
            dir,
            socket,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        r.spawn();
        Some(r)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(&self.socket)
            .args(["--unixsocketperm", "700"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (apt-get install redis-server)");
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if let Ok(mut con) = redis::Client::open(self.url()).and_then(|c| c.get_connection()) {
                if redis::cmd("PING").query::<String>(&mut con).is_ok() {
                    return;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }

    /// Settings for this server with a fresh prefix and test timeouts.
    pub fn config(&self) -> SharedConfig {
        relaxed(SharedConfig::new(self.url()).prefix(unique_prefix()))
    }

    pub fn con(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .expect("url")
            .get_connection()
            .expect("private redis connection")
    }

    /// Runs one command, ignoring its reply.
    pub fn cmd(&self, args: &[&str]) {
        let mut c = redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        let _: redis::Value = c.query(&mut self.con()).expect("redis command");
    }

    /// Kills the server (SIGKILL): calls fail until `restart`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
    }

    /// Starts it again, empty (no persistence): a restart as Redis without a disk has.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Puts `bytes` as the entry of `region` / `id` under the current generation (as a
/// process that does not follow the protocol would).
pub fn set_entry(config: &SharedConfig, region: &str, id: &str, bytes: &[u8]) {
    let mut con = client(config);
    let gen: String = redis::cmd("GET")
        .arg(format!("{}:gen", config.prefix))
        .query(&mut con)
        .expect("GET gen");
    let _: () = redis::cmd("SET")
        .arg(format!("{}:{gen}:{region}:{id}", config.prefix))
        .arg(bytes)
        .query(&mut con)
        .expect("SET entry");
}
