//! `direct`: 1:1 messages. P pairs of users, each pair in its own direct
//! channel; the sender sends over the chosen transport, the receiver listens
//! on the WebSocket (binary). Measures send->ack and send->delivery latency
//! and delivered messages per second, then checks that every acknowledged
//! message was delivered exactly once, in pts order, with no gap, and is
//! persisted.
//!
//! Pacing (`--rate` on a fixed, coordinated-omission-safe schedule, or
//! `--max`), measuring and verifying are [`super::traffic`]'s; each pair is
//! one channel with one sender and one listener.

use std::sync::Arc;

use anyhow::Context as _;
use conclave_client::ConnectOptions;
use conclave_client::api::messaging::DirectGetOrCreate;
use futures_util::StreamExt as _;
use serde::Serialize;

use super::traffic::{self, ChannelPlan, Listener, Pacing, Traffic};
use crate::common::{self, Device, Progress, SETUP_CONCURRENCY, Target, Transport};
use crate::report::Outcome;

#[derive(Debug, Clone, Serialize, clap::Args)]
pub struct DirectOptions {
    /// Pairs of users; each pair talks in its own direct channel.
    #[arg(long, default_value_t = 10)]
    pub pairs: usize,
    /// Transport of the senders (receivers always use the WebSocket).
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    pub transport: Transport,
    #[command(flatten)]
    #[serde(flatten)]
    pub pacing: Pacing,
}

#[derive(Debug, Clone, Serialize)]
pub struct DirectResult {
    pub transport: Transport,
    pub pairs: usize,
    #[serde(flatten)]
    pub traffic: Traffic,
}

/// Runs the scenario.
///
/// # Errors
///
/// When the setup fails (registration, channels, connections); failures
/// during the run are counted in the result.
pub async fn run(
    target: &Target,
    options: &DirectOptions,
    progress: &Progress,
) -> anyhow::Result<DirectResult> {
    target.require(options.transport)?;
    anyhow::ensure!(options.pairs > 0, "--pairs must be at least 1");
    options.pacing.scheduled()?;
    let channels = setup(target, options, progress).await?;
    let traffic = traffic::run(target, &options.pacing, channels, progress).await?;
    Ok(DirectResult {
        transport: options.transport,
        pairs: options.pairs,
        traffic,
    })
}

/// Registers the pairs, opens their channels and connections, and reads
/// each channel's head.
async fn setup(
    target: &Target,
    options: &DirectOptions,
    progress: &Progress,
) -> anyhow::Result<Vec<ChannelPlan>> {
    let prefix = common::run_prefix();
    let one_each = vec![1; options.pairs];
    let tcp = options.transport == Transport::Tcp;
    let senders = common::create_accounts(target, &prefix, "s", &one_each, tcp, progress).await?;
    let receivers =
        common::create_accounts(target, &prefix, "r", &one_each, false, progress).await?;
    let first = |devices: Vec<Vec<Device>>| -> anyhow::Result<Vec<Device>> {
        devices
            .into_iter()
            .map(|mut d| d.pop().context("an account without a device"))
            .collect()
    };
    let senders = first(senders)?;
    let receivers = first(receivers)?;

    let bar = progress.bar(options.pairs as u64, "connecting pairs");
    let pairs = futures_util::stream::iter(senders.into_iter().zip(receivers).enumerate())
        .map(|(index, (sender, receiver))| {
            let bar = bar.clone();
            async move {
                let channel = target
                    .http_as(&sender)
                    .call(&DirectGetOrCreate {
                        user_id: receiver.grant.user_id,
                    })
                    .await
                    .with_context(|| format!("opening the direct channel of pair {index}"))?
                    .channel_id;
                let receiving = target
                    .open(&receiver, Transport::Ws, ConnectOptions::default())
                    .await
                    .with_context(|| format!("connecting receiver {index}"))?;
                let sending = target
                    .open(&sender, options.transport, ConnectOptions::default())
                    .await
                    .with_context(|| format!("connecting sender {index}"))?;
                // Answered by the receiver's session: it is registered for
                // pushes by now, and the channel's head is the base.
                let base_pts = common::channel_head(&receiving, channel)
                    .await
                    .with_context(|| format!("reading the head of pair {index}'s channel"))?;
                bar.inc(1);
                anyhow::Ok(ChannelPlan {
                    channel,
                    base_pts,
                    senders: vec![Arc::new(sending)],
                    listeners: vec![Listener {
                        label: format!("receiver {index}"),
                        connection: receiving,
                        base_pts,
                    }],
                })
            }
        })
        // In pair order: pair i is stream i of the schedule.
        .buffered(SETUP_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    bar.finish_and_clear();
    pairs.into_iter().collect()
}

impl Outcome for DirectResult {
    fn scenario(&self) -> &'static str {
        "direct"
    }

    fn failures(&self) -> Vec<String> {
        self.traffic.failures()
    }

    fn table(&self) -> Vec<(String, String)> {
        let mut rows = vec![
            ("mode".to_owned(), self.traffic.mode_cell()),
            (
                "pairs / sender transport".to_owned(),
                format!("{} / {}", self.pairs, self.transport.as_str()),
            ),
        ];
        rows.extend(self.traffic.rows("persisted+delivered msg/s"));
        rows
    }

    fn charts(&self) -> Vec<(&'static str, String)> {
        let mode = self.traffic.mode_title();
        let latency = self.traffic.latency_chart(&format!(
            "1:1 latency, {} pairs, {mode}, {} s ({})",
            self.pairs,
            self.traffic.duration_secs,
            self.transport.as_str()
        ));
        let throughput = self.traffic.throughput_chart(
            &format!("1:1 throughput per second, {} pairs, {mode}", self.pairs),
            1,
        );
        vec![("latency", latency), ("throughput", throughput)]
    }
}
