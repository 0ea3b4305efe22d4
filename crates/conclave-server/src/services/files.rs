//! Files: upload tokens, completing an upload, download URLs, and the
//! checks `message/send` makes on the files a message references. The bytes
//! travel over `transport::files`; storing them is `crate::files`.

use std::str::FromStr as _;

use conclave_core::{ErrorCode, FileId, UserId};
use conclave_protocol::api::files::*;
use conclave_protocol::api::messaging::Content;
use conclave_storage::{FileRecord, NewUpload, StorageError};

use crate::api_error::ApiError;
use crate::files::wire_status;
use crate::permissions::{may_download, member_of};
use crate::rpc::{RouteTable, RpcContext};
use crate::state::AppState;
use crate::tokens;

pub(crate) fn register(table: &mut RouteTable) {
    table.add(request_upload_token);
    table.add(upload_callback);
    table.add(get_url);
}

fn ttl_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

async fn request_upload_token(
    ctx: RpcContext,
    req: RequestUploadToken,
) -> Result<UploadTokenGrant, ApiError> {
    let caller = ctx.caller()?;
    let config = &ctx.state.config.file;
    if !is_valid_file_name(&req.name) {
        return Err(ApiError::bad_request(format!(
            "name: 1 to {FILE_NAME_MAX_BYTES} bytes, without control characters, `/` or `\\`"
        )));
    }
    if !is_valid_mime(&req.mime) {
        return Err(ApiError::bad_request(
            "mime: a lower-case type/subtype such as image/png, without parameters",
        ));
    }
    if !config.allowed_mime_prefixes.is_empty()
        && !config
            .allowed_mime_prefixes
            .iter()
            .any(|prefix| req.mime.starts_with(prefix.as_str()))
    {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "mime: this server accepts only {}",
                config.allowed_mime_prefixes.join(", ")
            ),
        ));
    }
    if let Some(sha256) = &req.sha256 {
        if !is_valid_sha256(sha256) {
            return Err(ApiError::bad_request(
                "sha256: 64 lower-case hexadecimal digits",
            ));
        }
    }
    if req.size > config.max_file_size_bytes {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "size: at most {} bytes per file",
                config.max_file_size_bytes
            ),
        ));
    }
    if let Some(channel) = req.channel_id {
        member_of(&ctx.state, channel, caller.user_id).await?;
    }
    let (token, token_hash) = tokens::new_upload_token()?;
    let now = crate::unix_ms();
    let expires_at_ms = now.saturating_add(ttl_ms(config.upload_token_ttl_secs));
    let file = ctx
        .state
        .storage
        .files()
        .create_upload(NewUpload {
            owner: caller.user_id,
            name: &req.name,
            mime: &req.mime,
            size: req.size,
            declared_sha256: req.sha256.as_deref(),
            source_id: ctx.state.files.default_source(),
            token_hash,
            expires_at_ms,
            quota_bytes: config.user_quota_bytes,
            now_ms: now,
        })
        .await
        .map_err(|err| match err {
            StorageError::LimitReached(message) => ApiError::new(ErrorCode::QuotaExceeded, message),
            other => other.into(),
        })?;
    Ok(UploadTokenGrant {
        file_id: file.id,
        upload_url: format!("/v1/files/{}/content", file.id),
        token,
        expires_at_ms,
    })
}

async fn upload_callback(ctx: RpcContext, req: UploadCallback) -> Result<FileView, ApiError> {
    let caller = ctx.caller()?;
    let record = find(&ctx.state, req.file_id).await?;
    if record.owner_id != caller.user_id {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "only the uploader completes an upload",
        ));
    }
    let record = ctx.state.files.finalize(&ctx.state, req.file_id).await?;
    Ok(view(record))
}

async fn get_url(ctx: RpcContext, req: GetUrl) -> Result<FileUrl, ApiError> {
    let caller = ctx.caller()?;
    let record = complete(&ctx.state, req.file_id).await?;
    may_download(&ctx.state, &record, caller.user_id).await?;
    let expires_at_ms =
        crate::unix_ms().saturating_add(ttl_ms(ctx.state.config.file.download_url_ttl_secs));
    let sig = tokens::sign_download(
        ctx.state.secrets.token_signing_key(),
        record.id,
        expires_at_ms,
    );
    Ok(FileUrl {
        url: format!("/v1/files/{}?exp={expires_at_ms}&sig={sig}", record.id),
        expires_at_ms,
        width: record.width,
        height: record.height,
        thumbnail_file_id: record.thumbnail_file_id,
    })
}

async fn find(state: &AppState, file: FileId) -> Result<FileRecord, ApiError> {
    state
        .storage
        .files()
        .file(file)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no file {file}")))
}

