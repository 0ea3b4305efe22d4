//! Limits that more than one crate must agree on.
//!
//! Each limit exists to bound memory or work done on behalf of an untrusted
//! peer; the comment beside it says which.

/// Longest accepted username, in bytes. Keeps index entries and search
/// prefixes small.
pub const USERNAME_LEN_MAX_BYTES: usize = 64;

/// Longest accepted display name, in bytes.
pub const DISPLAY_NAME_LEN_MAX_BYTES: usize = 128;

/// Longest accepted RPC route name, in bytes. Route names are short ASCII
/// paths; anything longer is garbage and is refused before a table lookup.
pub const ROUTE_LEN_MAX_BYTES: usize = 128;

/// Largest JSON body accepted by any RPC route, in bytes. Mirrors the frame
/// codec's JSON payload limit so that every transport refuses the same input.
pub const JSON_BODY_MAX_BYTES: usize = 256 * 1024;
