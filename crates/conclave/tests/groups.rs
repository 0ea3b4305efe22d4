//! Acceptance tests of groups against the real `conclave` binary: the life
//! of a group (invitations with approval, invitation codes, moderation,
//! kicks, a handover, dissolution), convergence of an offline device, the
//! permission matrix, and bad input.
//!
//! Every test starts its own server in its own temporary directory.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use conclave_client::api::Route;
use conclave_client::api::account::{Audience, AuthGrant, PrivacyUpdate};
use conclave_client::api::contacts::BlacklistAdd;
use conclave_client::api::groups::{
    ApprovalHandle, ApprovalList, GroupCreate, GroupDissolve, GroupInfo, GroupList, GroupSettings,
    InvitePolicy, JoinStatus, JoinVia, MemberAdd, MemberLeave, MemberList, MemberMute,
    MemberRemove, MemberUnmute, MemberView, MembersAdded, MuteAll, QrcodeGenerate, QrcodeJoin,
    QrcodeRevoke, Role, RoleSet, SettingsGet, SettingsUpdate, TransferOwner,
};
use conclave_client::api::messaging::{
    ChannelEvent, Content, GetChannelPts, GetDifference, GetInboxDifference, HistoryGet,
    InboxEntry, MessageSend, MessageSent,
};
use conclave_client::{ClientError, Connection, Encoding, Event, HttpClient};
use conclave_core::{ChannelId, GroupId, UserId};
use serde_json::{Value, json};
use support::Server;

const PASSWORD: &str = "correct horse battery staple";
/// How long a test waits for something that should happen promptly.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a test listens to conclude that an event is not coming.
const QUIET_PERIOD: Duration = Duration::from_millis(500);
/// `messaging.group_member_cap_max` of the test servers.
const CAP_MAX: u32 = 500;

// ---------------------------------------------------------------------------
// Harness

/// A server with fast password hashing and rate limits out of the way.
struct Env {
    server: Server,
    _dir: tempfile::TempDir,
}

impl Env {
    fn start() -> Env {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let extra = format!("[messaging]\ngroup_member_cap_max = {CAP_MAX}\n");
        let config = support::write_config(dir.path(), &extra);
        let server = support::start_server(dir.path(), &config);
        Env { server, _dir: dir }
    }

    fn base(&self) -> String {
        format!("http://{}", self.server.http)
    }

    fn user_from(&self, name: &str, grant: AuthGrant) -> User {
        User {
            name: name.to_owned(),
            id: grant.user_id,
            http: HttpClient::new(&self.base()).with_token(&grant.token),
            grant,
        }
    }

    async fn register(&self, name: &str) -> User {
        let grant = HttpClient::new(&self.base())
            .register(name, PASSWORD, Some("phone"))
            .await
            .unwrap_or_else(|err| panic!("register {name}: {err}"));
        self.user_from(name, grant)
    }

    /// The same user on another device.
    async fn device(&self, user: &User, device: &str) -> User {
        let grant = HttpClient::new(&self.base())
            .login(&user.name, PASSWORD, Some(device))
            .await
            .unwrap_or_else(|err| panic!("log {} in on {device}: {err}", user.name));
        assert_ne!(grant.device_id, user.grant.device_id);
        self.user_from(&format!("{}'s {device}", user.name), grant)
    }

    async fn connect(&self, user: &User, encoding: Encoding) -> Live {
        let conn = Connection::connect_ws(&self.base(), &user.grant.token, encoding)
            .await
            .unwrap_or_else(|err| panic!("{} connects: {err}", user.name));
        Live {
            who: user.name.clone(),
            conn,
            backlog: Vec::new(),
            received: Vec::new(),
        }
    }
}

/// One device of a user, calling over HTTP.
struct User {
    name: String,
    id: UserId,
    grant: AuthGrant,
    http: HttpClient,
}

static NEXT_CLIENT_MSG_ID: AtomicU64 = AtomicU64::new(1);

impl User {
    /// A call that must succeed.
    async fn ok<R: Route>(&self, request: &R) -> R::Response {
        self.http
            .call(request)
            .await
            .unwrap_or_else(|err| panic!("{}: {} failed: {err}", self.name, R::NAME))
    }

    /// The code of a call that must fail.
    async fn refused<R: Route>(&self, request: &R) -> String
    where
        R::Response: std::fmt::Debug,
    {
        code_of(
            self.http.call(request).await,
            &format!("{}: {}", self.name, R::NAME),
        )
    }

    async fn send(&self, channel: ChannelId, text: &str) -> Result<MessageSent, ClientError> {
        let n = NEXT_CLIENT_MSG_ID.fetch_add(1, Ordering::Relaxed);
        self.http
            .call(&send_request(channel, &format!("c{n}"), text))
            .await
    }

    /// Every inbox entry after `last_pts`, in small pages.
    async fn inbox_after(&self, mut last_pts: u64) -> Vec<InboxEntry> {
        let mut entries = Vec::new();
        loop {
            let page = self
                .ok(&GetInboxDifference {
                    last_pts,
                    limit: Some(3),
                })
                .await;
            for entry in &page.events {
                assert_eq!(entry.pts, last_pts + 1, "{}: contiguous inbox", self.name);
                last_pts = entry.pts;
            }
            entries.extend(page.events);
            if !page.has_more {
                assert_eq!(last_pts, page.current_pts, "{}", self.name);
                return entries;
            }
        }
    }

    /// The user's inbox entries of `kind` about `group`.
    async fn inbox(&self, kind: &str, group: GroupId) -> Vec<InboxEntry> {
        self.inbox_after(0)
            .await
            .into_iter()
            .filter(|e| e.event == kind && e.body["group_id"] == json!(group))
            .collect()
    }

    /// Every event of a channel after `last_pts`, in small pages.
    async fn events_after(&self, channel: ChannelId, mut last_pts: u64) -> Vec<ChannelEvent> {
        let mut events = Vec::new();
        loop {
            let page = self
                .ok(&GetDifference {
                    channel_id: channel,
                    last_pts,
                    limit: Some(7),
                })
                .await;
            if let Some(last) = page.events.last() {
                last_pts = last.pts;
            }
            events.extend(page.events);
            if !page.has_more {
                assert_eq!(
                    last_pts, page.current_pts,
                    "{}: synced to the head",
                    self.name
                );
                return events;
            }
        }
    }

    async fn members(&self, group: GroupId) -> Vec<MemberView> {
        self.ok(&MemberList { group_id: group }).await.members
    }
}

/// A live session, remembering every event it received.
struct Live {
    who: String,
    conn: Connection,
    /// Received, not yet matched by [`Live::wait_for`].
    backlog: Vec<Event>,
    received: Vec<Event>,
}

impl Live {
    async fn next(&mut self, until: tokio::time::Instant) -> Option<Event> {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        match self.conn.next_event_timeout(left).await {
            Ok(Some(event)) => {
                self.received.push(event.clone());
                Some(event)
            }
            Ok(None) => panic!(
                "{}: the connection closed: {:?}",
                self.who,
                self.conn.close_reason()
            ),
            Err(_) => None,
        }
    }

    /// The first event (received or to come) that `wanted` accepts.
    async fn wait_for(&mut self, what: &str, wanted: impl Fn(&Event) -> bool) -> Event {
        if let Some(i) = self.backlog.iter().position(&wanted) {
            return self.backlog.remove(i);
        }
        let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
        while let Some(event) = self.next(deadline).await {
            if wanted(&event) {
                return event;
            }
            self.backlog.push(event);
        }
        panic!(
            "{}: no {what} within {STEP_TIMEOUT:?}; got {:#?}",
            self.who, self.backlog
        );
    }

