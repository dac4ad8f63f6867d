//! SQL as the durable record of configurations: every version kept (who, when), deletes
//! recorded, optimistic concurrency on the version. SQLite by default; MySQL/MariaDB and
//! PostgreSQL by URL, through sqlx's `Any` driver.

use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::document::IngressDocument;

/// One configuration as it stands.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ConfigRecord {
    /// Environment.
    pub env: String,
    /// Configuration id (UUID).
    #[schema(format = Uuid)]
    pub id: String,
    /// Version, from 1, +1 per change.
    pub version: i64,
    /// The document.
    pub document: IngressDocument,
    /// Whether it was deleted (only in history).
    pub deleted: bool,
    /// Who made this version.
    pub changed_by: String,
    /// When (RFC 3339).
    #[schema(format = DateTime)]
    pub changed_at: String,
    /// Why this version skipped the pre-flight check, as the admin who made it said (only
    /// in history; absent when it was checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preflight_skipped: Option<String>,
}

/// Who makes a change, and anything they said about it.
#[derive(Debug, Clone, Copy)]
pub struct Author<'a> {
    /// The token's name.
    pub name: &'a str,
    /// Why the pre-flight check was skipped, when it was.
    pub preflight_skipped: Option<&'a str>,
}

impl<'a> From<&'a String> for Author<'a> {
    fn from(name: &'a String) -> Self {
        Self::from(name.as_str())
    }
}

impl<'a> From<&'a str> for Author<'a> {
    fn from(name: &'a str) -> Self {
        Self {
            name,
            preflight_skipped: None,
        }
    }
}

/// Why a record operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The database could not be reached or opened.
    #[error("cannot open the database {url}: {source}")]
    Connect {
        /// The URL, with any password replaced by `***`.
        url: String,
        /// What the driver said.
        #[source]
        source: sqlx::Error,
    },
    /// The database URL is not sqlite://, mysql:// or postgres://.
    #[error("unsupported database URL {0:?}: use sqlite://FILE, mysql://… or postgres://…")]
    UnsupportedUrl(String),
    /// No such configuration (or it was deleted).
    #[error("configuration {env}/{id} not found")]
    NotFound {
        /// Environment.
        env: String,
        /// Id.
        id: String,
    },
    /// The version given is not the current one.
    #[error("configuration {env}/{id} is at version {current}, not {expected}")]
    Conflict {
        /// Environment.
        env: String,
        /// Id.
        id: String,
        /// The version the caller based its change on.
        expected: i64,
        /// The current version.
        current: i64,
    },
    /// A stored document no longer parses (written by a newer ferry?).
    #[error("stored document {env}/{id} v{version} is unreadable: {reason}")]
    Corrupt {
        /// Environment.
        env: String,
        /// Id.
        id: String,
        /// Version.
        version: i64,
        /// Why.
        reason: String,
    },
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    MySql,
    Postgres,
}

impl Dialect {
    /// The database a URL names.
    pub(crate) fn of(url: &str) -> Result<Self, RecordError> {
        if url.starts_with("sqlite:") {
            Ok(Dialect::Sqlite)
        } else if url.starts_with("mysql:") || url.starts_with("mariadb:") {
            Ok(Dialect::MySql)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Dialect::Postgres)
        } else {
            Err(RecordError::UnsupportedUrl(redact(url)))
        }
    }
}

/// The SQL record.
#[derive(Clone)]
pub struct Record {
    pool: AnyPool,
    dialect: Dialect,
}

const SCHEMA: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS ingress_configs (
        env VARCHAR(128) NOT NULL, id VARCHAR(64) NOT NULL, version BIGINT NOT NULL,
        document TEXT NOT NULL, deleted BIGINT NOT NULL, changed_by VARCHAR(255) NOT NULL,
        changed_at VARCHAR(64) NOT NULL, PRIMARY KEY (env, id))",
    "CREATE TABLE IF NOT EXISTS ingress_config_versions (
        env VARCHAR(128) NOT NULL, id VARCHAR(64) NOT NULL, version BIGINT NOT NULL,
        document TEXT NOT NULL, deleted BIGINT NOT NULL, changed_by VARCHAR(255) NOT NULL,
        changed_at VARCHAR(64) NOT NULL, PRIMARY KEY (env, id, version))",
];

