//! The scenarios. Each has an options struct (its command-line flags), a
//! `run` function and a result that is an [`crate::Outcome`];
//! [`traffic`] is the paced sending, receiving and checking that `direct`
//! and `group` share; `docs` speaks y-websocket itself.

pub mod catchup;
pub mod connections;
pub mod direct;
pub mod docs;
pub mod group;
pub mod traffic;

/// At most this many error messages are kept verbatim in a result; the
/// rest are only counted.
pub const ERRORS_KEPT: usize = 10;

/// Keeps the first [`ERRORS_KEPT`] errors and counts all of them.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Errors {
    pub count: u64,
    pub first: Vec<String>,
}

impl Errors {
    pub fn push(&mut self, error: impl Into<String>) {
        self.count += 1;
        if self.first.len() < ERRORS_KEPT {
            self.first.push(error.into());
        }
    }

    pub fn merge(&mut self, other: Self) {
        self.count += other.count;
        for error in other.first {
            if self.first.len() < ERRORS_KEPT {
                self.first.push(error);
            }
        }
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// `"{count} {what}, e.g. {first}"`.
    #[must_use]
    pub fn describe(&self, what: &str) -> String {
        match self.first.first() {
            Some(first) => format!("{} {what}, e.g. {first}", self.count),
            None => format!("{} {what}", self.count),
        }
    }
}