    /// The unmatched events plus whatever arrives within the quiet period.
    async fn drain(&mut self) -> Vec<Event> {
        let deadline = tokio::time::Instant::now() + QUIET_PERIOD;
        while let Some(event) = self.next(deadline).await {
            self.backlog.push(event);
        }
        std::mem::take(&mut self.backlog)
    }
}

fn is_inbox(event: &Event, kind: &str, group: GroupId) -> bool {
    event.name == "inbox/new"
        && event.body()["event"] == kind
        && event.body()["body"]["group_id"] == json!(group)
}

/// The refusal code of a call that must fail.
fn code_of<T: std::fmt::Debug>(result: Result<T, ClientError>, what: &str) -> String {
    match result {
        Ok(value) => panic!("{what} succeeded: {value:?}"),
        Err(err) => err
            .code()
            .unwrap_or_else(|| panic!("{what} failed without a code: {err:?}"))
            .to_owned(),
    }
}

fn send_request(channel: ChannelId, client_msg_id: &str, text: &str) -> MessageSend {
    MessageSend {
        channel_id: channel,
        client_msg_id: client_msg_id.to_owned(),
        content: Content::Text {
            text: text.to_owned(),
        },
        reply_to: None,
        mentions: None,
    }
}

fn now_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock");
    i64::try_from(since.as_millis()).expect("a sane clock")
}

fn history(channel: ChannelId) -> HistoryGet {
    HistoryGet {
        channel_id: channel,
        before_pts: None,
        limit: Some(200),
    }
}

fn texts(page: &[conclave_client::api::messaging::MessageView]) -> Vec<String> {
    page.iter()
        .map(|m| match &m.content {
            Some(Content::Text { text }) => text.clone(),
            other => panic!("not a text message: {other:?}"),
        })
        .collect()
}

fn member(user: &User, role: Role) -> MemberView {
    MemberView {
        user_id: user.id,
        role,
        muted_until_ms: None,
    }
}

/// Members as `member/list` orders them: by role, highest first, then id.
fn sorted(mut members: Vec<MemberView>) -> Vec<MemberView> {
    members.sort_by(|a, b| b.role.cmp(&a.role).then(a.user_id.cmp(&b.user_id)));
    members
}

fn user_id(value: &Value) -> UserId {
    serde_json::from_value(value.clone()).unwrap_or_else(|err| panic!("{value}: {err}"))
}

/// The members and settings a client rebuilds from the channel's events.
fn replay(events: &[ChannelEvent]) -> (Vec<MemberView>, bool, bool) {
    let mut members: BTreeMap<UserId, MemberView> = BTreeMap::new();
    let (mut join_approval, mut mute_all) = (false, false);
    let put = |members: &mut BTreeMap<UserId, MemberView>, user: UserId, role: Role| {
        members.insert(
            user,
            MemberView {
                user_id: user,
                role,
                muted_until_ms: None,
            },
        );
    };
    for event in events {
        let body = &event.body;
        let known = |members: &BTreeMap<UserId, MemberView>, key: &str| {
            let user = user_id(&body[key]);
            assert!(members.contains_key(&user), "{event:?}: not a member");
            user
        };
        match event.event.as_str() {
            "group/created" => {
                put(&mut members, user_id(&body["owner_id"]), Role::Owner);
                for user in body["member_ids"].as_array().expect("member_ids") {
                    put(&mut members, user_id(user), Role::Member);
                }
            }
            "group/member_joined" => {
                for user in body["user_ids"].as_array().expect("user_ids") {
                    put(&mut members, user_id(user), Role::Member);
                }
            }
            "group/member_left" | "group/member_removed" => {
                let user = known(&members, "user_id");
                members.remove(&user);
            }
            "group/role_changed" => {
                let user = known(&members, "user_id");
                let role = Role::parse(body["role"].as_str().expect("role")).expect("a role");
                members.get_mut(&user).expect("a member").role = role;
            }
            "group/owner_transferred" => {
                let from = known(&members, "from_user_id");
                let to = known(&members, "to_user_id");
                members.get_mut(&from).expect("a member").role = Role::Admin;
                members.get_mut(&to).expect("a member").role = Role::Owner;
            }
            "group/member_muted" => {
                let user = known(&members, "user_id");
                members.get_mut(&user).expect("a member").muted_until_ms =
                    body["until_ms"].as_i64();
            }
            "group/updated" => {
                if let Some(on) = body["join_approval"].as_bool() {
                    join_approval = on;
                }
                if let Some(on) = body["mute_all"].as_bool() {
                    mute_all = on;
                }
            }
            "message/new" => {}
            other => panic!("an unexpected event {other}: {event:?}"),
        }
    }
    (
        sorted(members.into_values().collect()),
        join_approval,
        mute_all,
    )
}

