/// What can go wrong in storage. Variants carry text for the log; the wire
/// never sees it (the server maps every variant to `internal` or
/// `unavailable`).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage is closed")]
    Closed,
    #[error("database is unavailable: {0}")]
    Unavailable(String),
    #[error("migration failed: {0}")]
    Migration(String),
    #[error("database is inconsistent: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Unsupported(String),
    /// A uniqueness rule would be broken (a taken username...).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A configured cap would be exceeded (devices per user...).
    #[error("limit reached: {0}")]
    LimitReached(String),
    /// The addressed object does not exist, or the actor may not see it.
    #[error("not found: {0}")]
    NotFound(String),
    /// The request contradicts stored state (a reply to another channel...).
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("database error: {0}")]
    Database(String),
}

impl From<sqlx::Error> for StorageError {
    fn from(err: sqlx::Error) -> Self {
        match err {
            sqlx::Error::PoolClosed => StorageError::Closed,
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) => {
                StorageError::Unavailable(err.to_string())
            }
            other => StorageError::Database(other.to_string()),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StorageError {
    fn from(err: sqlx::migrate::MigrateError) -> Self {
        StorageError::Migration(err.to_string())
    }
}
