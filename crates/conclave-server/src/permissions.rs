//! Who may do what to a channel or a document. Every handler asks here, so
//! the rules live in one place.

use conclave_core::{ChannelId, ErrorCode, UserId};
use conclave_storage::{ChannelRecord, DocumentRecord, MemberRecord, MessageRecord};

use crate::api_error::ApiError;
use crate::state::AppState;

/// Roles that may moderate a group (revoke anyone's message at any time).
const MODERATOR_ROLES: &[&str] = &["owner", "admin"];

/// The channel and the caller's membership in it; `not_member` otherwise
/// (also when the channel does not exist, which outsiders cannot tell apart).
pub(crate) async fn member_of(
    state: &AppState,
    channel: ChannelId,
    user: UserId,
) -> Result<(ChannelRecord, MemberRecord), ApiError> {
    let messages = state.storage.messages();
    let member = messages.member(channel, user).await?;
    let channel_record = match member {
        Some(_) => messages.channel(channel).await?,
        None => None,
    };
    match (channel_record, member) {
        (Some(channel), Some(member)) => Ok((channel, member)),
        _ => Err(not_member(channel)),
    }
}

pub(crate) fn not_member(channel: ChannelId) -> ApiError {
    ApiError::new(
        ErrorCode::NotMember,
        format!("you are not a member of channel {channel}"),
    )
}

/// A document opens for its owner and for members of its channel, if it
/// has one.
pub(crate) async fn may_open_document(
    state: &AppState,
    document: &DocumentRecord,
    user: UserId,
) -> Result<(), ApiError> {
    if document.owner_id == user {
        return Ok(());
    }
    if let Some(channel) = document.channel_id {
        if state
            .storage
            .messages()
            .member(channel, user)
            .await?
            .is_some()
        {
            return Ok(());
        }
    }
    Err(ApiError::new(
        ErrorCode::Forbidden,
        format!(
            "only the owner and members of its channel may open document `{}`",
            document.name
        ),
    ))
}

/// A member may send unless muted until a time still ahead.
pub(crate) fn may_send(member: &MemberRecord, now_ms: i64) -> Result<(), ApiError> {
    match member.send_muted_until_ms {
        Some(until) if until > now_ms => Err(ApiError::new(
            ErrorCode::Muted,
            format!("you are muted in this channel until {until}"),
        )),
        _ => Ok(()),
    }
}

/// A member sees a message if it is in the channel and not older than the
/// member's joining.
pub(crate) fn may_see(member: &MemberRecord, message: &MessageRecord) -> bool {
    message.channel_id == member.channel_id && message.pts > member.joined_pts
}

/// The sender may revoke within the window; group moderators at any time.
pub(crate) fn may_revoke(
    member: &MemberRecord,
    message: &MessageRecord,
    now_ms: i64,
    window_secs: u64,
) -> Result<(), ApiError> {
    if MODERATOR_ROLES.contains(&member.role.as_str()) {
        return Ok(());
    }
    if message.sender_id != member.user_id {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "only the sender or a group admin may revoke a message",
        ));
    }
    let window_ms = i64::try_from(window_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    if now_ms.saturating_sub(message.created_at_ms) > window_ms {
        return Err(ApiError::new(
            ErrorCode::RevokeWindowExpired,
            format!("a message can be revoked for {window_secs} seconds after it is sent"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use conclave_core::{DeviceId, MessageId};

    fn member(role: &str, muted_until: Option<i64>) -> MemberRecord {
        MemberRecord {
            channel_id: ChannelId::new(1),
            user_id: UserId::new(10),
            role: role.to_owned(),
            joined_pts: 5,
            read_pts: 0,
            pinned: false,
            hidden_until_pts: None,
            notifications_muted: false,
            send_muted_until_ms: muted_until,
        }
    }

    fn message(sender: u64, pts: u64, created_at_ms: i64) -> MessageRecord {
        MessageRecord {
            id: MessageId::new(1),
            channel_id: ChannelId::new(1),
            pts,
            sender_id: UserId::new(sender),
            sender_device_id: DeviceId::new(1),
            client_msg_id: "c".to_owned(),
            content: Some("{}".to_owned()),
            reply_to: None,
            mentions: "{}".to_owned(),
            created_at_ms,
            revoked_at_ms: None,
            revoked_by: None,
            pinned: false,
        }
    }

    #[test]
    fn the_revoke_rules() {
        let window = 120;
        let own = message(10, 9, 1_000);
        let cases = [
            ("member", &own, 1_000 + 120_000, Ok(())),
            (
                "member",
                &own,
                1_000 + 120_001,
                Err(ErrorCode::RevokeWindowExpired),
            ),
            (
                "member",
                &message(11, 9, 1_000),
                1_000,
                Err(ErrorCode::Forbidden),
            ),
            ("admin", &message(11, 9, 1_000), 10_000_000, Ok(())),
            ("owner", &own, 10_000_000, Ok(())),
        ];
        for (role, msg, now, expected) in cases {
            let got = may_revoke(&member(role, None), msg, now, window).map_err(|e| e.code);
            assert_eq!(got, expected, "{role} at {now}");
        }
    }

    #[test]
    fn muting_and_visibility() {
        assert!(may_send(&member("member", None), 0).is_ok());
        assert_eq!(
            may_send(&member("member", Some(100)), 99).unwrap_err().code,
            ErrorCode::Muted
        );
        assert!(may_send(&member("member", Some(100)), 100).is_ok());
        assert!(
            !may_see(&member("member", None), &message(1, 5, 0)),
            "before joining"
        );
        assert!(may_see(&member("member", None), &message(1, 6, 0)));
    }
}
