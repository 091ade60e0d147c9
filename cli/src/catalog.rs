//! Tables from a database's catalog: columns, primary key, unique constraints and
//! indexes (information_schema and pg_catalog on PostgreSQL, information_schema on
//! MariaDB/MySQL, `pragma` functions on SQLite).

use diesel::deserialize::QueryableByName;
use diesel::mysql::MysqlConnection;
use diesel::pg::PgConnection;
use diesel::query_builder::{QueryFragment, SqlQuery};
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel::sqlite::SqliteConnection;
use diesel::{sql_query, Connection, RunQueryDsl};
use diesel_l2::migration::Backend;

use crate::TableInfo;

/// One column of a table; `pk`: its position in the primary key (0: not in it), read by
/// SQLite only.
#[derive(QueryableByName)]
struct Column {
    #[diesel(sql_type = Text)]
    tbl: String,
    #[diesel(sql_type = Text)]
    col: String,
    #[diesel(sql_type = BigInt)]
    pk: i64,
}

/// One column of a unique index (or of the primary key's); `col` is NULL for an
/// expression.
#[derive(QueryableByName)]
struct KeyColumn {
    #[diesel(sql_type = Text)]
    tbl: String,
    #[diesel(sql_type = Text)]
    key_name: String,
    #[diesel(sql_type = BigInt)]
    is_primary: i64,
    #[diesel(sql_type = Nullable<Text>)]
    col: Option<String>,
}

const PG_COLUMNS: &str =
    "SELECT c.table_name::text AS tbl, c.column_name::text AS col, 0::int8 AS pk \
     FROM information_schema.columns c JOIN information_schema.tables t \
     ON t.table_schema = c.table_schema AND t.table_name = c.table_name \
     WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE' \
     ORDER BY c.table_name, c.ordinal_position";

/// Unique indexes (unique constraints have one too), key columns only, no expression or
/// partial index.
const PG_KEYS: &str = "SELECT t.relname::text AS tbl, i.relname::text AS key_name, \
     x.indisprimary::int::int8 AS is_primary, a.attname::text AS col \
     FROM pg_index x \
     JOIN pg_class t ON t.oid = x.indrelid \
     JOIN pg_namespace n ON n.oid = t.relnamespace \
     JOIN pg_class i ON i.oid = x.indexrelid \
     CROSS JOIN LATERAL unnest(x.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
     LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum AND k.attnum > 0 \
     WHERE n.nspname = current_schema() AND x.indisunique AND x.indpred IS NULL \
     AND k.ord <= x.indnkeyatts \
     ORDER BY t.relname, i.relname, k.ord";

const MYSQL_COLUMNS: &str =
    "SELECT CAST(c.TABLE_NAME AS CHAR) AS tbl, CAST(c.COLUMN_NAME AS CHAR) AS col, \
     CAST(0 AS SIGNED) AS pk \
     FROM information_schema.COLUMNS c JOIN information_schema.TABLES t \
     ON t.TABLE_SCHEMA = c.TABLE_SCHEMA AND t.TABLE_NAME = c.TABLE_NAME \
     WHERE c.TABLE_SCHEMA = DATABASE() AND t.TABLE_TYPE = 'BASE TABLE' \
     ORDER BY c.TABLE_NAME, c.ORDINAL_POSITION";

const MYSQL_KEYS: &str =
    "SELECT CAST(TABLE_NAME AS CHAR) AS tbl, CAST(INDEX_NAME AS CHAR) AS key_name, \
     CAST(INDEX_NAME = 'PRIMARY' AS SIGNED) AS is_primary, CAST(COLUMN_NAME AS CHAR) AS col \
     FROM information_schema.STATISTICS \
     WHERE TABLE_SCHEMA = DATABASE() AND NON_UNIQUE = 0 \
     ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX";

const SQLITE_COLUMNS: &str = "SELECT m.name AS tbl, p.name AS col, p.pk AS pk \
     FROM sqlite_master m JOIN pragma_table_info(m.name) p \
     WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' \
     ORDER BY m.name, p.cid";

