//! `group`: fan-out in group channels. G groups of M members each (distinct
//! accounts); S members of every group send. Every member holds a
//! WebSocket (binary) session and listens; each message is pushed to all M
//! of them. Measures send->ack latency, send->delivery latency at every
//! member (fan-out latency) and delivered events per second (messages x
//! receivers), then checks at every member that every acknowledged message
//! of the group arrived exactly once, in pts order, with no gap, and that
//! every acknowledged message is persisted.
//!
//! A sending member sends from a second device of its account, over its
//! own session: the SDK reads a session's events with `&mut` while calls in
//! flight hold it by `&`, so one session cannot keep sends in flight and be
//! read by a listener at the same time. The server leaves the sending
//! session out of its own message's fan-out and pushes the message to every
//! other session, the sender's listening one included. The sending sessions
//! also get the other senders' messages; they read them between sends (see
//! [`traffic::SENDER_PUSH_BUDGET`]) and check that their own never come
//! back.
//!
//! Pacing (`--rate` on a fixed, coordinated-omission-safe schedule over all
//! senders of all groups, or `--max`), measuring and verifying are
//! [`super::traffic`]'s; each group is one channel.

use std::sync::Arc;

use anyhow::Context as _;
use conclave_client::api::groups::{GroupCreate, MemberAdd};
use conclave_client::{ConnectOptions, Connection};
use conclave_core::{ChannelId, UserId};
use futures_util::StreamExt as _;
use serde::Serialize;

use super::traffic::{self, ChannelPlan, Listener, Pacing, Traffic};
use crate::common::{self, Device, Progress, SETUP_CONCURRENCY, Target, Transport};
use crate::probe;
use crate::report::{Outcome, thousands};

/// Most users one `group/group/create` or `group/member/add` may name (the
/// server refuses larger batches).
pub const ADD_BATCH_MAX: usize = 100;

/// Leave this many file descriptors to everything else when checking the
/// sessions against `ulimit -n`.
const SPARE_FDS: u64 = 64;

#[derive(Debug, Clone, Serialize, clap::Args)]
pub struct GroupOptions {
    /// Groups, each with its own members.
    #[arg(long, default_value_t = 10)]
    pub groups: usize,
    /// Members per group, the owner included (distinct accounts; at most
    /// the server's `messaging.group_member_cap_max`, 2000 by default).
    #[arg(long, default_value_t = 50)]
    pub members: usize,
    /// Members per group that send (the owner first); every member listens.
    #[arg(long, default_value_t = 5)]
    pub senders: usize,
    #[command(flatten)]
    #[serde(flatten)]
    pub pacing: Pacing,
}