/// A complete file, or `not_found`.
async fn complete(state: &AppState, file: FileId) -> Result<FileRecord, ApiError> {
    let record = find(state, file).await?;
    if record.status != conclave_storage::FileStatus::Complete {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("file {file} has not finished uploading"),
        ));
    }
    Ok(record)
}

pub(crate) fn view(record: FileRecord) -> FileView {
    FileView {
        file_id: record.id,
        owner_id: record.owner_id,
        name: record.name,
        mime: record.mime,
        size: record.size,
        sha256: record.sha256,
        status: wire_status(record.status),
        created_at_ms: record.created_at_ms,
        completed_at_ms: record.completed_at_ms,
        width: record.width,
        height: record.height,
        thumbnail_file_id: record.thumbnail_file_id,
        image_error: record.image_error,
    }
}

/// The files a message refers to (through a forward too), each once.
fn referenced_files(content: &Content) -> Result<Vec<FileId>, ApiError> {
    let mut raw: Vec<(&str, &str)> = Vec::new();
    let mut content = content;
    loop {
        match content {
            Content::Image {
                file_id,
                thumbnail_file_id,
                ..
            }
            | Content::Video {
                file_id,
                thumbnail_file_id,
                ..
            } => {
                raw.push(("file_id", file_id));
                if let Some(thumbnail) = thumbnail_file_id {
                    raw.push(("thumbnail_file_id", thumbnail));
                }
            }
            Content::Audio { file_id, .. } | Content::File { file_id, .. } => {
                raw.push(("file_id", file_id));
            }
            Content::Forward { original, .. } => {
                content = original;
                continue;
            }
            _ => {}
        }
        break;
    }
    let mut files = Vec::with_capacity(raw.len());
    for (field, id) in raw {
        let file = FileId::from_str(id).map_err(|_| {
            ApiError::bad_request(format!("content.{field}: `{id}` is not a file id"))
        })?;
        if !files.contains(&file) {
            files.push(file);
        }
    }
    Ok(files)
}

/// What a message shares, once checked.
pub(crate) struct SharedFiles {
    /// The content to store: as sent, with what the server read of an
    /// `image` (`width`, `height`, `thumbnail_file_id`) filled in where the
    /// sender left it out.
    pub content: Content,
    /// The files the channel's members may download once the message is
    /// sent: those it names, and their thumbnails.
    pub files: Vec<FileId>,
}

/// Checks the files a message names: each must be complete, and the sender
/// must be allowed to download it (its uploader, or a member of a channel
/// where it was shared); a file's own thumbnail may be named by whoever may
/// name the file.
pub(crate) async fn check_references(
    state: &AppState,
    content: &Content,
    sender: UserId,
) -> Result<SharedFiles, ApiError> {
    let named = referenced_files(content)?;
    let mut records = Vec::with_capacity(named.len());
    for file in &named {
        records.push(complete(state, *file).await?);
    }
    let mut permitted: Vec<&FileRecord> = Vec::with_capacity(records.len());
    let mut refused = Vec::new();
    for record in &records {
        match may_download(state, record, sender).await {
            Ok(()) => permitted.push(record),
            Err(err) if err.code == ErrorCode::Forbidden => refused.push((record.id, err)),
            Err(err) => return Err(err),
        }
    }
    for (file, err) in refused {
        if !permitted.iter().any(|p| p.thumbnail_file_id == Some(file)) {
            return Err(err);
        }
    }
    let mut files = named;
    for thumbnail in records.iter().filter_map(|r| r.thumbnail_file_id) {
        if !files.contains(&thumbnail) {
            files.push(thumbnail);
        }
    }
    let mut content = content.clone();
    if let Content::Image {
        file_id,
        width,
        height,
        thumbnail_file_id,
        ..
    } = &mut content
    {
        let id = FileId::from_str(file_id).ok();
        if let Some(image) = records.iter().find(|r| Some(r.id) == id) {
            if width.is_none() {
                *width = image.width;
            }
            if height.is_none() {
                *height = image.height;
            }
            if thumbnail_file_id.is_none() {
                *thumbnail_file_id = image.thumbnail_file_id.map(|id| id.to_string());
            }
        }
    }
    Ok(SharedFiles { content, files })
}

/// Records that the files were shared in `channel`: its members may now
/// download them.
pub(crate) async fn record_references(
    state: &AppState,
    files: &[FileId],
    channel: conclave_core::ChannelId,
) -> Result<(), ApiError> {
    let now = crate::unix_ms();
    for file in files {
        state
            .storage
            .files()
            .add_reference(*file, channel, now)
            .await?;
    }
    Ok(())
}
