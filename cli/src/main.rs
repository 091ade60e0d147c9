//! `diesel-l2`: diesel migrations for diesel-l2, on any backend.
//!
//! ```text
//! diesel-l2 migration change-feed --backend postgres --database-url postgres://… [--table users …]
//! diesel-l2 migration change-feed --backend sqlite --schema src/schema.rs --table users --unique users:email
//! diesel-l2 migration operations --backend mysql
//! ```
//!
//! The SQL is `diesel_l2::migration`'s; this tool only finds the tables' names: primary
//! key, version column and unique keys, from the database's catalog (`--database-url`) or
//! from diesel's `table!` declarations (`--schema`). It writes
//! `<dir>/<version>_<name>/up.sql` and `down.sql`, like `diesel migration generate`.

mod catalog;
mod schema_rs;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Args, Parser, Subcommand};
use diesel_l2::migration::{self, Backend, FeedTable, Migration, DEFAULT_FLUSH_THRESHOLD};

/// A table as a catalog or a schema.rs describes it (SQL names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TableInfo {
    /// The table's SQL name.
    pub name: String,
    /// The name of its `table!` in schema.rs, when read from there.
    pub rust_name: Option<String>,
    /// Its columns.
    pub columns: Vec<String>,
    /// Its primary key's columns.
    pub primary_key: Vec<String>,
    /// Its unique keys (from the catalog; none from a schema.rs).
    pub unique_keys: Vec<Vec<String>>,
}

#[derive(Parser)]
#[command(
    name = "diesel-l2",
    version,
    about = "Diesel migrations for diesel-l2: the change feed of cached tables, the operations table"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a diesel migration.
    #[command(subcommand)]
    Migration(MigrationCommand),
}

#[derive(Subcommand)]
enum MigrationCommand {
    /// The change feed (triggers) of cached tables, for cross-process invalidation.
    ChangeFeed(ChangeFeedArgs),
    /// The operations table of exactly-once transactions (`Db::transaction_once`).
    Operations(OperationsArgs),
}

#[derive(Args)]
#[command(group(ArgGroup::new("source").required(true).args(["database_url", "schema"])))]
struct ChangeFeedArgs {
    /// The database the migration is for: postgres, mysql (MariaDB too) or sqlite.
    #[arg(long, value_parser = parse_backend)]
    backend: Backend,
    /// Read the tables from this database's catalog (the PostgreSQL connection's current
    /// schema, the MariaDB/MySQL URL's database, the SQLite file).
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// Read the tables from diesel's `table!` declarations in this file (unique keys then
    /// come from --unique only).
    #[arg(long, value_name = "PATH")]
    schema: Option<PathBuf>,
    /// A table to put in the feed, by SQL name (or `table!` name); repeat for more.
    /// Default: every table that has the version column.
    #[arg(long = "table", value_name = "TABLE")]
    tables: Vec<String>,
    /// The version column of every table.
    #[arg(long, value_name = "COLUMN", default_value = "version")]
    version_column: String,
    /// A unique key whose old and new values ride along in the payloads, as
    /// TABLE:COLUMN[,COLUMN…] (in the order of the entity's `#[cache(unique)]` keys);
    /// repeat for more. Added to those the catalog has.
    #[arg(long = "unique", value_name = "TABLE:COLUMNS")]
    unique: Vec<String>,
    /// An index key (`#[cache(index)]`, a cached collection) whose old and new values ride
    /// along in the payloads, so remote changes drop exactly the cached lists they touch,
    /// as TABLE:COLUMN[,COLUMN…] in the order the derive registers the entity's index
    /// keys (one-field keys in field order, then the struct's `index(...)` lists); repeat
    /// for more. Without it, a remote change drops every list of the entity's indexes.
    #[arg(long = "index", value_name = "TABLE:COLUMNS")]
    index: Vec<String>,
    /// PostgreSQL: a statement changing more rows than this sends one flush of the table.
    #[arg(long, value_name = "ROWS", default_value_t = DEFAULT_FLUSH_THRESHOLD)]
    flush_threshold: u32,
    /// Leave the shared trigger functions / outbox table in down.sql: for a migration
    /// that adds tables to a feed an earlier migration installed.
    #[arg(long)]
    keep_shared: bool,
    #[command(flatten)]
    output: Output,
}

#[derive(Args)]
struct OperationsArgs {
    /// The database the migration is for: postgres, mysql (MariaDB too) or sqlite.
    #[arg(long, value_parser = parse_backend)]
    backend: Backend,
    #[command(flatten)]
    output: Output,
}

#[derive(Args)]
struct Output {
    /// The migrations directory the migration is written to.
    #[arg(long, value_name = "DIR", default_value = "migrations")]
    dir: PathBuf,
    /// The migration's name [default: diesel_l2_change_feed or diesel_l2_operations].
    #[arg(long)]
    name: Option<String>,
    /// The migration's version [default: now, as YYYY-MM-DD-HHMMSS].
    #[arg(long = "version", value_name = "VERSION")]
    migration_version: Option<String>,
    /// Print up.sql and down.sql instead of writing them.
    #[arg(long)]
    print: bool,
}

