//! Fresh PostgreSQL databases for tests, from `CONCLAVE_TEST_POSTGRES_URL`
//! (a server the tests may create databases on).

use std::time::{SystemTime, UNIX_EPOCH};

/// `CONCLAVE_TEST_POSTGRES_URL`, or `None` with a notice printed.
pub fn admin_url() -> Option<String> {
    super::env_or_notice("CONCLAVE_TEST_POSTGRES_URL")
}

/// Creates an empty database and returns its URL; `None` (with a notice)
/// when no PostgreSQL is configured.
pub fn fresh_database() -> Option<String> {
    let admin = admin_url()?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let name = format!("conclave_test_{}_{nanos:x}", std::process::id());
    let create = format!("CREATE DATABASE {name}");
    let admin_for_thread = admin.clone();
    // Tests call this from inside their own runtime; a private thread with
    // its own runtime keeps it usable from sync and async tests alike.
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            use sqlx::Connection as _;
            let mut connection = sqlx::PgConnection::connect(&admin_for_thread)
                .await
                .expect("connect to CONCLAVE_TEST_POSTGRES_URL");
            sqlx::raw_sql(&create)
                .execute(&mut connection)
                .await
                .expect("create a test database");
        });
    })
    .join()
    .expect("the database-creating thread");
    Some(replace_database(&admin, &name))
}

/// `url` with its database name replaced by `name`.
fn replace_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_end = base
        .find("://")
        .map(|i| i + 3)
        .and_then(|start| base[start..].find('/').map(|i| start + i))
        .unwrap_or(base.len());
    let mut out = format!("{}/{name}", &base[..authority_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}