impl GroupOptions {
    /// WebSocket sessions the run holds: every member's, and a second one
    /// for every sender.
    #[must_use]
    pub fn sessions(&self) -> usize {
        self.groups * (self.members + self.senders)
    }

    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.groups > 0, "--groups must be at least 1");
        anyhow::ensure!(self.members >= 2, "--members must be at least 2");
        anyhow::ensure!(
            (1..=self.members).contains(&self.senders),
            "--senders must be between 1 and --members"
        );
        self.pacing.scheduled()?;
        if let Some(limit) = probe::open_files_limit()
            && (self.sessions() as u64) + SPARE_FDS > limit
        {
            anyhow::bail!(
                "{} sessions (groups x (members + senders)) need more file descriptors \
                 than `ulimit -n` allows ({limit})",
                self.sessions()
            );
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupResult {
    pub groups: usize,
    pub members: usize,
    pub senders_per_group: usize,
    /// Listening sessions each message is delivered to and checked at
    /// (every member of its group).
    pub receivers_per_message: usize,
    /// Sessions the server pushes each message to: every member's
    /// listening session and the group's other sending sessions.
    pub pushes_per_message: usize,
    /// Acknowledged messages per second over the run (`delivered_per_sec`
    /// divided by `receivers_per_message`).
    pub messages_per_sec: f64,
    #[serde(flatten)]
    pub traffic: Traffic,
}

/// Runs the scenario.
///
/// # Errors
///
/// When the setup fails (registration, groups, connections); failures
/// during the run are counted in the result.
pub async fn run(
    target: &Target,
    options: &GroupOptions,
    progress: &Progress,
) -> anyhow::Result<GroupResult> {
    options.check()?;
    let channels = setup(target, options, progress).await?;
    let traffic = traffic::run(target, &options.pacing, channels, progress).await?;
    Ok(GroupResult {
        groups: options.groups,
        members: options.members,
        senders_per_group: options.senders,
        receivers_per_message: options.members,
        pushes_per_message: options.members + options.senders - 1,
        messages_per_sec: traffic.delivered_per_sec / options.members as f64,
        traffic,
    })
}

/// Devices to create per account: account `g * members + m` is member `m`
/// of group `g`; the first `senders` members of each group have a second
/// device to send from.
#[must_use]
pub fn devices_per_account(groups: usize, members: usize, senders: usize) -> Vec<usize> {
    (0..groups * members)
        .map(|account| 1 + usize::from(account % members.max(1) < senders))
        .collect()
}

/// The members to name at creation (at most [`ADD_BATCH_MAX`]) and the
/// batches to add afterwards.
#[must_use]
pub fn member_batches(others: &[UserId]) -> (Vec<UserId>, Vec<Vec<UserId>>) {
    let mut batches = others.chunks(ADD_BATCH_MAX).map(<[UserId]>::to_vec);
    let first = batches.next().unwrap_or_default();
    (first, batches.collect())
}

/// One member's devices: the first listens, the second (senders only)
/// sends.
struct Member {
    listening: Device,
    sending: Option<Device>,
}

/// Registers the members, creates the groups and opens every session.
async fn setup(
    target: &Target,
    options: &GroupOptions,
    progress: &Progress,
) -> anyhow::Result<Vec<ChannelPlan>> {
    let prefix = common::run_prefix();
    let devices = devices_per_account(options.groups, options.members, options.senders);
    let accounts = common::create_accounts(target, &prefix, "g", &devices, false, progress).await?;
    let mut groups: Vec<Vec<Member>> = Vec::with_capacity(options.groups);
    let mut accounts = accounts.into_iter();
    for _ in 0..options.groups {
        let mut members = Vec::with_capacity(options.members);
        for account in accounts.by_ref().take(options.members) {
            let mut account = account.into_iter();
            let listening = account.next().context("an account without a device")?;
            members.push(Member {
                listening,
                sending: account.next(),
            });
        }
        groups.push(members);
    }

    let bar = progress.bar(options.groups as u64, "creating groups");
    let created = futures_util::stream::iter(groups.iter().enumerate())
        .map(|(index, members)| {
            let bar = bar.clone();
            async move {
                let channel = create_group(target, index, members).await?;
                bar.inc(1);
                anyhow::Ok(channel)
            }
        })
        .buffered(SETUP_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    bar.finish_and_clear();
    let channels: Vec<ChannelId> = created.into_iter().collect::<anyhow::Result<_>>()?;

    // Every session, in order: group by group, each member's listening
    // session, then its sending session.
    let sessions = groups
        .iter()
        .zip(&channels)
        .enumerate()
        .flat_map(|(g, (members, &channel))| {
            members.iter().enumerate().flat_map(move |(m, member)| {
                std::iter::once((g, m, channel, &member.listening, true)).chain(
                    member
                        .sending
                        .iter()
                        .map(move |d| (g, m, channel, d, false)),
                )
            })
        });
    let bar = progress.bar(options.sessions() as u64, "connecting members");
    let opened = futures_util::stream::iter(sessions)
        .map(|(g, m, channel, device, listens)| {
            let bar = bar.clone();
            async move {
                let role = if listens { "listening" } else { "sending" };
                let connection = target
                    .open(device, Transport::Ws, ConnectOptions::default())
                    .await
                    .with_context(|| {
                        format!("connecting the {role} session of group {g} member {m}")
                    })?;
                // Once a listening session answers, it is registered for the
                // group's pushes, and the channel's head is its base.
                let base_pts = if listens {
                    Some(
                        common::channel_head(&connection, channel)
                            .await
                            .with_context(|| format!("reading group {g}'s head for member {m}"))?,
                    )
                } else {
                    None
                };
                bar.inc(1);
                anyhow::Ok((g, m, connection, base_pts))
            }
        })
        .buffered(SETUP_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    bar.finish_and_clear();

    let mut plans: Vec<ChannelPlan> = channels
        .iter()
        .map(|&channel| ChannelPlan {
            channel,
            base_pts: u64::MAX,
            senders: Vec::with_capacity(options.senders),
            listeners: Vec::with_capacity(options.members),
        })
        .collect();
    for session in opened {
        let (g, m, connection, base_pts): (usize, usize, Connection, Option<u64>) = session?;
        let plan = plans.get_mut(g).context("a session of no group")?;
        match base_pts {
            Some(base_pts) => {
                plan.base_pts = plan.base_pts.min(base_pts);
                plan.listeners.push(Listener {
                    label: format!("group {g} member {m}"),
                    connection,
                    base_pts,
                });
            }
            None => plan.senders.push(Arc::new(connection)),
        }
    }
    Ok(plans)
}

/// Creates group `index` owned by its first member, with every other member
/// in it (named at creation, then added in batches); returns its channel.
async fn create_group(
    target: &Target,
    index: usize,
    members: &[Member],
) -> anyhow::Result<ChannelId> {
    let (owner, others) = members.split_first().context("a group without members")?;
    let owner = target.http_as(&owner.listening);
    let others: Vec<UserId> = others.iter().map(|m| m.listening.grant.user_id).collect();
    let (first, batches) = member_batches(&others);
    let created = owner
        .call(&GroupCreate {
            name: format!("bench group {index}"),
            description: None,
            member_ids: first,
        })
        .await
        .with_context(|| format!("creating group {index}"))?;
    for batch in batches {
        let wanted = batch.len();
        let added = owner
            .call(&MemberAdd {
                group_id: created.group_id,
                user_ids: batch,
            })
            .await
            .with_context(|| {
                format!(
                    "adding members to group {index} (more than the server's \
                     messaging.group_member_cap_max?)"
                )
            })?;
        anyhow::ensure!(
            added.added.len() == wanted && added.pending.is_empty(),
            "group {index}: {} of {wanted} members added, {} pending",
            added.added.len(),
            added.pending.len()
        );
    }
    Ok(created.channel_id)
}

impl Outcome for GroupResult {
    fn scenario(&self) -> &'static str {
        "group"
    }

    fn failures(&self) -> Vec<String> {
        let mut failures = self.traffic.failures();
        let expected = self.traffic.acked * self.receivers_per_message as u64;
        if self.traffic.delivered != expected && failures.is_empty() {
            failures.push(format!(
                "{} deliveries, expected {expected} ({} acknowledged x {} receivers)",
                self.traffic.delivered, self.traffic.acked, self.receivers_per_message
            ));
        }
        failures
    }

    fn table(&self) -> Vec<(String, String)> {
        let t = &self.traffic;
        let mut rows = vec![
            ("mode".to_owned(), t.mode_cell()),
            (
                "groups x members (senders)".to_owned(),
                format!(
                    "{} x {} ({} each; {} sessions)",
                    self.groups,
                    self.members,
                    self.senders_per_group,
                    self.groups * (self.members + self.senders_per_group)
                ),
            ),
            (
                "receivers / pushes per message".to_owned(),
                format!(
                    "{} / {} (every member; the other senders' sessions)",
                    self.receivers_per_message, self.pushes_per_message
                ),
            ),
        ];
        rows.extend(t.rows("delivered events/s (msg x receivers)"));
        rows.insert(
            5,
            (
                "acked+delivered msg/s".to_owned(),
                format!("{:.0}", self.messages_per_sec),
            ),
        );
        rows.push((
            "pushes read by senders / echoes".to_owned(),
            format!(
                "{} / {} ({} sends held back to read them)",
                thousands(t.sender_pushes),
                t.echoes,
                t.forced_reads
            ),
        ));
        rows
    }

    fn charts(&self) -> Vec<(&'static str, String)> {
        let t = &self.traffic;
        let mode = t.mode_title();
        let shape = format!(
            "{} groups x {} members, {} senders each",
            self.groups, self.members, self.senders_per_group
        );
        let latency = t.latency_chart(&format!(
            "group fan-out latency, {shape}, {mode}, {} s",
            t.duration_secs
        ));
        let throughput = t.throughput_chart(
            &format!("group throughput per second, {shape}, {mode}"),
            self.receivers_per_message,
        );
        vec![("latency", latency), ("throughput", throughput)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_members_of_each_group_get_a_sending_device() {
        assert_eq!(devices_per_account(2, 3, 1), vec![2, 1, 1, 2, 1, 1]);
        assert_eq!(devices_per_account(1, 2, 2), vec![2, 2]);
        assert!(devices_per_account(0, 5, 1).is_empty());
    }

    #[test]
    fn members_are_named_in_batches_the_server_takes() {
        let users: Vec<UserId> = (0..250).map(UserId::new).collect();
        let (first, rest) = member_batches(&users);
        assert_eq!(first.len(), ADD_BATCH_MAX);
        assert_eq!(rest.iter().map(Vec::len).collect::<Vec<_>>(), [100, 50]);
        let all: Vec<UserId> = first
            .into_iter()
            .chain(rest.into_iter().flatten())
            .collect();
        assert_eq!(all, users);
        let (first, rest) = member_batches(&users[..1]);
        assert_eq!((first.len(), rest.len()), (1, 0));
        let (first, rest) = member_batches(&[]);
        assert!(first.is_empty() && rest.is_empty());
    }

    #[test]
    fn options_are_checked() {
        let options = |groups, members, senders| GroupOptions {
            groups,
            members,
            senders,
            pacing: Pacing {
                rate: Some(10.0),
                max: false,
                duration_secs: 1,
                window: 1,
                text_bytes: 1,
                drain_secs: 1,
            },
        };
        assert!(options(2, 4, 2).check().is_ok());
        assert_eq!(options(2, 4, 2).sessions(), 12);
        assert!(options(0, 4, 2).check().is_err());
        assert!(options(1, 1, 1).check().is_err());
        assert!(options(1, 4, 0).check().is_err());
        assert!(options(1, 4, 5).check().is_err());
    }
}