/// Unique indexes other than the primary key's (read from the columns' `pk`, which also
/// covers an `INTEGER PRIMARY KEY`, which has no index); no partial index.
const SQLITE_KEYS: &str =
    "SELECT m.name AS tbl, il.name AS key_name, 0 AS is_primary, ii.name AS col \
     FROM sqlite_master m JOIN pragma_index_list(m.name) il JOIN pragma_index_info(il.name) ii \
     WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND il.\"unique\" = 1 \
     AND il.origin <> 'pk' AND il.partial = 0 \
     ORDER BY m.name, il.name, ii.seqno";

/// Every base table of the database at `url`.
pub(crate) fn tables(backend: Backend, url: &str) -> Result<Vec<TableInfo>, String> {
    let connect = |e: diesel::ConnectionError| {
        format!("cannot connect to the {backend} database `{url}`: {e}")
    };
    let result = match backend {
        Backend::Postgres => read(
            &mut PgConnection::establish(url).map_err(connect)?,
            PG_COLUMNS,
            PG_KEYS,
        ),
        Backend::Mysql => read(
            &mut MysqlConnection::establish(url).map_err(connect)?,
            MYSQL_COLUMNS,
            MYSQL_KEYS,
        ),
        Backend::Sqlite => {
            let path = url.strip_prefix("sqlite://").unwrap_or(url);
            if !path.starts_with("file:") && !std::path::Path::new(path).exists() {
                return Err(format!(
                    "no SQLite database at `{path}`: give the path of an existing file"
                ));
            }
            read(
                &mut SqliteConnection::establish(path).map_err(connect)?,
                SQLITE_COLUMNS,
                SQLITE_KEYS,
            )
        }
        _ => return Err(format!("reading the catalog of {backend} is not supported")),
    };
    result.map_err(|e| format!("cannot read the catalog of the {backend} database: {e}"))
}

fn read<C>(conn: &mut C, columns: &str, keys: &str) -> diesel::QueryResult<Vec<TableInfo>>
where
    C: Connection + diesel::connection::LoadConnection + 'static,
    C::Backend: 'static,
    Column: QueryableByName<C::Backend>,
    KeyColumn: QueryableByName<C::Backend>,
    SqlQuery: QueryFragment<C::Backend>,
{
    let columns: Vec<Column> = sql_query(columns).load(conn)?;
    let keys: Vec<KeyColumn> = sql_query(keys).load(conn)?;
    let mut tables: Vec<TableInfo> = Vec::new();
    for c in columns {
        let i = match tables.iter().position(|t| t.name == c.tbl) {
            Some(i) => i,
            None => {
                tables.push(TableInfo {
                    name: c.tbl.clone(),
                    rust_name: None,
                    columns: Vec::new(),
                    primary_key: Vec::new(),
                    unique_keys: Vec::new(),
                });
                tables.len() - 1
            }
        };
        if c.pk > 0 {
            let at = usize::try_from(c.pk - 1).unwrap_or(usize::MAX);
            let pk = &mut tables[i].primary_key;
            if pk.len() <= at {
                pk.resize(at + 1, String::new());
            }
            pk[at] = c.col.clone();
        }
        tables[i].columns.push(c.col);
    }
    // Group the key columns by (table, index); an index with an expression is left out.
    let mut groups: Vec<(String, String, bool, Vec<Option<String>>)> = Vec::new();
    for k in keys {
        match groups
            .iter_mut()
            .find(|(t, n, _, _)| *t == k.tbl && *n == k.key_name)
        {
            Some(g) => g.3.push(k.col),
            None => groups.push((k.tbl, k.key_name, k.is_primary != 0, vec![k.col])),
        }
    }
    for (tbl, _, primary, cols) in groups {
        let Some(cols) = cols.into_iter().collect::<Option<Vec<String>>>() else {
            continue;
        };
        let Some(t) = tables.iter_mut().find(|t| t.name == tbl) else {
            continue;
        };
        if primary {
            t.primary_key = cols;
        } else if !t.unique_keys.contains(&cols) {
            t.unique_keys.push(cols);
        }
    }
    for t in &mut tables {
        t.primary_key.retain(|c| !c.is_empty());
    }
    Ok(tables)
}
