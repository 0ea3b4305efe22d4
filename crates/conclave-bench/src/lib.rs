//! Conclave's load generator and benchmark suite.
//!
//! Every scenario drives a *running* server over the real protocol through
//! the client SDK ([`conclave_client`]): accounts are registered over HTTP,
//! realtime sessions are opened over the WebSocket (CCP-1 binary) or
//! TCP+Noise, and every message is sent, acknowledged, pushed and verified
//! the way a real client sees it.
//!
//! The crate is a library with a thin binary (`conclave-bench`), so that
//! tests can run each scenario at a tiny size against a server started in
//! process:
//!
//! - [`scenarios::connections`]: N idle authenticated connections; the
//!   server's memory per connection and its CPU while they idle.
//! - [`scenarios::direct`]: pairs of users exchanging 1:1 messages at a fixed
//!   rate (coordinated-omission-safe) or as fast as the server goes;
//!   send->ack and send->delivery latency, delivered messages per second.
//! - [`scenarios::group`]: groups whose members all listen while some send;
//!   fan-out latency at every member, delivered events per second.
//! - [`scenarios::catchup`]: devices that were offline while messages
//!   accumulated reconnect at once and catch up by sync.
//! - [`scenarios::docs`]: clients editing shared Yjs documents over the
//!   y-websocket endpoint; update latency at every other client, updates
//!   and deliveries per second, server memory per loaded document.
//!
//! [`scenarios::traffic`] holds what `direct` and `group` share: the send
//! schedule, latency recording and the per-channel checks.
//!
//! Each scenario verifies what it measured: a lost, duplicated or
//! out-of-order message (or document update) fails the run, because a
//! benchmark that loses messages has no throughput.

pub mod chart;
pub mod common;
pub mod probe;
pub mod report;
pub mod scenarios;
pub mod stats;

pub use common::{Progress, Target, Transport};
pub use report::{Outcome, Report};