/// Columns added after the first release, each added to an older database at start-up.
const ADDED_COLUMNS: [(&str, &str, &str); 1] = [(
    "ingress_config_versions",
    "preflight_skipped",
    "VARCHAR(1024)",
)];

/// The URL with the password (between `user:` and `@`) replaced, for error messages and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => match rest[..at].split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***{}", &rest[at..]),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

impl Record {
    /// Connects to `url` and applies the schema (idempotent).
    pub async fn connect(url: &str) -> Result<Self, RecordError> {
        sqlx::any::install_default_drivers();
        let dialect = Dialect::of(url)?;
        let url = if dialect == Dialect::Sqlite && !url.contains('?') {
            format!("{url}?mode=rwc")
        } else {
            url.replacen("mariadb:", "mysql:", 1)
        };
        let opened = |source| RecordError::Connect {
            url: redact(&url),
            source,
        };
        // A wrong address should fail at start-up, not after sqlx's 30 s default.
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(&url)
            .await
            .map_err(opened)?;
        if dialect == Dialect::Sqlite {
            // A commit is then one append and one sync of the `-wal` file, in place of a
            // rollback journal created, synced and deleted beside a synced database: fewer
            // syncs, and no file created or removed per change. As durable (`synchronous`
            // stays FULL); recorded in the file, so every connection uses it.
            sqlx::query("PRAGMA journal_mode=WAL")
                .execute(&pool)
                .await
                .map_err(opened)?;
        }
        let record = Self { pool, dialect };
        for statement in SCHEMA {
            sqlx::query(statement)
                .execute(&record.pool)
                .await
                .map_err(opened)?;
        }
        for (table, column, kind) in ADDED_COLUMNS {
            record
                .add_column(table, column, kind)
                .await
                .map_err(opened)?;
        }
        Ok(record)
    }

