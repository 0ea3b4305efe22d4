//! Route handlers, one module per feature area. Each module registers its
//! routes into the table in its `register` function.

pub(crate) mod accounts;
pub(crate) mod documents;
pub(crate) mod files;
pub(crate) mod groups;
pub(crate) mod inbox;
pub(crate) mod messaging;
pub(crate) mod presence;
pub(crate) mod social;