// ---------------------------------------------------------------------------
// 1 and 2. The life of a group, and an offline device converging on it

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_lives_through_invitations_codes_moderation_kicks_and_a_handover() {
    let env = Env::start();
    let olga = env.register("olga").await;
    let alice = env.register("alice").await;
    // Alice's tablet stays offline until the end.
    let alice_tablet = env.device(&alice, "tablet").await;
    let bob = env.register("bob").await;
    let kim = env.register("kim").await;
    let carol = env.register("carol").await;
    let dave = env.register("dave").await;
    let erin = env.register("erin").await;
    let frank = env.register("frank").await;
    let gina = env.register("gina").await;
    let mut alice_live = env.connect(&alice, Encoding::Json).await;
    let mut kim_live = env.connect(&kim, Encoding::Binary).await;
    // The group channel's log as it should be, event by event.
    let mut log: Vec<&str> = Vec::new();

    // --- Creation: everyone is told; info, list and members agree.
    let created = olga
        .ok(&GroupCreate {
            name: "Book club".to_owned(),
            description: Some("one book a month".to_owned()),
            member_ids: vec![alice.id, bob.id, kim.id],
        })
        .await;
    let (group, channel) = (created.group_id, created.channel_id);
    log.push("group/created");
    for user in [&olga, &alice, &bob, &kim] {
        let joined = user.inbox("group/joined", group).await;
        assert_eq!(joined.len(), 1, "{}: {joined:?}", user.name);
        let body = &joined[0].body;
        assert_eq!(body["channel_id"], json!(channel), "{}", user.name);
        assert_eq!(body["name"], "Book club", "{}", user.name);
        assert_eq!(body["by"], json!(olga.id), "{}", user.name);
    }
    let pushed = alice_live
        .wait_for("group/created", |e| e.channel_id == Some(channel))
        .await;
    assert_eq!(
        (pushed.name.as_str(), pushed.pts),
        ("group/created", Some(1))
    );
    alice_live
        .wait_for("inbox group/joined", |e| is_inbox(e, "group/joined", group))
        .await;
    let mut roster = sorted(vec![
        member(&olga, Role::Owner),
        member(&alice, Role::Member),
        member(&bob, Role::Member),
        member(&kim, Role::Member),
    ]);
    let defaults = GroupSettings {
        join_approval: false,
        invite_policy: InvitePolicy::Members,
        member_cap: CAP_MAX,
        announcement: None,
        mute_all: false,
    };
    for (user, role) in [
        (&olga, Role::Owner),
        (&alice, Role::Member),
        (&bob, Role::Member),
        (&kim, Role::Member),
    ] {
        let info = user.ok(&GroupInfo { group_id: group }).await;
        assert_eq!(info.group_id, group);
        assert_eq!(info.channel_id, channel);
        assert_eq!(info.name, "Book club");
        assert_eq!(info.description, "one book a month");
        assert_eq!(info.owner_id, olga.id);
        assert_eq!(info.member_count, 4);
        assert_eq!(info.role, role, "{}", user.name);
        assert_eq!(info.settings, defaults);
        let list = user.ok(&GroupList {}).await;
        assert_eq!(list.groups, vec![info], "{}", user.name);
        assert_eq!(user.members(group).await, roster, "{}", user.name);
    }
    assert!(carol.ok(&GroupList {}).await.groups.is_empty());

    // --- Invitations with approval.
    olga.ok(&RoleSet {
        group_id: group,
        user_id: alice.id,
        role: Role::Admin,
    })
    .await;
    log.push("group/role_changed");
    roster = sorted(vec![
        member(&olga, Role::Owner),
        member(&alice, Role::Admin),
        member(&bob, Role::Member),
        member(&kim, Role::Member),
    ]);
    assert_eq!(olga.members(group).await, roster);
    let promoted = alice.inbox("group/role_changed", group).await;
    assert_eq!(promoted.len(), 1);
    assert_eq!(promoted[0].body["role"], "admin");
    let settings = olga
        .ok(&SettingsUpdate {
            group_id: group,
            join_approval: Some(true),
            invite_policy: None,
            member_cap: None,
            announcement: None,
        })
        .await;
    assert!(settings.join_approval);
    log.push("group/updated");

    let added = bob
        .ok(&MemberAdd {
            group_id: group,
            user_ids: vec![carol.id, dave.id],
        })
        .await;
    assert_eq!(
        added,
        MembersAdded {
            added: vec![],
            pending: vec![carol.id, dave.id]
        }
    );
    let mut request_of = BTreeMap::new();
    for invitee in [&carol, &dave] {
        let invited = invitee.inbox("group/invited", group).await;
        assert_eq!(invited.len(), 1, "{}: {invited:?}", invitee.name);
        assert_eq!(invited[0].body["inviter_id"], json!(bob.id));
        assert_eq!(invited[0].body["user_id"], json!(invitee.id));
        assert_eq!(invited[0].body["via"], "invite");
        request_of.insert(invitee.id, invited[0].body["request_id"].clone());
        assert_eq!(
            invitee.refused(&GroupInfo { group_id: group }).await,
            "not_member",
            "{} is only invited",
            invitee.name
        );
    }
    for moderator in [&olga, &alice] {
        let asked = moderator.inbox("group/approval", group).await;
        let users: Vec<UserId> = asked.iter().map(|e| user_id(&e.body["user_id"])).collect();
        assert_eq!(users, vec![carol.id, dave.id], "{}", moderator.name);
        for entry in &asked {
            assert_eq!(
                entry.body["request_id"],
                request_of[&user_id(&entry.body["user_id"])]
            );
        }
    }
    assert!(bob.inbox("group/approval", group).await.is_empty());
    alice_live
        .wait_for("inbox group/approval", |e| {
            is_inbox(e, "group/approval", group)
        })
        .await;
    let pending = alice.ok(&ApprovalList { group_id: group }).await.requests;
    assert_eq!(pending.len(), 2, "{pending:?}");
    for (request, invitee) in pending.iter().zip([&carol, &dave]) {
        assert_eq!(request.group_id, group);
        assert_eq!(request.user_id, invitee.id);
        assert_eq!(request.inviter_id, Some(bob.id));
        assert_eq!(request.via, JoinVia::Invite);
        assert_eq!(json!(request.request_id), request_of[&invitee.id]);
    }
    assert_eq!(
        bob.refused(&ApprovalList { group_id: group }).await,
        "forbidden"
    );
    assert_eq!(
        bob.refused(&ApprovalHandle {
            request_id: pending[0].request_id,
            approve: true,
        })
        .await,
        "forbidden",
        "a member handles a request"
    );
    alice
        .ok(&ApprovalHandle {
            request_id: pending[0].request_id,
            approve: true,
        })
        .await;
    log.push("group/member_joined");
    let joined = carol.inbox("group/joined", group).await;
    assert_eq!(joined.len(), 1);
    assert_eq!(joined[0].body["by"], json!(alice.id));
    assert_eq!(joined[0].body["via"], "invite");
    assert_eq!(
        carol.ok(&GroupInfo { group_id: group }).await.role,
        Role::Member
    );
    olga.ok(&ApprovalHandle {
        request_id: pending[1].request_id,
        approve: false,
    })
    .await;
    let declined = dave.inbox("group/declined", group).await;
    assert_eq!(declined.len(), 1);
    assert_eq!(declined[0].body["request_id"], request_of[&dave.id]);
    assert!(dave.inbox("group/joined", group).await.is_empty());
    assert_eq!(
        dave.refused(&GroupInfo { group_id: group }).await,
        "not_member"
    );
    assert!(
        alice
            .ok(&ApprovalList { group_id: group })
            .await
            .requests
            .is_empty()
    );
    assert_eq!(
        olga.refused(&ApprovalHandle {
            request_id: pending[1].request_id,
            approve: true,
        })
        .await,
        "conflict",
        "a declined request stays declined"
    );
    roster.push(member(&carol, Role::Member));
    roster = sorted(roster);
    assert_eq!(olga.members(group).await, roster);

    // --- Invitation codes: pending with approval on, joined without.
    let code = alice
        .ok(&QrcodeGenerate {
            group_id: group,
            ttl_secs: None,
        })
        .await;
    assert!(code.expires_at_ms > now_ms());
    let joined = erin
        .ok(&QrcodeJoin {
            code: code.code.clone(),
        })
        .await;
    assert_eq!(
        (joined.group_id, joined.channel_id, joined.status),
        (group, channel, JoinStatus::Pending)
    );
    assert_eq!(
        erin.refused(&GroupInfo { group_id: group }).await,
        "not_member"
    );
    let pending = olga.ok(&ApprovalList { group_id: group }).await.requests;
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(
        (pending[0].user_id, pending[0].inviter_id, pending[0].via),
        (erin.id, Some(alice.id), JoinVia::Qrcode)
    );
    for moderator in [&olga, &alice] {
        let asked = moderator.inbox("group/approval", group).await;
        assert_eq!(asked.len(), 3, "{}", moderator.name);
        assert_eq!(asked[2].body["user_id"], json!(erin.id));
        assert_eq!(asked[2].body["via"], "qrcode");
    }
    olga.ok(&ApprovalHandle {
        request_id: pending[0].request_id,
        approve: true,
    })
    .await;
    log.push("group/member_joined");
    let joined = erin.inbox("group/joined", group).await;
    assert_eq!(joined.len(), 1);
    assert_eq!(joined[0].body["via"], "qrcode");

    olga.ok(&SettingsUpdate {
        group_id: group,
        join_approval: Some(false),
        invite_policy: None,
        member_cap: None,
        announcement: None,
    })
    .await;
    log.push("group/updated");
    let bobs_code = bob
        .ok(&QrcodeGenerate {
            group_id: group,
            ttl_secs: None,
        })
        .await
        .code;
    let joined = frank
        .ok(&QrcodeJoin {
            code: bobs_code.clone(),
        })
        .await;
    assert_eq!(joined.status, JoinStatus::Joined);
    log.push("group/member_joined");
    let joined = frank.inbox("group/joined", group).await;
    assert_eq!(joined.len(), 1);
    assert_eq!(joined[0].body["by"], json!(bob.id));
    assert_eq!(joined[0].body["via"], "qrcode");
    assert_eq!(
        frank.ok(&GroupInfo { group_id: group }).await.role,
        Role::Member
    );
    assert_eq!(
        frank
            .refused(&QrcodeJoin {
                code: bobs_code.clone()
            })
            .await,
        "conflict"
    );

    olga.ok(&QrcodeRevoke { group_id: group }).await;
    log.push("group/updated");
    for old in [&bobs_code, &code.code] {
        assert_eq!(
            gina.refused(&QrcodeJoin { code: old.clone() }).await,
            "link_expired",
            "a revoked code"
        );
    }
    let short = alice
        .ok(&QrcodeGenerate {
            group_id: group,
            ttl_secs: Some(1),
        })
        .await
        .code;
    let (signed, mac) = short.rsplit_once('.').expect("a signed code");
    let flip = |text: &str, at: usize| -> String {
        let mut chars: Vec<char> = text.chars().collect();
        chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
        chars.into_iter().collect()
    };
    let tampered = [
        format!("{}.{mac}", flip(signed, signed.len() - 5)),
        format!("{signed}.{}", flip(mac, mac.len() / 2)),
        "cg1.bm90IGEgY29kZQ.bm90IGEgbWFj".to_owned(),
        "hello".to_owned(),
    ];
    for bad in tampered {
        assert_eq!(
            gina.refused(&QrcodeJoin { code: bad.clone() }).await,
            "link_invalid",
            "{bad}"
        );
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        gina.refused(&QrcodeJoin { code: short }).await,
        "link_expired",
        "an expired code"
    );
    assert_eq!(
        gina.refused(&GroupInfo { group_id: group }).await,
        "not_member"
    );
    // Codes issued after the revocation work.
    let fresh = olga
        .ok(&QrcodeGenerate {
            group_id: group,
            ttl_secs: None,
        })
        .await;
    assert_eq!(
        gina.ok(&QrcodeJoin { code: fresh.code }).await.status,
        JoinStatus::Joined
    );
    log.push("group/member_joined");
    roster.extend([
        member(&erin, Role::Member),
        member(&frank, Role::Member),
        member(&gina, Role::Member),
    ]);
    roster = sorted(roster);
    assert_eq!(olga.members(group).await, roster);

    // --- Moderation: an admin mutes a member; then everyone is muted.
    let until = now_ms() + 60_000;
    alice
        .ok(&MemberMute {
            group_id: group,
            user_id: bob.id,
            until_ms: until,
        })
        .await;
    log.push("group/member_muted");
    let muted = bob.inbox("group/member_muted", group).await;
    assert_eq!(muted.len(), 1);
    assert_eq!(muted[0].body["until_ms"], json!(until));
    assert_eq!(muted[0].body["by"], json!(alice.id));
    let listed = olga.members(group).await;
    let bob_view = listed.iter().find(|m| m.user_id == bob.id).expect("bob");
    assert_eq!(bob_view.muted_until_ms, Some(until));
    assert_eq!(
        code_of(bob.send(channel, "can I talk?").await, "muted bob sends"),
        "muted"
    );
    alice
        .ok(&MemberUnmute {
            group_id: group,
            user_id: bob.id,
        })
        .await;
    log.push("group/member_muted");
    let sent = bob
        .send(channel, "thanks")
        .await
        .expect("unmuted bob sends");
    log.push("message/new");
    assert_eq!(sent.pts, log.len() as u64);

    let settings = olga
        .ok(&MuteAll {
            group_id: group,
            muted: true,
        })
        .await;
    assert!(settings.mute_all);
    log.push("group/updated");
    for plain in [&bob, &carol] {
        assert_eq!(
            code_of(plain.send(channel, "hello?").await, &plain.name),
            "muted",
            "{} while everyone is muted",
            plain.name
        );
    }
    for moderator in [&alice, &olga] {
        let sent = moderator
            .send(channel, "announcement")
            .await
            .unwrap_or_else(|err| panic!("{} sends while all are muted: {err}", moderator.name));
        log.push("message/new");
        assert_eq!(sent.pts, log.len() as u64);
    }
    alice
        .ok(&MuteAll {
            group_id: group,
            muted: false,
        })
        .await;
    log.push("group/updated");
    bob.send(channel, "free again").await.expect("bob sends");
    log.push("message/new");

    // --- Kick: the kicked member hears nothing more and reads nothing.
    let kims_code = kim
        .ok(&QrcodeGenerate {
            group_id: group,
            ttl_secs: None,
        })
        .await
        .code;
    kim_live.drain().await;
    alice
        .ok(&MemberRemove {
            group_id: group,
            user_id: kim.id,
        })
        .await;
    log.push("group/member_removed");
    let kick_pts = log.len() as u64;
    let mut after_kick = Vec::new();
    for sender in [&bob, &olga] {
        let sent = sender.send(channel, "kim is gone").await.expect("send");
        log.push("message/new");
        after_kick.push(sent.pts);
    }
    assert_eq!(after_kick, vec![kick_pts + 1, kick_pts + 2]);
    // Live delivery works: a member's session gets the messages...
    alice_live
        .wait_for("a message after the kick", |e| {
            e.channel_id == Some(channel) && e.pts == Some(kick_pts + 2)
        })
        .await;
    // ...and Kim's does not, though it heard of the kick itself.
    let heard = kim_live.drain().await;
    for event in &heard {
        assert!(
            event.channel_id != Some(channel) || event.pts.is_some_and(|pts| pts <= kick_pts),
            "kim got a channel event after the kick: {event:?}"
        );
    }
    let removal = heard
        .iter()
        .find(|e| e.name == "group/member_removed")
        .unwrap_or_else(|| panic!("kim heard nothing of the kick: {heard:#?}"));
    assert_eq!(removal.pts, Some(kick_pts));
    assert_eq!(removal.body()["user_id"], json!(kim.id));
    let told = heard
        .iter()
        .find(|e| is_inbox(e, "group/removed", group))
        .unwrap_or_else(|| panic!("no live inbox entry for the kick: {heard:#?}"));
    assert_eq!(told.body()["body"]["reason"], "kicked");
    let removed = kim.inbox("group/removed", group).await;
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0].body["reason"], "kicked");
    assert_eq!(removed[0].body["by"], json!(alice.id));
    assert_eq!(json!(told.body()["pts"]), json!(removed[0].pts));
    assert_eq!(
        code_of(kim.http.call(&history(channel)).await, "kim's history"),
        "not_member"
    );
    for from in [0, kick_pts - 1, kick_pts] {
        let diff = kim
            .http
            .call(&GetDifference {
                channel_id: channel,
                last_pts: from,
                limit: None,
            })
            .await;
        assert_eq!(code_of(diff, "kim's sync"), "not_member", "from {from}");
    }
    assert_eq!(
        kim.refused(&GroupInfo { group_id: group }).await,
        "not_member"
    );
    assert_eq!(
        code_of(kim.send(channel, "let me back").await, "kim sends"),
        "not_member"
    );
    assert!(kim.ok(&GroupList {}).await.groups.is_empty());
    assert_eq!(
        dave.refused(&QrcodeJoin { code: kims_code }).await,
        "link_expired",
        "a code of someone who may no longer invite"
    );

    // Re-added, Kim sees the group from the re-join on.
    let added = olga
        .ok(&MemberAdd {
            group_id: group,
            user_ids: vec![kim.id],
        })
        .await;
    assert_eq!(added.added, vec![kim.id]);
    log.push("group/member_joined");
    let rejoin_pts = log.len() as u64;
    bob.send(channel, "welcome back").await.expect("send");
    log.push("message/new");
    assert_eq!(kim.inbox("group/joined", group).await.len(), 2);
    let seen = kim.events_after(channel, 0).await;
    let seen_pts: Vec<u64> = seen.iter().map(|e| e.pts).collect();
    assert_eq!(seen_pts, vec![rejoin_pts, rejoin_pts + 1], "{seen:#?}");
    assert_eq!(seen[0].event, "group/member_joined");
    assert_eq!(seen[0].body["user_ids"], json!([kim.id]));
    assert_eq!(seen[1].event, "message/new");
    let page = kim.ok(&history(channel)).await;
    assert_eq!(texts(&page.messages), vec!["welcome back"]);
    assert!(!page.has_more);
    kim_live
        .wait_for("the message after the re-join", |e| {
            e.channel_id == Some(channel) && e.pts == Some(rejoin_pts + 1)
        })
        .await;

    // --- A member leaves.
    frank.ok(&MemberLeave { group_id: group }).await;
    log.push("group/member_left");
    let left = frank.inbox("group/removed", group).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].body["reason"], "left");
    assert_eq!(
        frank.refused(&GroupInfo { group_id: group }).await,
        "not_member"
    );
    roster.retain(|m| m.user_id != frank.id);

    // --- Ownership handed to an admin.
    olga.ok(&TransferOwner {
        group_id: group,
        user_id: alice.id,
    })
    .await;
    log.push("group/owner_transferred");
    for entry in roster.iter_mut() {
        if entry.user_id == olga.id {
            entry.role = Role::Admin;
        } else if entry.user_id == alice.id {
            entry.role = Role::Owner;
        }
    }
    roster = sorted(roster);
    assert_eq!(olga.members(group).await, roster);
    let info = olga.ok(&GroupInfo { group_id: group }).await;
    assert_eq!((info.owner_id, info.role), (alice.id, Role::Admin));
    let roles = |entries: Vec<InboxEntry>| -> Vec<Value> {
        entries
            .into_iter()
            .map(|e| e.body["role"].clone())
            .collect()
    };
    assert_eq!(
        roles(alice.inbox("group/role_changed", group).await),
        vec![json!("admin"), json!("owner")]
    );
    assert_eq!(
        roles(olga.inbox("group/role_changed", group).await),
        vec![json!("admin")]
    );
    assert_eq!(
        olga.refused(&TransferOwner {
            group_id: group,
            user_id: bob.id,
        })
        .await,
        "forbidden",
        "the old owner hands over again"
    );
    let head = log.len() as u64;
    assert_eq!(
        olga.ok(&GetChannelPts {
            channel_id: channel
        })
        .await
        .pts,
        head
    );

    // --- 2. Convergence: the tablet, offline all along, catches up.
    let events = alice_tablet.events_after(channel, 0).await;
    let pts: Vec<u64> = events.iter().map(|e| e.pts).collect();
    assert_eq!(pts, (1..=head).collect::<Vec<_>>(), "contiguous, in order");
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds, log);
    let (members, join_approval, mute_all) = replay(&events);
    assert_eq!(members, alice_tablet.members(group).await);
    assert_eq!(members, roster);
    let settings = alice_tablet.ok(&SettingsGet { group_id: group }).await;
    assert_eq!(
        (join_approval, mute_all),
        (settings.join_approval, settings.mute_all)
    );
    // What the phone got live is what the tablet synced.
    alice_live.drain().await;
    let live: Vec<(u64, String, Value)> = alice_live
        .received
        .iter()
        .filter(|e| e.channel_id == Some(channel))
        .map(|e| (e.pts.expect("a pts"), e.name.clone(), e.body()))
        .collect();
    let synced: Vec<(u64, String, Value)> = events
        .iter()
        .map(|e| (e.pts, e.event.clone(), e.body.clone()))
        .collect();
    assert_eq!(live, synced);
    let inbox: Vec<InboxEntry> = alice_tablet
        .inbox_after(0)
        .await
        .into_iter()
        .filter(|e| e.event.starts_with("group/"))
        .collect();
    let kinds: Vec<&str> = inbox.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        kinds,
        vec![
            "group/joined",
            "group/role_changed",
            "group/approval",
            "group/approval",
            "group/approval",
            "group/role_changed",
        ]
    );
    let live_inbox: Vec<InboxEntry> = alice_live
        .received
        .iter()
        .filter(|e| e.name == "inbox/new")
        .map(|e| e.body_as::<InboxEntry>().expect("an inbox entry"))
        .filter(|e| e.event.starts_with("group/"))
        .collect();
    assert_eq!(live_inbox, inbox);

    // --- The new owner dissolves the group.
    alice.ok(&GroupDissolve { group_id: group }).await;
    let dissolved = alice_live
        .wait_for("group/dissolved", |e| e.name == "group/dissolved")
        .await;
    assert_eq!(dissolved.pts, Some(head + 1));
    for user in [&olga, &alice, &bob, &carol, &erin, &gina, &kim] {
        let removed = user.inbox("group/removed", group).await;
        let last = removed
            .last()
            .unwrap_or_else(|| panic!("{}: not told", user.name));
        assert_eq!(last.body["reason"], "dissolved", "{}", user.name);
        assert_eq!(
            user.refused(&GroupInfo { group_id: group }).await,
            "not_found"
        );
        assert!(
            user.ok(&GroupList {}).await.groups.is_empty(),
            "{}",
            user.name
        );
        assert_eq!(
            code_of(user.send(channel, "anyone?").await, &user.name),
            "not_member"
        );
    }
    assert!(dave.inbox("group/removed", group).await.is_empty());
    assert_eq!(
        frank.inbox("group/removed", group).await.len(),
        1,
        "frank had left"
    );
}