    /// Adds `column` to `table` unless it is there. `ADD COLUMN IF NOT EXISTS` is not
    /// SQLite's nor MySQL's; a probe is. Another controller may add it at the same time:
    /// the probe after a failed `ALTER` tells.
    async fn add_column(&self, table: &str, column: &str, kind: &str) -> Result<(), sqlx::Error> {
        let probe = format!("SELECT {column} FROM {table} WHERE 1 = 0");
        if sqlx::query(&probe).fetch_all(&self.pool).await.is_ok() {
            return Ok(());
        }
        let added = sqlx::query(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))
            .execute(&self.pool)
            .await;
        match added {
            Ok(_) => Ok(()),
            Err(e) => sqlx::query(&probe)
                .fetch_all(&self.pool)
                .await
                .map(|_| ())
                .map_err(|_| e),
        }
    }

    /// `?` placeholders in the database's own syntax.
    fn sql(&self, q: &str) -> String {
        if self.dialect != Dialect::Postgres {
            return q.to_string();
        }
        let mut out = String::new();
        let mut n = 0;
        for c in q.chars() {
            if c == '?' {
                n += 1;
                out.push_str(&format!("${n}"));
            } else {
                out.push(c);
            }
        }
        out
    }

    fn decode(row: &AnyRow) -> Result<ConfigRecord, RecordError> {
        let env: String = row.try_get("env")?;
        let id: String = row.try_get("id")?;
        let version: i64 = row.try_get("version")?;
        // MySQL/MariaDB report TEXT to the Any driver as BLOB: accept both.
        let text: String = match row.try_get::<String, _>("document") {
            Ok(t) => t,
            Err(_) => String::from_utf8_lossy(&row.try_get::<Vec<u8>, _>("document")?).into_owned(),
        };
        let document =
            IngressDocument::from_json(text.as_bytes()).map_err(|e| RecordError::Corrupt {
                env: env.clone(),
                id: id.clone(),
                version,
                reason: e.to_string(),
            })?;
        Ok(ConfigRecord {
            env,
            id,
            version,
            document,
            deleted: row.try_get::<i64, _>("deleted")? != 0,
            changed_by: row.try_get("changed_by")?,
            changed_at: row.try_get("changed_at")?,
            // Only the versions table has it.
            preflight_skipped: row
                .try_get::<Option<String>, _>("preflight_skipped")
                .ok()
                .flatten(),
        })
    }

    async fn write_version(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        rec: &ConfigRecord,
        body: &str,
    ) -> Result<(), RecordError> {
        sqlx::query(&self.sql(
            "INSERT INTO ingress_config_versions (env, id, version, document, deleted, changed_by, changed_at, preflight_skipped) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        ))
        .bind(&rec.env)
        .bind(&rec.id)
        .bind(rec.version)
        .bind(body)
        .bind(rec.deleted as i64)
        .bind(&rec.changed_by)
        .bind(&rec.changed_at)
        .bind(&rec.preflight_skipped)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Creates a configuration (version 1) in `env`.
    pub async fn create(
        &self,
        env: &str,
        document: &IngressDocument,
        by: impl Into<Author<'_>>,
    ) -> Result<ConfigRecord, RecordError> {
        let by = by.into();
        let rec = ConfigRecord {
            env: env.to_string(),
            id: uuid::Uuid::new_v4().to_string(),
            version: 1,
            document: document.clone(),
            deleted: false,
            changed_by: by.name.to_string(),
            changed_at: now(),
            preflight_skipped: by.preflight_skipped.map(str::to_string),
        };
        let body = serde_json::to_string(document).unwrap_or_default();
        let mut tx = self.pool.begin().await?;
        sqlx::query(&self.sql(
            "INSERT INTO ingress_configs (env, id, version, document, deleted, changed_by, changed_at) VALUES (?, ?, ?, ?, 0, ?, ?)",
        ))
        .bind(&rec.env)
        .bind(&rec.id)
        .bind(rec.version)
        .bind(&body)
        .bind(&rec.changed_by)
        .bind(&rec.changed_at)
        .execute(&mut *tx)
        .await?;
        self.write_version(&mut tx, &rec, &body).await?;
        tx.commit().await?;
        Ok(rec)
    }

    /// The current version of `env`/`id` (deleted ones too when `include_deleted`).
    async fn current(
        &self,
        env: &str,
        id: &str,
        include_deleted: bool,
    ) -> Result<ConfigRecord, RecordError> {
        let row = sqlx::query(&self.sql("SELECT * FROM ingress_configs WHERE env = ? AND id = ?"))
            .bind(env)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        let not_found = || RecordError::NotFound {
            env: env.to_string(),
            id: id.to_string(),
        };
        let rec = Self::decode(&row.ok_or_else(not_found)?)?;
        if rec.deleted && !include_deleted {
            return Err(not_found());
        }
        Ok(rec)
    }

    /// The configuration `env`/`id`.
    pub async fn get(&self, env: &str, id: &str) -> Result<ConfigRecord, RecordError> {
        self.current(env, id, false).await
    }

    /// Writes a new version if `expected` is still the current one.
    async fn change(
        &self,
        env: &str,
        id: &str,
        expected: i64,
        document: &IngressDocument,
        deleted: bool,
        by: Author<'_>,
    ) -> Result<ConfigRecord, RecordError> {
        let conflict = |current: i64| RecordError::Conflict {
            env: env.to_string(),
            id: id.to_string(),
            expected,
            current,
        };
        let rec = ConfigRecord {
            env: env.to_string(),
            id: id.to_string(),
            version: expected + 1,
            document: document.clone(),
            deleted,
            changed_by: by.name.to_string(),
            changed_at: now(),
            preflight_skipped: by.preflight_skipped.map(str::to_string),
        };
        let body = serde_json::to_string(document).unwrap_or_default();
        let mut tx = self.pool.begin().await?;
        // The version in the WHERE clause makes concurrent writers exclude each other.
        let updated = sqlx::query(&self.sql(
            "UPDATE ingress_configs SET version = ?, document = ?, deleted = ?, changed_by = ?, changed_at = ?
             WHERE env = ? AND id = ? AND version = ? AND deleted = 0",
        ))
        .bind(rec.version)
        .bind(&body)
        .bind(deleted as i64)
        .bind(&rec.changed_by)
        .bind(&rec.changed_at)
        .bind(env)
        .bind(id)
        .bind(expected)
        .execute(&mut *tx)
        .await?;
        // No row at `expected`: missing, deleted (not found) or at another version.
        if updated.rows_affected() != 1 {
            tx.rollback().await?;
            let now = self.current(env, id, false).await?;
            return Err(conflict(now.version));
        }
        self.write_version(&mut tx, &rec, &body).await?;
        tx.commit().await?;
        Ok(rec)
    }

    /// Replaces the document; `expected` is the version the change is based on.
    pub async fn update(
        &self,
        env: &str,
        id: &str,
        expected: i64,
        document: &IngressDocument,
        by: impl Into<Author<'_>>,
    ) -> Result<ConfigRecord, RecordError> {
        self.change(env, id, expected, document, false, by.into())
            .await
    }

    /// Deletes (the deletion is a recorded version).
    pub async fn delete(
        &self,
        env: &str,
        id: &str,
        expected: i64,
        by: impl Into<Author<'_>>,
    ) -> Result<ConfigRecord, RecordError> {
        let current = self.get(env, id).await?;
        self.change(env, id, expected, &current.document, true, by.into())
            .await
    }

    /// Makes the document of `version` current again (as a new version).
    pub async fn rollback(
        &self,
        env: &str,
        id: &str,
        version: i64,
        expected: i64,
        by: impl Into<Author<'_>>,
    ) -> Result<ConfigRecord, RecordError> {
        let old = self.version(env, id, version).await?;
        self.change(env, id, expected, &old.document, false, by.into())
            .await
    }

    /// Version `version` of `env`/`id` (not a deletion).
    pub async fn version(
        &self,
        env: &str,
        id: &str,
        version: i64,
    ) -> Result<ConfigRecord, RecordError> {
        self.history(env, id)
            .await?
            .into_iter()
            .find(|r| r.version == version && !r.deleted)
            .ok_or_else(|| RecordError::NotFound {
                env: env.to_string(),
                id: format!("{id} version {version}"),
            })
    }

    /// Live configurations of `env`, by id.
    pub async fn list(&self, env: &str) -> Result<Vec<ConfigRecord>, RecordError> {
        let rows = sqlx::query(
            &self.sql("SELECT * FROM ingress_configs WHERE env = ? AND deleted = 0 ORDER BY id"),
        )
        .bind(env)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Self::decode).collect()
    }

    /// Every live configuration of every environment (what etcd must match).
    pub async fn list_all(&self) -> Result<Vec<ConfigRecord>, RecordError> {
        let rows = sqlx::query("SELECT * FROM ingress_configs WHERE deleted = 0 ORDER BY env, id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(Self::decode).collect()
    }

    /// Every version of `env`/`id`, oldest first.
    pub async fn history(&self, env: &str, id: &str) -> Result<Vec<ConfigRecord>, RecordError> {
        let rows = sqlx::query(&self.sql(
            "SELECT * FROM ingress_config_versions WHERE env = ? AND id = ? ORDER BY version",
        ))
        .bind(env)
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            return Err(RecordError::NotFound {
                env: env.to_string(),
                id: id.to_string(),
            });
        }
        rows.iter().map(Self::decode).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("mysql://root:s3cret@127.0.0.1:3306/ferry"),
            "mysql://root:***@127.0.0.1:3306/ferry"
        );
        assert_eq!(
            redact("postgres://ferry@db/ferry"),
            "postgres://ferry@db/ferry"
        );
        assert_eq!(redact("sqlite://ferry.db"), "sqlite://ferry.db");
        assert_eq!(redact("oracle://u:p@h/x"), "oracle://u:***@h/x");
    }
}