fn parse_backend(s: &str) -> Result<Backend, String> {
    s.parse().map_err(|e: diesel_l2::Error| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Migration(MigrationCommand::ChangeFeed(args)) => change_feed(args),
        Command::Migration(MigrationCommand::Operations(args)) => {
            emit(migration::operations(args.backend), &args.output)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn change_feed(args: ChangeFeedArgs) -> Result<(), String> {
    let (tables, source) = match (&args.database_url, &args.schema) {
        (Some(url), _) => (
            catalog::tables(args.backend, url)?,
            "the database".to_string(),
        ),
        (None, Some(path)) => (schema_rs::tables(path)?, format!("`{}`", path.display())),
        (None, None) => return Err("give --database-url or --schema".into()),
    };
    let feed = select(
        &tables,
        &args.tables,
        &args.version_column,
        &args.unique,
        &args.index,
        &source,
    )?;
    let mut builder = migration::change_feed(args.backend)
        .flush_threshold(args.flush_threshold)
        .drops_shared(!args.keep_shared);
    for t in feed {
        builder = builder.feed_table(t);
    }
    emit(builder.build().map_err(|e| e.to_string())?, &args.output)
}

/// The feed's tables: those named (or every one with the version column), with the
/// unique keys of the catalog and of `--unique`, and the index keys of `--index`.
fn select(
    tables: &[TableInfo],
    wanted: &[String],
    version: &str,
    unique: &[String],
    index: &[String],
    source: &str,
) -> Result<Vec<FeedTable>, String> {
    let chosen: Vec<&TableInfo> = if wanted.is_empty() {
        let all: Vec<&TableInfo> = tables
            .iter()
            .filter(|t| t.columns.iter().any(|c| c == version))
            .collect();
        if all.is_empty() {
            return Err(format!(
                "no table in {source} has a `{version}` column: name the tables with --table \
                 and their version column with --version-column"
            ));
        }
        all
    } else {
        let mut chosen: Vec<&TableInfo> = Vec::new();
        for name in wanted {
            let t = tables
                .iter()
                .find(|t| t.name == *name)
                .or_else(|| tables.iter().find(|t| t.rust_name.as_deref() == Some(name)))
                .ok_or_else(|| {
                    format!("no table `{name}` in {source}: check the name (the table's SQL name)")
                })?;
            if !t.columns.iter().any(|c| c == version) {
                return Err(format!(
                    "table `{}` has no `{version}` column: a cached table needs a version \
                     column (BIGINT NOT NULL DEFAULT 1); if it has another name, give it with \
                     --version-column",
                    t.name
                ));
            }
            if !chosen.iter().any(|c| c.name == t.name) {
                chosen.push(t);
            }
        }
        chosen
    };
    let mut feed: Vec<FeedTable> = Vec::new();
    for t in &chosen {
        let mut f = FeedTable::new(t.name.clone(), t.primary_key.clone(), version);
        f.unique_keys = t.unique_keys.clone();
        feed.push(f);
    }
    let specs = unique
        .iter()
        .map(|s| ("--unique", s))
        .chain(index.iter().map(|s| ("--index", s)));
    for (flag, spec) in specs {
        let (table, columns) = spec
            .split_once(':')
            .ok_or_else(|| format!("{flag} {spec}: write TABLE:COLUMN or TABLE:COLUMN,COLUMN"))?;
        let columns: Vec<String> = columns.split(',').map(|c| c.trim().to_string()).collect();
        let info = chosen
            .iter()
            .find(|t| t.name == table || t.rust_name.as_deref() == Some(table))
            .ok_or_else(|| {
                format!("{flag} {spec}: `{table}` is not one of the feed's tables (add --table {table})")
            })?;
        if let Some(c) = columns
            .iter()
            .find(|c| !info.columns.iter().any(|have| have == *c))
        {
            return Err(format!(
                "{flag} {spec}: table `{}` has no column `{c}`",
                info.name
            ));
        }
        let f = feed
            .iter_mut()
            .find(|f| f.table == info.name)
            .ok_or_else(|| format!("{flag} {spec}: table `{table}` not found"))?;
        let keys = if flag == "--index" {
            &mut f.index_keys
        } else {
            &mut f.unique_keys
        };
        if !keys.contains(&columns) {
            keys.push(columns);
        }
    }
    Ok(feed)
}

/// Prints or writes `m` as `output` says.
fn emit(mut m: Migration, output: &Output) -> Result<(), String> {
    if let Some(name) = &output.name {
        m = m.with_name(name.clone());
    }
    if let Some(version) = &output.migration_version {
        m = m.with_version(version.clone());
    }
    if output.print {
        print!("-- up.sql\n{}\n-- down.sql\n{}", m.up, m.down);
        return Ok(());
    }
    let target = output.dir.join(m.dir_name());
    if target.exists() {
        return Err(format!(
            "`{}` exists already: give another --name or --version, or remove it",
            target.display()
        ));
    }
    let dir = m.write_to(&output.dir).map_err(|e| e.to_string())?;
    println!("Creating {}", dir.join("up.sql").display());
    println!("Creating {}", dir.join("down.sql").display());
    Ok(())
}