// ---------------------------------------------------------------------------
// 3. The permission matrix

/// Who acts, or is acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Owner,
    Admin,
    Member,
    /// A member muted by the owner.
    Muted,
    Outsider,
    /// A user in no group, who lets anyone add them.
    Fresh,
    /// A user who has blocked the owner.
    Blocker,
    /// A user whose privacy lets nobody add them.
    Private,
}

/// What a call must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Succeeds and changes nothing.
    Reads,
    /// Succeeds and moves the channel's pts.
    Changes,
    /// Fails with this code and changes nothing.
    Refused(&'static str),
}

/// The group's settings a case runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    Plain,
    AdminsInvite,
    AllMuted,
}

use Expect::{Changes, Reads, Refused};
use Who::{Admin, Blocker, Fresh, Member, Muted, Outsider, Owner, Private};

const FORBIDDEN: Expect = Refused("forbidden");
const NOT_MEMBER: Expect = Refused("not_member");

type Case = (&'static str, Who, Option<Who>, Expect);

/// Every route × actor (× target) in a plain group.
#[rustfmt::skip]
const MATRIX: &[Case] = &[
    ("group/group/info", Owner, None, Reads),
    ("group/group/info", Admin, None, Reads),
    ("group/group/info", Member, None, Reads),
    ("group/group/info", Muted, None, Reads),
    ("group/group/info", Outsider, None, NOT_MEMBER),
    ("group/group/update", Owner, None, Changes),
    ("group/group/update", Admin, None, Changes),
    ("group/group/update", Member, None, FORBIDDEN),
    ("group/group/update", Muted, None, FORBIDDEN),
    ("group/group/update", Outsider, None, NOT_MEMBER),
    ("group/group/dissolve", Owner, None, Changes),
    ("group/group/dissolve", Admin, None, FORBIDDEN),
    ("group/group/dissolve", Member, None, FORBIDDEN),
    ("group/group/dissolve", Muted, None, FORBIDDEN),
    ("group/group/dissolve", Outsider, None, NOT_MEMBER),
    ("group/member/add", Owner, Some(Fresh), Changes),
    ("group/member/add", Admin, Some(Fresh), Changes),
    ("group/member/add", Member, Some(Fresh), Changes),
    ("group/member/add", Muted, Some(Fresh), Changes),
    ("group/member/add", Outsider, Some(Fresh), NOT_MEMBER),
    ("group/member/add", Owner, Some(Blocker), Refused("blocked")),
    ("group/member/add", Admin, Some(Blocker), Changes),
    ("group/member/add", Owner, Some(Private), Refused("privacy_restricted")),
    ("group/member/add", Member, Some(Private), Refused("privacy_restricted")),
    ("group/member/remove", Owner, Some(Admin), Changes),
    ("group/member/remove", Owner, Some(Member), Changes),
    ("group/member/remove", Admin, Some(Member), Changes),
    ("group/member/remove", Admin, Some(Muted), Changes),
    ("group/member/remove", Admin, Some(Owner), FORBIDDEN),
    ("group/member/remove", Member, Some(Admin), FORBIDDEN),
    ("group/member/remove", Member, Some(Muted), FORBIDDEN),
    ("group/member/remove", Member, Some(Owner), FORBIDDEN),
    ("group/member/remove", Muted, Some(Member), FORBIDDEN),
    ("group/member/remove", Outsider, Some(Member), NOT_MEMBER),
    ("group/member/list", Owner, None, Reads),
    ("group/member/list", Admin, None, Reads),
    ("group/member/list", Member, None, Reads),
    ("group/member/list", Muted, None, Reads),
    ("group/member/list", Outsider, None, NOT_MEMBER),
    ("group/member/leave", Owner, None, FORBIDDEN),
    ("group/member/leave", Admin, None, Changes),
    ("group/member/leave", Member, None, Changes),
    ("group/member/leave", Muted, None, Changes),
    ("group/member/leave", Outsider, None, NOT_MEMBER),
    ("group/member/mute", Owner, Some(Admin), Changes),
    ("group/member/mute", Owner, Some(Member), Changes),
    ("group/member/mute", Admin, Some(Member), Changes),
    ("group/member/mute", Admin, Some(Owner), FORBIDDEN),
    ("group/member/mute", Member, Some(Muted), FORBIDDEN),
    ("group/member/mute", Member, Some(Admin), FORBIDDEN),
    ("group/member/mute", Muted, Some(Member), FORBIDDEN),
    ("group/member/mute", Outsider, Some(Member), NOT_MEMBER),
    ("group/member/unmute", Owner, Some(Muted), Changes),
    ("group/member/unmute", Admin, Some(Muted), Changes),
    ("group/member/unmute", Member, Some(Muted), FORBIDDEN),
    ("group/member/unmute", Muted, Some(Member), FORBIDDEN),
    ("group/member/unmute", Outsider, Some(Muted), NOT_MEMBER),
    ("group/role/set", Owner, Some(Member), Changes),
    ("group/role/set", Owner, Some(Admin), Changes),
    ("group/role/set", Admin, Some(Member), FORBIDDEN),
    ("group/role/set", Member, Some(Muted), FORBIDDEN),
    ("group/role/set", Muted, Some(Member), FORBIDDEN),
    ("group/role/set", Outsider, Some(Member), NOT_MEMBER),
    ("group/role/transfer_owner", Owner, Some(Admin), Changes),
    ("group/role/transfer_owner", Owner, Some(Member), Changes),
    ("group/role/transfer_owner", Admin, Some(Member), FORBIDDEN),
    ("group/role/transfer_owner", Member, Some(Admin), FORBIDDEN),
    ("group/role/transfer_owner", Muted, Some(Admin), FORBIDDEN),
    (
        "group/role/transfer_owner",
        Outsider,
        Some(Admin),
        NOT_MEMBER,
    ),
    ("group/settings/get", Owner, None, Reads),
    ("group/settings/get", Admin, None, Reads),
    ("group/settings/get", Member, None, Reads),
    ("group/settings/get", Muted, None, Reads),
    ("group/settings/get", Outsider, None, NOT_MEMBER),
    ("group/settings/update", Owner, None, Changes),
    ("group/settings/update", Admin, None, Changes),
    ("group/settings/update", Member, None, FORBIDDEN),
    ("group/settings/update", Muted, None, FORBIDDEN),
    ("group/settings/update", Outsider, None, NOT_MEMBER),
    ("group/settings/mute_all", Owner, None, Changes),
    ("group/settings/mute_all", Admin, None, Changes),
    ("group/settings/mute_all", Member, None, FORBIDDEN),
    ("group/settings/mute_all", Muted, None, FORBIDDEN),
    ("group/settings/mute_all", Outsider, None, NOT_MEMBER),
    ("group/qrcode/generate", Owner, None, Reads),
    ("group/qrcode/generate", Admin, None, Reads),
    ("group/qrcode/generate", Member, None, Reads),
    ("group/qrcode/generate", Muted, None, Reads),
    ("group/qrcode/generate", Outsider, None, NOT_MEMBER),
    ("group/qrcode/revoke", Owner, None, Changes),
    ("group/qrcode/revoke", Admin, None, Changes),
    ("group/qrcode/revoke", Member, None, FORBIDDEN),
    ("group/qrcode/revoke", Muted, None, FORBIDDEN),
    ("group/qrcode/revoke", Outsider, None, NOT_MEMBER),
    ("group/approval/list", Owner, None, Reads),
    ("group/approval/list", Admin, None, Reads),
    ("group/approval/list", Member, None, FORBIDDEN),
    ("group/approval/list", Muted, None, FORBIDDEN),
    ("group/approval/list", Outsider, None, NOT_MEMBER),
    ("message/send", Owner, None, Changes),
    ("message/send", Admin, None, Changes),
    ("message/send", Member, None, Changes),
    ("message/send", Muted, None, Refused("muted")),
    ("message/send", Outsider, None, NOT_MEMBER),
];

/// The rows that depend on the group's settings.
#[rustfmt::skip]
const VARIANTS: &[(Setup, Case)] = &[
    (Setup::AdminsInvite, ("group/member/add", Owner, Some(Fresh), Changes)),
    (Setup::AdminsInvite, ("group/member/add", Admin, Some(Fresh), Changes)),
    (Setup::AdminsInvite, ("group/member/add", Member, Some(Fresh), FORBIDDEN)),
    (Setup::AdminsInvite, ("group/member/add", Muted, Some(Fresh), FORBIDDEN)),
    (Setup::AdminsInvite, ("group/qrcode/generate", Admin, None, Reads)),
    (Setup::AdminsInvite, ("group/qrcode/generate", Member, None, FORBIDDEN)),
    (Setup::AllMuted, ("message/send", Owner, None, Changes)),
    (Setup::AllMuted, ("message/send", Admin, None, Changes)),
    (Setup::AllMuted, ("message/send", Member, None, Refused("muted"))),
    (Setup::AllMuted, ("message/send", Muted, None, Refused("muted"))),
    (Setup::AllMuted, ("message/send", Outsider, None, NOT_MEMBER)),
];

struct Cast {
    owner: User,
    admin: User,
    member: User,
    muted: User,
    outsider: User,
    fresh: User,
    blocker: User,
    private: User,
}

impl Cast {
    fn user(&self, who: Who) -> &User {
        match who {
            Owner => &self.owner,
            Admin => &self.admin,
            Member => &self.member,
            Muted => &self.muted,
            Outsider => &self.outsider,
            Fresh => &self.fresh,
            Blocker => &self.blocker,
            Private => &self.private,
        }
    }

    /// A group of owner, admin, member and muted member, under `setup`.
    async fn group(&self, setup: Setup) -> (GroupId, ChannelId) {
        let created = self
            .owner
            .ok(&GroupCreate {
                name: "Matrix".to_owned(),
                description: None,
                member_ids: vec![self.admin.id, self.member.id, self.muted.id],
            })
            .await;
        let group = created.group_id;
        self.owner
            .ok(&RoleSet {
                group_id: group,
                user_id: self.admin.id,
                role: Role::Admin,
            })
            .await;
        self.owner
            .ok(&MemberMute {
                group_id: group,
                user_id: self.muted.id,
                until_ms: now_ms() + 3_600_000,
            })
            .await;
        match setup {
            Setup::Plain => {}
            Setup::AdminsInvite => {
                let settings = self
                    .owner
                    .ok(&SettingsUpdate {
                        group_id: group,
                        join_approval: None,
                        invite_policy: Some(InvitePolicy::Admins),
                        member_cap: None,
                        announcement: None,
                    })
                    .await;
                assert_eq!(settings.invite_policy, InvitePolicy::Admins);
            }
            Setup::AllMuted => {
                let settings = self
                    .owner
                    .ok(&MuteAll {
                        group_id: group,
                        muted: true,
                    })
                    .await;
                assert!(settings.mute_all);
            }
        }
        (group, created.channel_id)
    }

    /// The request body of a case.
    fn body(&self, case: &Case, group: GroupId, channel: ChannelId) -> Value {
        let (route, _, target, _) = *case;
        let target = target.map(|who| self.user(who).id);
        match route {
            "group/group/update" => json!({ "group_id": group, "name": "Renamed" }),
            "group/member/add" => json!({ "group_id": group, "user_ids": [target] }),
            "group/member/remove" | "group/member/unmute" | "group/role/transfer_owner" => {
                json!({ "group_id": group, "user_id": target })
            }
            "group/member/mute" => {
                json!({ "group_id": group, "user_id": target, "until_ms": now_ms() + 60_000 })
            }
            "group/role/set" => {
                let role = if case.2 == Some(Admin) {
                    "member"
                } else {
                    "admin"
                };
                json!({ "group_id": group, "user_id": target, "role": role })
            }
            "group/settings/update" => json!({ "group_id": group, "announcement": "Read it" }),
            "group/settings/mute_all" => json!({ "group_id": group, "muted": true }),
            "message/send" => {
                let n = NEXT_CLIENT_MSG_ID.fetch_add(1, Ordering::Relaxed);
                serde_json::to_value(send_request(channel, &format!("m{n}"), "hi")).unwrap()
            }
            _ => json!({ "group_id": group }),
        }
    }
}

/// The group as its owner sees it, with the channel's head.
#[derive(Debug, PartialEq)]
struct Snapshot {
    views: Vec<Value>,
    pts: u64,
}

async fn snapshot(owner: &User, group: GroupId, channel: ChannelId) -> Snapshot {
    let mut views = Vec::new();
    for route in [
        "group/group/info",
        "group/member/list",
        "group/settings/get",
        "group/approval/list",
    ] {
        let view = owner
            .http
            .call_raw(route, json!({ "group_id": group }))
            .await
            .unwrap_or_else(|err| panic!("snapshot {route}: {err}"));
        views.push(view);
    }
    views.push(json!(owner.ok(&GroupList {}).await));
    let pts = owner
        .ok(&GetChannelPts {
            channel_id: channel,
        })
        .await
        .pts;
    Snapshot { views, pts }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_and_role_gets_exactly_what_the_rules_allow() {
    let env = Env::start();
    let cast = Cast {
        owner: env.register("owner").await,
        admin: env.register("admin").await,
        member: env.register("member").await,
        muted: env.register("muted").await,
        outsider: env.register("outsider").await,
        fresh: env.register("fresh").await,
        blocker: env.register("blocker").await,
        private: env.register("private").await,
    };
    cast.blocker
        .ok(&BlacklistAdd {
            user_id: cast.owner.id,
        })
        .await;
    let privacy = cast
        .private
        .ok(&PrivacyUpdate {
            group_invites: Some(Audience::Nobody),
            ..PrivacyUpdate::default()
        })
        .await;
    assert_eq!(privacy.group_invites, Audience::Nobody);

    let cases = MATRIX
        .iter()
        .map(|case| (Setup::Plain, case))
        .chain(VARIANTS.iter().map(|(setup, case)| (*setup, case)));
    // Cases that change nothing share one group per setup.
    let mut shared: Vec<(Setup, GroupId, ChannelId)> = Vec::new();
    let mut checked = 0;
    for (setup, case) in cases {
        let (route, actor, target, expect) = *case;
        let what = format!("{route} by {actor:?} on {target:?} ({setup:?})");
        let (group, channel) = if expect == Changes {
            cast.group(setup).await
        } else if let Some((_, g, c)) = shared.iter().find(|(s, _, _)| *s == setup) {
            (*g, *c)
        } else {
            let (g, c) = cast.group(setup).await;
            shared.push((setup, g, c));
            (g, c)
        };
        let before = snapshot(&cast.owner, group, channel).await;
        let result = cast
            .user(actor)
            .http
            .call_raw(route, cast.body(case, group, channel))
            .await;
        match expect {
            Refused(code) => {
                assert_eq!(code_of(result, &what), code, "{what}");
            }
            Reads => {
                result.unwrap_or_else(|err| panic!("{what}: {err}"));
            }
            Changes => {
                result.unwrap_or_else(|err| panic!("{what}: {err}"));
                if route == "group/group/dissolve" {
                    assert_eq!(
                        cast.owner.refused(&GroupInfo { group_id: group }).await,
                        "not_found",
                        "{what}"
                    );
                } else {
                    let pts = cast
                        .owner
                        .ok(&GetChannelPts {
                            channel_id: channel,
                        })
                        .await;
                    assert_eq!(pts.pts, before.pts + 1, "{what}");
                }
                checked += 1;
                continue;
            }
        }
        let after = snapshot(&cast.owner, group, channel).await;
        assert_eq!(before, after, "{what} changed the group");
        checked += 1;
    }
    assert_eq!(checked, MATRIX.len() + VARIANTS.len());

    // An invitation code does not let in someone its issuer has blocked.
    cast.owner
        .ok(&BlacklistAdd {
            user_id: cast.outsider.id,
        })
        .await;
    let (group, channel) = cast.group(Setup::Plain).await;
    let code = cast
        .owner
        .ok(&QrcodeGenerate {
            group_id: group,
            ttl_secs: None,
        })
        .await
        .code;
    let before = snapshot(&cast.owner, group, channel).await;
    assert_eq!(
        cast.outsider.refused(&QrcodeJoin { code }).await,
        "blocked",
        "joining by the code of a user who blocked the joiner"
    );
    assert_eq!(snapshot(&cast.owner, group, channel).await, before);
}

// ---------------------------------------------------------------------------
// 4. Bad input

type Refusal<'a> = (&'a User, &'a str, Value, &'a str);

/// Each call fails with its code, and the group (and the stranger) are
/// untouched.
async fn refuse_all(
    owner: &User,
    stranger: &User,
    group: GroupId,
    channel: ChannelId,
    refusals: Vec<Refusal<'_>>,
) {
    let before = snapshot(owner, group, channel).await;
    for (user, route, body, code) in refusals {
        let what = format!("{route} {body} by {}", user.name);
        let result = user.http.call_raw(route, body).await;
        assert_eq!(code_of(result, &what), code, "{what}");
        assert_eq!(snapshot(owner, group, channel).await, before, "{what}");
    }
    assert!(stranger.inbox("group/joined", group).await.is_empty());
    assert!(stranger.ok(&GroupList {}).await.groups.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_clearly_and_changes_nothing() {
    let env = Env::start();
    let owner = env.register("owner").await;
    let one = env.register("one").await;
    let two = env.register("two").await;
    let stranger = env.register("stranger").await;
    let created = owner
        .ok(&GroupCreate {
            name: "Small".to_owned(),
            description: None,
            member_ids: vec![one.id, two.id],
        })
        .await;
    let (group, channel) = (created.group_id, created.channel_id);

    let (o, s, g) = (&owner, &stranger, group);
    let (sid, oid, one_id, two_id) = (s.id, o.id, one.id, two.id);
    let (nog, nou) = (json!("987654"), json!("987654"));
    let future = now_ms() + 60_000;
    let past = now_ms() - 1_000;
    #[rustfmt::skip]
    let refusals: Vec<Refusal> = vec![
        // Unknown ids.
        (o, "group/group/info", json!({ "group_id": nog }), "not_found"),
        (o, "group/group/update", json!({ "group_id": nog, "name": "x" }), "not_found"),
        (o, "group/group/dissolve", json!({ "group_id": nog }), "not_found"),
        (o, "group/member/list", json!({ "group_id": nog }), "not_found"),
        (o, "group/member/add", json!({ "group_id": nog, "user_ids": [sid] }), "not_found"),
        (s, "group/member/leave", json!({ "group_id": nog }), "not_found"),
        (o, "group/settings/get", json!({ "group_id": nog }), "not_found"),
        (o, "group/qrcode/generate", json!({ "group_id": nog }), "not_found"),
        (o, "group/approval/handle", json!({ "request_id": nog, "approve": true }), "not_found"),
        (o, "group/group/create", json!({ "name": "x", "member_ids": [nou] }), "not_found"),
        (o, "group/group/create", json!({ "name": "x", "member_ids": [sid, nou] }), "not_found"),
        (o, "group/member/add", json!({ "group_id": g, "user_ids": [nou] }), "not_found"),
        (o, "group/member/add", json!({ "group_id": g, "user_ids": [sid, nou] }), "not_found"),
        (o, "group/member/remove", json!({ "group_id": g, "user_id": sid }), "not_found"),
        (o, "group/role/transfer_owner", json!({ "group_id": g, "user_id": sid }), "not_found"),
        (o, "group/member/mute", json!({ "group_id": g, "user_id": sid, "until_ms": future }), "not_found"),
        // Oneself, and existing members.
        (o, "group/group/create", json!({ "name": "x", "member_ids": [oid] }), "bad_request"),
        (o, "group/member/add", json!({ "group_id": g, "user_ids": [oid] }), "bad_request"),
        (&one, "group/member/add", json!({ "group_id": g, "user_ids": [one_id] }), "bad_request"),
        (o, "group/member/remove", json!({ "group_id": g, "user_id": oid }), "bad_request"),
        (o, "group/role/transfer_owner", json!({ "group_id": g, "user_id": oid }), "bad_request"),
        (o, "group/member/mute", json!({ "group_id": g, "user_id": oid, "until_ms": future }), "bad_request"),
        (o, "group/member/add", json!({ "group_id": g, "user_ids": [one_id] }), "conflict"),
        (o, "group/member/add", json!({ "group_id": g, "user_ids": [sid, two_id] }), "conflict"),
        (o, "group/role/set", json!({ "group_id": g, "user_id": one_id, "role": "member" }), "conflict"),
        // Malformed values.
        (o, "group/group/create", json!({ "name": "" }), "bad_request"),
        (o, "group/group/create", json!({ "name": "   " }), "bad_request"),
        (o, "group/group/create", json!({ "name": 5 }), "bad_request"),
        (o, "group/group/create", json!({ "name": "x", "colour": "red" }), "bad_request"),
        (o, "group/group/update", json!({ "group_id": g, "name": "" }), "bad_request"),
        (o, "group/group/update", json!({ "group_id": g }), "bad_request"),
        (o, "group/member/add", json!({ "group_id": g, "user_ids": [] }), "bad_request"),
        (o, "group/role/set", json!({ "group_id": g, "user_id": one_id, "role": "owner" }), "bad_request"),
        (o, "group/role/set", json!({ "group_id": g, "user_id": one_id, "role": "king" }), "bad_request"),
        (o, "group/member/mute", json!({ "group_id": g, "user_id": one_id, "until_ms": past }), "bad_request"),
        (o, "group/member/mute", json!({ "group_id": g, "user_id": one_id, "until_ms": 0 }), "bad_request"),
        (o, "group/settings/update", json!({ "group_id": g, "member_cap": 1 }), "bad_request"),
        (o, "group/settings/update", json!({ "group_id": g, "member_cap": CAP_MAX + 1 }), "bad_request"),
        (o, "group/settings/update", json!({ "group_id": g, "member_cap": 2 }), "conflict"),
        (o, "group/settings/update", json!({ "group_id": g, "invite_policy": "anyone" }), "bad_request"),
        (o, "group/qrcode/generate", json!({ "group_id": g, "ttl_secs": 0 }), "bad_request"),
        (s, "group/qrcode/join", json!({ "code": "" }), "link_invalid"),
    ];
    let refuse_all = |refusals| refuse_all(&owner, &stranger, group, channel, refusals);
    refuse_all(refusals).await;
    assert_eq!(
        owner.ok(&GroupList {}).await.groups.len(),
        1,
        "no group half-made"
    );

    // A full group: the cap at the current count.
    let settings = owner
        .ok(&SettingsUpdate {
            group_id: group,
            join_approval: None,
            invite_policy: None,
            member_cap: Some(3),
            announcement: None,
        })
        .await;
    assert_eq!(settings.member_cap, 3);
    let code = one
        .ok(&QrcodeGenerate {
            group_id: group,
            ttl_secs: None,
        })
        .await
        .code;
    let (one_, code) = (&one, json!({ "code": code }));
    #[rustfmt::skip]
    let full = vec![
        (o, "group/member/add", json!({ "group_id": g, "user_ids": [sid] }), "group_full"),
        (one_, "group/member/add", json!({ "group_id": g, "user_ids": [sid] }), "group_full"),
        (s, "group/qrcode/join", code, "group_full"),
    ];
    refuse_all(full).await;
    // With approval on, a member's invitation waits; approving it cannot
    // overfill the group.
    owner
        .ok(&SettingsUpdate {
            group_id: group,
            join_approval: Some(true),
            invite_policy: None,
            member_cap: None,
            announcement: None,
        })
        .await;
    let added = one
        .ok(&MemberAdd {
            group_id: group,
            user_ids: vec![stranger.id],
        })
        .await;
    assert_eq!(added.pending, vec![stranger.id]);
    let requests = owner.ok(&ApprovalList { group_id: group }).await.requests;
    assert_eq!(requests.len(), 1);
    refuse_all(vec![(
        &owner,
        "group/approval/handle",
        json!({ "request_id": requests[0].request_id, "approve": true }),
        "group_full",
    )])
    .await;
    assert_eq!(owner.members(group).await.len(), 3);
}
