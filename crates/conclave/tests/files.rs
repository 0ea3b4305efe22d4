//! Acceptance tests of files against the real `conclave` binary: resumable
//! chunked uploads (with a connection cut mid-chunk), completion, sharing in
//! a channel, signed downloads with ranges, who may download, expiry and
//! reuse of upload tokens, checksums, size and quota limits, deduplication
//! of identical bytes, the collection of abandoned uploads, images (their
//! size and thumbnail, filled into image messages; crafted images refused
//! without the server's memory growing), and a gibibyte uploaded while the
//! server's memory stays flat.
//!
//! Every test starts its own server in its own temporary directory.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use conclave_client::api::Route;
use conclave_client::api::files::{
    FileStatus, FileUrl, FileView, GetUrl, RequestUploadToken, UploadCallback, UploadProgress,
    UploadTokenGrant,
};
use conclave_client::api::groups::{GroupCreate, GroupCreated};
use conclave_client::api::messaging::{
    Content, DirectGetOrCreate, HistoryGet, HistoryPage, MessageForward, MessageSend, MessageView,
};
use conclave_client::{ClientError, Connection, Encoding, HttpClient};
use conclave_core::{ChannelId, FileId, UserId};
use sha2::{Digest, Sha256};
use support::Server;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const PASSWORD: &str = "correct horse battery staple";

struct Env {
    server: Server,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Env {
    fn start(extra: &str) -> Env {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = support::write_config(dir.path(), extra);
        let server = support::start_server(dir.path(), &config);
        Env {
            server,
            dir,
            // A refused upload is answered before its body is read, and the
            // server then closes that connection; a fresh connection per
            // request keeps the next request off a socket being closed.
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
        }
    }

    fn base(&self) -> String {
        format!("http://{}", self.server.http)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    /// What the server logged as errors, for failure messages.
    /// Errors and warnings the server logged, except sqlx's notice that a
    /// statement took over a second: that reports a busy machine (a
    /// PostgreSQL commit waiting for its disk), not a fault of the server.
    fn errors(&self) -> Vec<serde_json::Value> {
        self.server
            .logs()
            .into_iter()
            .filter(|line| line["level"] == "ERROR" || line["level"] == "WARN")
            .filter(|line| {
                !(line["target"] == "sqlx::query"
                    && line["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("slow statement")))
            })
            .collect()
    }

    /// The local storage source's directory.
    fn files_dir(&self) -> PathBuf {
        self.dir.path().join("d").join("files")
    }

    async fn register(&self, name: &str) -> User {
        let grant = HttpClient::new(&self.base())
            .register(name, PASSWORD, Some("phone"))
            .await
            .unwrap_or_else(|err| panic!("register {name}: {err}"));
        User {
            name: name.to_owned(),
            id: grant.user_id,
            http: HttpClient::new(&self.base()).with_token(&grant.token),
            token: grant.token,
        }
    }

    /// Asks for an upload token, which must be granted.
    async fn token(&self, user: &User, name: &str, data: &[u8], sha: bool) -> UploadTokenGrant {
        user.ok(&RequestUploadToken {
            name: name.to_owned(),
            size: data.len() as u64,
            mime: "application/octet-stream".to_owned(),
            sha256: sha.then(|| sha256(data)),
            channel_id: None,
        })
        .await
    }

    /// `PUT`s `body` as the chunk `range` (`None`: no Content-Range).
    async fn put(
        &self,
        grant: &UploadTokenGrant,
        range: Option<String>,
        body: Vec<u8>,
    ) -> reqwest::Response {
        let mut request = self
            .http
            .put(self.url(&grant.upload_url))
            .bearer_auth(&grant.token)
            .body(body);
        if let Some(range) = range {
            request = request.header("content-range", range);
        }
        request.send().await.expect("the PUT gets an answer")
    }

    /// Uploads `data` whole and returns the completed upload.
    async fn upload(&self, user: &User, name: &str, data: &[u8]) -> UploadProgress {
        let grant = self.token(user, name, data, true).await;
        let response = self.put(&grant, None, data.to_vec()).await;
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
        let progress: UploadProgress = response.json().await.unwrap();
        assert_eq!(progress.status, FileStatus::Complete);
        progress
    }

    /// Where the upload stands (`GET .../status`), as status and JSON.
    async fn status(&self, file: FileId, token: &str) -> (u16, serde_json::Value) {
        let response = self
            .http
            .get(self.url(&format!("/v1/files/{file}/status?token={token}")))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    async fn download(&self, url: &str, range: Option<&str>) -> reqwest::Response {
        let mut request = self.http.get(self.url(url));
        if let Some(range) = range {
            request = request.header("range", range);
        }
        request.send().await.unwrap()
    }
}

struct User {
    name: String,
    id: UserId,
    http: HttpClient,
    token: String,
}

impl User {
    async fn ok<R: Route>(&self, request: &R) -> R::Response {
        self.http
            .call(request)
            .await
            .unwrap_or_else(|err| panic!("{}: {} failed: {err}", self.name, R::NAME))
    }

    /// A call that must be refused with `code`.
    async fn refused<R: Route + std::fmt::Debug>(&self, request: &R, code: &str) -> String {
        match self.http.call(request).await {
            Err(ClientError::Api {
                code: got, message, ..
            }) => {
                assert_eq!(got, code, "{}: {request:?}: {message}", self.name);
                message
            }
            Err(other) => panic!("{}: {request:?}: {other}", self.name),
            Ok(_) => panic!("{}: {request:?} should be refused with {code}", self.name),
        }
    }

    async fn send_file(
        &self,
        channel: ChannelId,
        file: FileId,
        id: &str,
    ) -> Result<(), ClientError> {
        self.http
            .call(&MessageSend {
                channel_id: channel,
                client_msg_id: id.to_owned(),
                content: Content::Image {
                    file_id: file.to_string(),
                    width: Some(640),
                    height: Some(480),
                    thumbnail_file_id: None,
                    caption: Some("look".to_owned()),
                },
                reply_to: None,
                mentions: None,
            })
            .await
            .map(|_| ())
    }
}

fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Bytes that are not all alike, so a misplaced chunk shows.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 24) as u8
        })
        .collect()
}

async fn error_code(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    (status, body)
}

/// Every file below `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_uploads_in_chunks_survives_a_cut_and_members_download_ranges() {
    let env = Env::start("");
    let (alice, bob, carol) = (
        env.register("alice").await,
        env.register("bob").await,
        env.register("carol").await,
    );
    let group: GroupCreated = alice
        .ok(&GroupCreate {
            name: "photos".to_owned(),
            description: None,
            member_ids: vec![bob.id],
        })
        .await;
    let data = pattern(300_000, 1);
    let size = data.len();
    let grant = alice
        .ok(&RequestUploadToken {
            name: "beach.png".to_owned(),
            size: size as u64,
            mime: "image/png".to_owned(),
            sha256: Some(sha256(&data)),
            channel_id: Some(group.channel_id),
        })
        .await;
    assert_eq!(
        grant.upload_url,
        format!("/v1/files/{}/content", grant.file_id)
    );
    let file = grant.file_id;

    // A fresh upload is at 0.
    let head = env
        .http
        .head(env.url(&grant.upload_url))
        .bearer_auth(&grant.token)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["upload-offset"], "0");
    assert_eq!(head.headers()["upload-length"], size.to_string());

    // First chunk.
    let first = env
        .put(
            &grant,
            Some(format!("bytes 0-99999/{size}")),
            data[..100_000].to_vec(),
        )
        .await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["upload-offset"], "100000");
    let progress: UploadProgress = first.json().await.unwrap();
    assert_eq!(
        (progress.offset, progress.status),
        (100_000, FileStatus::Pending)
    );

    // The second chunk is cut off after 50,000 of its 200,000 bytes: the
    // connection closes mid-body. What arrived is kept.
    let mut socket = tokio::net::TcpStream::connect(env.server.http)
        .await
        .unwrap();
    let head = format!(
        "PUT {} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Content-Range: bytes 100000-{}/{size}\r\nContent-Length: {}\r\n\r\n",
        grant.upload_url,
        env.server.http,
        grant.token,
        size - 1,
        size - 100_000
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(&data[100_000..150_000]).await.unwrap();
    socket.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(socket);

    // The client asks where to resume.
    let deadline = Instant::now() + Duration::from_secs(10);
    let offset = loop {
        let (status, body) = env.status(file, &grant.token).await;
        assert_eq!(status, 200, "{body}");
        let offset = body["offset"].as_u64().unwrap();
        if offset != 100_000 || Instant::now() > deadline {
            break offset;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(offset, 150_000, "the bytes before the cut are kept");

    // Resending from the old offset is refused with the current one.
    let stale = env
        .put(
            &grant,
            Some(format!("bytes 100000-{}/{size}", size - 1)),
            data[100_000..].to_vec(),
        )
        .await;
    assert_eq!(stale.status(), 409);
    assert_eq!(stale.headers()["upload-offset"], "150000");
    let (_, body) = error_code(stale).await;
    assert_eq!(body["error"]["code"], "offset_mismatch");
    assert_eq!(body["offset"], 150_000);

    // Resuming at the offset completes the upload (token in the query this
    // time).
    let rest = env
        .http
        .put(env.url(&format!("{}?token={}", grant.upload_url, grant.token)))
        .header("content-range", format!("bytes 150000-{}/{size}", size - 1))
        .body(data[150_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(rest.status(), 200);
    let done: UploadProgress = rest.json().await.unwrap();
    assert_eq!(done.status, FileStatus::Complete);
    assert_eq!(done.offset, size as u64);
    assert_eq!(done.sha256.as_deref(), Some(sha256(&data).as_str()));

    // The token is spent.
    let again = env
        .put(
            &grant,
            Some(format!("bytes 0-9/{size}")),
            data[..10].to_vec(),
        )
        .await;
    let (status, body) = error_code(again).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthenticated", "{body}");
    assert_eq!(env.status(file, &grant.token).await.0, 401);

    // The callback is idempotent and reports the file.
    for _ in 0..2 {
        let view: FileView = alice.ok(&UploadCallback { file_id: file }).await;
        assert_eq!(view.status, FileStatus::Complete);
        assert_eq!(view.size, size as u64);
        assert_eq!(view.mime, "image/png");
        assert_eq!(view.owner_id, alice.id);
        assert_eq!(view.sha256.as_deref(), Some(sha256(&data).as_str()));
    }
    bob.refused(&UploadCallback { file_id: file }, "forbidden")
        .await;

    // Before it is shared, only the uploader may have a link.
    bob.refused(&GetUrl { file_id: file }, "forbidden").await;
    alice.ok(&GetUrl { file_id: file }).await;

    alice
        .send_file(group.channel_id, file, "img-1")
        .await
        .unwrap();

    // Bob, a member of the group, downloads a range and the whole file.
    let link: FileUrl = bob.ok(&GetUrl { file_id: file }).await;
    assert!(
        link.url.starts_with(&format!("/v1/files/{file}?")),
        "{}",
        link.url
    );
    let part = env.download(&link.url, Some("bytes=1000-1999")).await;
    assert_eq!(part.status(), 206);
    let headers = part.headers().clone();
    assert_eq!(headers["content-range"], format!("bytes 1000-1999/{size}"));
    assert_eq!(headers["content-length"], "1000");
    assert_eq!(headers["content-type"], "image/png");
    assert_eq!(headers["accept-ranges"], "bytes");
    assert_eq!(headers["etag"], format!("\"{}\"", sha256(&data)));
    assert_eq!(part.bytes().await.unwrap().as_ref(), &data[1000..2000]);

    let tail = env.download(&link.url, Some("bytes=-10")).await;
    assert_eq!(tail.status(), 206);
    assert_eq!(tail.bytes().await.unwrap().as_ref(), &data[size - 10..]);

    let whole = env.download(&link.url, None).await;
    assert_eq!(whole.status(), 200);
    assert_eq!(whole.headers()["content-length"], size.to_string());
    assert_eq!(whole.bytes().await.unwrap().as_ref(), &data[..]);

    let cached = env
        .http
        .get(env.url(&link.url))
        .header("if-none-match", format!("\"{}\"", sha256(&data)))
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), 304);

    let beyond = env
        .download(&link.url, Some(&format!("bytes={size}-")))
        .await;
    assert_eq!(beyond.status(), 416);
    assert_eq!(beyond.headers()["content-range"], format!("bytes */{size}"));
    assert_eq!(
        error_code(beyond).await.1["error"]["code"],
        "range_not_satisfiable"
    );

    // A link is only good as signed.
    let forged = link.url.replace("sig=", "sig=A");
    assert_eq!(env.download(&forged, None).await.status(), 403);
    let other_file = link.url.replace(
        &format!("/v1/files/{file}?"),
        &format!("/v1/files/{}?", file.get() + 1),
    );
    assert_eq!(env.download(&other_file, None).await.status(), 403);
    let unsigned = format!("/v1/files/{file}");
    let (status, body) = error_code(env.download(&unsigned, None).await).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let later = link.url.replace(
        &format!("exp={}", link.expires_at_ms),
        &format!("exp={}", link.expires_at_ms + 1),
    );
    assert_eq!(env.download(&later, None).await.status(), 403);

    // Carol is in no channel where the file was shared.
    carol.refused(&GetUrl { file_id: file }, "forbidden").await;
    let alone: GroupCreated = carol
        .ok(&GroupCreate {
            name: "mine".to_owned(),
            description: None,
            member_ids: vec![],
        })
        .await;
    let refused = carol.send_file(alone.channel_id, file, "steal").await;
    assert_eq!(refused.unwrap_err().code(), Some("forbidden"));

    // Bob may share what he may download; then Carol may download it too.
    let direct = bob
        .ok(&DirectGetOrCreate { user_id: carol.id })
        .await
        .channel_id;
    bob.send_file(direct, file, "reshare").await.unwrap();
    let carols: FileUrl = carol.ok(&GetUrl { file_id: file }).await;
    let got = env.download(&carols.url, Some("bytes=0-4")).await;
    assert_eq!(got.status(), 206);
    assert_eq!(got.bytes().await.unwrap().as_ref(), &data[..5]);

    // A message may only reference complete files, by their ids.
    let pending = env.token(&alice, "later.bin", b"abc", false).await;
    let refused = alice
        .send_file(group.channel_id, pending.file_id, "p")
        .await;
    assert_eq!(refused.unwrap_err().code(), Some("not_found"));
    let garbage = alice
        .http
        .call(&MessageSend {
            channel_id: group.channel_id,
            client_msg_id: "g".to_owned(),
            content: Content::File {
                file_id: "not-a-number".to_owned(),
                name: "x".to_owned(),
                size: 1,
                mime: None,
            },
            reply_to: None,
            mentions: None,
        })
        .await;
    assert_eq!(garbage.unwrap_err().code(), Some("bad_request"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_checksums_and_identical_bytes() {
    let env = Env::start(
        "[server]\n\
         request_timeout_ms = 1000\n\
         [file]\n\
         max_file_size_bytes = 4096\n\
         user_quota_bytes = 10000\n\
         allowed_mime_prefixes = [\"image/\", \"application/\"]\n",
    );
    let (alice, bob, carol) = (
        env.register("alice").await,
        env.register("bob").await,
        env.register("carol").await,
    );
    let ask = |name: &str, size: u64, mime: &str| RequestUploadToken {
        name: name.to_owned(),
        size,
        mime: mime.to_owned(),
        sha256: None,
        channel_id: None,
    };

    // Bad requests.
    alice
        .refused(
            &ask("big.bin", 4097, "application/zip"),
            "payload_too_large",
        )
        .await;
    alice
        .refused(&ask("page.html", 10, "text/html"), "forbidden")
        .await;
    alice
        .refused(&ask("a/b.png", 10, "image/png"), "bad_request")
        .await;
    alice
        .refused(&ask("a.png", 10, "IMAGE/PNG"), "bad_request")
        .await;
    alice
        .refused(
            &RequestUploadToken {
                sha256: Some("XYZ".to_owned()),
                ..ask("a.png", 10, "image/png")
            },
            "bad_request",
        )
        .await;
    let elsewhere: GroupCreated = bob
        .ok(&GroupCreate {
            name: "bobs".to_owned(),
            description: None,
            member_ids: vec![],
        })
        .await;
    alice
        .refused(
            &RequestUploadToken {
                channel_id: Some(elsewhere.channel_id),
                ..ask("a.png", 10, "image/png")
            },
            "not_member",
        )
        .await;

    // A chunk may not carry more than its range, nor a body more than the
    // declared size.
    let data = pattern(2000, 2);
    let grant = env.token(&alice, "x.bin", &data, true).await;
    let (status, body) = error_code(
        env.put(
            &grant,
            Some("bytes 0-9/2000".to_owned()),
            data[..20].to_vec(),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("payload_too_large"))
    );
    assert_eq!(body["offset"], 0);
    let mut longer = data.clone();
    longer.push(0);
    let (status, _) = error_code(env.put(&grant, None, longer).await).await;
    assert_eq!(status, 413);
    let (status, body) = error_code(
        env.put(
            &grant,
            Some("bytes 0-9/3000".to_owned()),
            data[..10].to_vec(),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    let callback = alice
        .http
        .call(&UploadCallback {
            file_id: grant.file_id,
        })
        .await;
    assert_eq!(callback.unwrap_err().code(), Some("upload_incomplete"));

    // A wrong checksum: refused, and nothing is stored.
    let other = pattern(2000, 3);
    let wrong = alice
        .ok(&RequestUploadToken {
            sha256: Some(sha256(&other)),
            ..ask("x.bin", data.len() as u64, "application/octet-stream")
        })
        .await;
    let half = env
        .put(
            &wrong,
            Some("bytes 0-999/2000".to_owned()),
            data[..1000].to_vec(),
        )
        .await;
    assert_eq!(half.status(), 200);
    let (status, body) = error_code(
        env.put(
            &wrong,
            Some("bytes 1000-1999/2000".to_owned()),
            data[1000..].to_vec(),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("checksum_mismatch"))
    );
    alice
        .refused(
            &UploadCallback {
                file_id: wrong.file_id,
            },
            "not_found",
        )
        .await;
    alice
        .refused(
            &GetUrl {
                file_id: wrong.file_id,
            },
            "not_found",
        )
        .await;
    assert_eq!(env.status(wrong.file_id, &wrong.token).await.0, 401);
    assert!(
        !env.files_dir().join("blobs").join(sha256(&data)).exists(),
        "nothing stored under the real checksum"
    );
    assert!(
        files_under(
            &env.files_dir()
                .join("staging")
                .join(wrong.file_id.to_string())
        )
        .is_empty(),
        "the refused upload's parts are gone"
    );

    // The same name uploads fine afterwards.
    let fine = env.upload(&alice, "x.bin", &data).await;
    assert_eq!(fine.sha256.as_deref(), Some(sha256(&data).as_str()));
    let link: FileUrl = alice
        .ok(&GetUrl {
            file_id: fine.file_id,
        })
        .await;
    let got = env.download(&link.url, None).await;
    assert_eq!(got.bytes().await.unwrap().as_ref(), &data[..]);

    // Bob uploads the same bytes under another name: one blob for both.
    let same = env.upload(&bob, "copy.bin", &data).await;
    assert_ne!(same.file_id, fine.file_id);
    let blobs = files_under(&env.files_dir().join("blobs"));
    assert_eq!(
        blobs,
        vec![env.files_dir().join("blobs").join(sha256(&data))],
        "identical bytes are stored once"
    );
    let bobs: FileUrl = bob
        .ok(&GetUrl {
            file_id: same.file_id,
        })
        .await;
    let got = env.download(&bobs.url, Some("bytes=100-199")).await;
    assert_eq!(got.bytes().await.unwrap().as_ref(), &data[100..200]);
    // Sharing bytes is not sharing a file: Bob may not read Alice's.
    bob.refused(
        &GetUrl {
            file_id: fine.file_id,
        },
        "forbidden",
    )
    .await;
    assert!(
        files_under(&env.files_dir().join("staging")).is_empty(),
        "no parts are left behind"
    );

    // A chunk may take longer than server.request_timeout_ms, as long as
    // its bytes keep coming.
    let slow_data = pattern(3000, 5);
    let slow = env.token(&alice, "slow.bin", &slow_data, true).await;
    let mut socket = tokio::net::TcpStream::connect(env.server.http)
        .await
        .unwrap();
    let head = format!(
        "PUT {} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Content-Length: 3000\r\nConnection: close\r\n\r\n",
        slow.upload_url, env.server.http, slow.token
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(&slow_data[..1500]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    socket.write_all(&slow_data[1500..]).await.unwrap();
    let mut answer = String::new();
    socket.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"status\":\"complete\""), "{answer}");

    // A zero-byte file completes with its empty body.
    let empty = env.upload(&alice, "empty.txt", b"").await;
    assert_eq!(empty.sha256.as_deref(), Some(sha256(b"").as_str()));

    // Quota: 10,000 bytes, counting uploads in progress.
    for name in ["one", "two"] {
        carol.ok(&ask(name, 4000, "application/zip")).await;
    }
    let message = carol
        .refused(&ask("three", 4000, "application/zip"), "quota_exceeded")
        .await;
    assert!(message.contains("quota"), "{message}");
    carol.ok(&ask("small", 2000, "application/zip")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_uploads_are_refused_and_collected() {
    let env = Env::start(
        "[server]\n\
         request_timeout_ms = 1000\n\
         [file]\n\
         upload_token_ttl_secs = 1\n",
    );
    let alice = env.register("alice").await;
    let data = pattern(1000, 4);
    let grant = env.token(&alice, "slow.bin", &data, true).await;
    let first = env
        .put(
            &grant,
            Some("bytes 0-499/1000".to_owned()),
            data[..500].to_vec(),
        )
        .await;
    assert_eq!(first.status(), 200);
    let staging = env
        .files_dir()
        .join("staging")
        .join(grant.file_id.to_string());
    assert_eq!(files_under(&staging).len(), 1, "one staged part");

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, body) = error_code(
        env.put(
            &grant,
            Some("bytes 500-999/1000".to_owned()),
            data[500..].to_vec(),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("token_expired"))
    );

    // The abandoned upload and its parts go away.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = env.status(grant.file_id, &grant.token).await;
        if status == 401 && body["error"]["code"] == "unauthenticated" && !staging.exists() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the upload was not collected: {status} {body}, staging exists: {}",
            staging.exists()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    alice
        .refused(
            &UploadCallback {
                file_id: grant.file_id,
            },
            "not_found",
        )
        .await;
}

/// An `s3s-fs` S3 server on a free loopback port, serving `root` (each
/// directory in it is a bucket), killed on drop.
struct S3Server {
    child: std::process::Child,
    endpoint: String,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl S3Server {
    /// `None` (with a notice) when `s3s-fs` is not installed.
    async fn start(root: &Path) -> Option<S3Server> {
        let probe = std::process::Command::new("s3s-fs")
            .arg("--version")
            .output();
        if !probe.is_ok_and(|out| out.status.success()) {
            eprintln!("skipping: s3s-fs is not installed (cargo install s3s-fs --features binary)");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("s3s-fs")
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", "AKCONCLAVE", "--secret-key", "SKCONCLAVE"])
            .arg(root)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        let server = S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "s3s-fs did not start listening");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(server)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_live_in_an_s3_bucket_when_configured() {
    let s3_root = tempfile::tempdir().unwrap();
    std::fs::create_dir(s3_root.path().join("conclave")).unwrap();
    let Some(s3) = S3Server::start(s3_root.path()).await else {
        return;
    };
    let env = Env::start(&format!(
        "[file]\n\
         default_source = \"s3\"\n\
         [[file.storage_sources]]\n\
         id = \"local\"\n\
         kind = \"local\"\n\
         [[file.storage_sources]]\n\
         id = \"s3\"\n\
         kind = \"s3\"\n\
         bucket = \"conclave\"\n\
         endpoint = \"{}\"\n\
         region = \"us-east-1\"\n\
         access_key_id = \"AKCONCLAVE\"\n\
         secret_access_key = \"SKCONCLAVE\"\n",
        s3.endpoint
    ));
    let (alice, bob) = (env.register("alice").await, env.register("bob").await);
    let bucket = s3_root.path().join("conclave");

    // Two chunks, then a download of a range.
    let data = pattern(200_000, 6);
    let grant = env.token(&alice, "a.bin", &data, true).await;
    let first = env
        .put(
            &grant,
            Some("bytes 0-119999/200000".to_owned()),
            data[..120_000].to_vec(),
        )
        .await;
    assert_eq!(
        first.status(),
        200,
        "{}\n{:#?}",
        first.text().await.unwrap(),
        env.errors()
    );
    let last = env
        .put(
            &grant,
            Some("bytes 120000-199999/200000".to_owned()),
            data[120_000..].to_vec(),
        )
        .await;
    assert_eq!(
        last.status(),
        200,
        "{}\n{:#?}",
        last.text().await.unwrap(),
        env.errors()
    );
    let done: UploadProgress = last.json().await.unwrap();
    assert_eq!(done.status, FileStatus::Complete);
    let link: FileUrl = alice
        .ok(&GetUrl {
            file_id: grant.file_id,
        })
        .await;
    let part = env.download(&link.url, Some("bytes=119990-120009")).await;
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.bytes().await.unwrap().as_ref(),
        &data[119_990..120_010]
    );

    // The same bytes in one chunk from someone else: still one object.
    let again = env.upload(&bob, "b.bin", &data).await;
    let bobs: FileUrl = bob
        .ok(&GetUrl {
            file_id: again.file_id,
        })
        .await;
    let whole = env.download(&bobs.url, None).await;
    assert_eq!(whole.bytes().await.unwrap().as_ref(), &data[..]);
    assert!(bucket.join("blobs").join(sha256(&data)).is_file());
    assert_eq!(
        files_under(&bucket.join("blobs")).len(),
        1,
        "one object for both"
    );
    assert!(
        files_under(&env.files_dir()).is_empty(),
        "nothing went to the local source"
    );

    // A wrong checksum leaves nothing in the bucket.
    let other = pattern(1000, 7);
    let wrong = alice
        .ok(&RequestUploadToken {
            name: "w.bin".to_owned(),
            size: 1000,
            mime: "application/octet-stream".to_owned(),
            sha256: Some(sha256(&data)),
            channel_id: None,
        })
        .await;
    let (status, _) = error_code(env.put(&wrong, None, other.clone()).await).await;
    assert_eq!(status, 422);
    assert!(!bucket.join("blobs").join(sha256(&other)).exists());
    assert!(
        files_under(&bucket.join("staging")).is_empty(),
        "no staged parts are left in the bucket"
    );
}

// Images: their size and a thumbnail, read as they complete, within limits.

/// A picture with some structure: red grows to the right, green downwards.
fn picture(width: u32, height: u32) -> image::DynamicImage {
    image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([
            (x * 255 / width) as u8,
            (y * 255 / height) as u8,
            ((x ^ y) & 0x3f) as u8,
        ])
    }))
}

fn encoded(picture: &image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    picture.write_to(&mut out, format).unwrap();
    out.into_inner()
}

impl Env {
    /// Uploads `data` whole, declared as `mime`; the upload must complete.
    async fn upload_typed(
        &self,
        user: &User,
        name: &str,
        mime: &str,
        data: &[u8],
    ) -> UploadProgress {
        let grant = user
            .ok(&RequestUploadToken {
                name: name.to_owned(),
                size: data.len() as u64,
                mime: mime.to_owned(),
                sha256: Some(sha256(data)),
                channel_id: None,
            })
            .await;
        let response = self.put(&grant, None, data.to_vec()).await;
        assert_eq!(
            response.status(),
            200,
            "{}\n{:#?}",
            response.text().await.unwrap(),
            self.errors()
        );
        let progress: UploadProgress = response.json().await.unwrap();
        assert_eq!(progress.status, FileStatus::Complete);
        progress
    }

    /// Downloads a whole file `user` may have a link to: the link, the
    /// type and the bytes.
    async fn fetch(&self, user: &User, file: FileId) -> (FileUrl, String, Vec<u8>) {
        let link: FileUrl = user.ok(&GetUrl { file_id: file }).await;
        let response = self.download(&link.url, None).await;
        assert_eq!(response.status(), 200);
        let mime = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        (link, mime, response.bytes().await.unwrap().to_vec())
    }
}

/// The next `message/new` the session receives.
async fn next_message(conn: &mut Connection) -> MessageView {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match conn.next_event_timeout(left).await {
            Ok(Some(event)) if event.name == "message/new" => return event.body_as().unwrap(),
            Ok(Some(_)) => {}
            other => panic!("no message/new: {other:?}"),
        }
    }
}

/// The newest message of a channel, as stored.
async fn last_message(user: &User, channel: ChannelId) -> Content {
    let page: HistoryPage = user
        .ok(&HistoryGet {
            channel_id: channel,
            before_pts: None,
            limit: Some(1),
        })
        .await;
    page.messages
        .last()
        .and_then(|m| m.content.clone())
        .expect("a message")
}

fn image_content(file: FileId, thumbnail: Option<FileId>, size: Option<(u32, u32)>) -> Content {
    Content::Image {
        file_id: file.to_string(),
        width: size.map(|s| s.0),
        height: size.map(|s| s.1),
        thumbnail_file_id: thumbnail.map(|t| t.to_string()),
        caption: Some("beach".to_owned()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_get_their_size_and_a_thumbnail_that_travels_with_them() {
    let env = Env::start("");
    let (alice, bob, carol) = (
        env.register("alice").await,
        env.register("bob").await,
        env.register("carol").await,
    );
    let group: GroupCreated = alice
        .ok(&GroupCreate {
            name: "holiday".to_owned(),
            description: None,
            member_ids: vec![bob.id],
        })
        .await;

    // A 1000 x 600 PNG: the completing chunk's answer has its size and a
    // thumbnail.
    let png = encoded(&picture(1000, 600), image::ImageFormat::Png);
    let done = env
        .upload_typed(&alice, "beach.png", "image/png", &png)
        .await;
    assert_eq!(
        (done.width, done.height, done.image_error.as_deref()),
        (Some(1000), Some(600), None),
        "{:#?}",
        env.errors()
    );
    let thumb = done.thumbnail_file_id.expect("a thumbnail");
    assert_ne!(thumb, done.file_id);
    let view: FileView = alice
        .ok(&UploadCallback {
            file_id: done.file_id,
        })
        .await;
    assert_eq!(
        (view.width, view.height, view.thumbnail_file_id),
        (Some(1000), Some(600), Some(thumb))
    );

    // The thumbnail is a file of Alice's: a JPEG within 320 x 320, of the
    // same shape and colours.
    let (link, mime, bytes) = env.fetch(&alice, done.file_id).await;
    assert_eq!(
        (link.width, link.height, link.thumbnail_file_id),
        (Some(1000), Some(600), Some(thumb))
    );
    assert_eq!(bytes, png);
    assert_eq!(mime, "image/png");
    let (link, mime, bytes) = env.fetch(&alice, thumb).await;
    assert_eq!(mime, "image/jpeg");
    assert_eq!(
        (link.width, link.height, link.thumbnail_file_id),
        (Some(320), Some(192), None)
    );
    let small = image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg).unwrap();
    assert_eq!((small.width(), small.height()), (320, 192));
    let aspect = f64::from(small.width()) / f64::from(small.height());
    assert!((aspect - 1000.0 / 600.0).abs() < 0.01, "{aspect}");
    let rgb = small.to_rgb8();
    assert!(rgb.get_pixel(318, 1)[0] > 200, "red on the right");
    assert!(rgb.get_pixel(1, 190)[1] > 200, "green at the bottom");
    assert!(rgb.get_pixel(1, 1)[0] < 50, "dark at the top left");

    // A JPEG is read too, whatever type it was declared as.
    let jpeg = encoded(&picture(600, 1000), image::ImageFormat::Jpeg);
    let portrait = env
        .upload_typed(&alice, "portrait.png", "image/png", &jpeg)
        .await;
    assert_eq!((portrait.width, portrait.height), (Some(600), Some(1000)));
    let (_, _, bytes) = env
        .fetch(&alice, portrait.thumbnail_file_id.expect("a thumbnail"))
        .await;
    let small = image::load_from_memory(&bytes).unwrap();
    assert_eq!((small.width(), small.height()), (192, 320));

    // Bytes that are no image complete as a plain file that says so; an
    // image not declared as one is not read.
    let junk = env
        .upload_typed(&alice, "fake.png", "image/png", b"not a picture at all")
        .await;
    assert_eq!(junk.image_error.as_deref(), Some("image_unreadable"));
    assert_eq!((junk.width, junk.thumbnail_file_id), (None, None));
    let plain = env
        .upload_typed(&alice, "beach.bin", "application/octet-stream", &png)
        .await;
    assert_eq!(
        (plain.width, plain.thumbnail_file_id, plain.image_error),
        (None, None, None)
    );

    // Bob uploads the same picture: his own thumbnail, the same bytes.
    let blobs = files_under(&env.files_dir().join("blobs")).len();
    let again = env.upload_typed(&bob, "copy.png", "image/png", &png).await;
    assert_eq!((again.width, again.height), (Some(1000), Some(600)));
    let bobs_thumb = again.thumbnail_file_id.expect("a thumbnail");
    assert_ne!(bobs_thumb, thumb, "a thumbnail of his own");
    assert_eq!(
        env.fetch(&bob, bobs_thumb).await.2,
        env.fetch(&alice, thumb).await.2
    );
    assert_eq!(
        files_under(&env.files_dir().join("blobs")).len(),
        blobs,
        "identical thumbnails are stored once"
    );
    bob.refused(&GetUrl { file_id: thumb }, "forbidden").await;

    // Alice shares the picture without its size: the message as delivered
    // and as stored has what the server read.
    let mut bobs_session = Connection::connect_ws(&env.base(), &bob.token, Encoding::Json)
        .await
        .unwrap();
    alice
        .ok(&MessageSend {
            channel_id: group.channel_id,
            client_msg_id: "pic-1".to_owned(),
            content: image_content(done.file_id, None, None),
            reply_to: None,
            mentions: None,
        })
        .await;
    let filled = image_content(done.file_id, Some(thumb), Some((1000, 600)));
    let delivered = next_message(&mut bobs_session).await;
    assert_eq!(delivered.content, Some(filled.clone()));
    assert_eq!(last_message(&bob, group.channel_id).await, filled);

    // Bob, a member, may download the thumbnail now; Carol may not.
    let (_, mime, _) = env.fetch(&bob, thumb).await;
    assert_eq!(mime, "image/jpeg");
    let refused = env
        .http
        .post(env.url("/api/v1/file/get_url"))
        .bearer_auth(&carol.token)
        .json(&serde_json::json!({ "file_id": thumb.to_string() }))
        .send()
        .await
        .unwrap();
    let (status, body) = error_code(refused).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );

    // What the sender says is kept; the thumbnail is still filled in.
    alice
        .ok(&MessageSend {
            channel_id: group.channel_id,
            client_msg_id: "pic-2".to_owned(),
            content: image_content(done.file_id, None, Some((100, 60))),
            reply_to: None,
            mentions: None,
        })
        .await;
    assert_eq!(
        last_message(&alice, group.channel_id).await,
        image_content(done.file_id, Some(thumb), Some((100, 60)))
    );

    // A thumbnail the sender names must be one she may share.
    let carols = env
        .upload_typed(
            &carol,
            "mine.png",
            "image/png",
            &encoded(&picture(50, 40), image::ImageFormat::Png),
        )
        .await;
    let carols_thumb = carols.thumbnail_file_id.expect("a thumbnail");
    let refused = bob
        .http
        .call(&MessageSend {
            channel_id: group.channel_id,
            client_msg_id: "pic-3".to_owned(),
            content: image_content(done.file_id, Some(carols_thumb), None),
            reply_to: None,
            mentions: None,
        })
        .await;
    assert_eq!(refused.unwrap_err().code(), Some("forbidden"));

    // Forwarded to Carol, the picture brings its thumbnail along.
    let direct = bob
        .ok(&DirectGetOrCreate { user_id: carol.id })
        .await
        .channel_id;
    let pictures: HistoryPage = bob
        .ok(&HistoryGet {
            channel_id: group.channel_id,
            before_pts: None,
            limit: Some(10),
        })
        .await;
    let first = pictures
        .messages
        .iter()
        .find(|m| m.client_msg_id == "pic-1")
        .unwrap();
    bob.ok(&MessageForward {
        from_channel_id: group.channel_id,
        message_id: first.message_id,
        to_channel_id: direct,
        client_msg_id: "fwd".to_owned(),
    })
    .await;
    let (_, _, bytes) = env.fetch(&carol, thumb).await;
    assert_eq!(image::load_from_memory(&bytes).unwrap().width(), 320);
    assert!(env.errors().is_empty(), "{:#?}", env.errors());
}

/// The resident memory of process `pid`, in bytes (`VmRSS`); `None` once
/// it has exited.
fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn rss_bytes(pid: u32) -> u64 {
    rss_of(pid).expect("the server's VmRSS")
}

/// Samples a process's resident memory on a thread of its own until
/// stopped, keeping the highest.
struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(u64, usize)>>,
}

impl RssSampler {
    fn start(pid: u32, every: Duration) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut peak, mut samples) = (0, 0);
            loop {
                let Some(rss) = rss_of(pid) else {
                    return (peak, samples);
                };
                peak = rss.max(peak);
                samples += 1;
                if flag.load(Ordering::Relaxed) {
                    return (peak, samples);
                }
                std::thread::sleep(every);
            }
        });
        RssSampler {
            stop,
            thread: Some(thread),
        }
    }

    /// The highest resident memory seen, and how many samples were taken.
    fn stop(mut self) -> (u64, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

const MIB: u64 = 1024 * 1024;

/// A bit writer for DEFLATE: values go least significant bit first,
/// Huffman codes most significant bit first.
#[derive(Default)]
struct Bits {
    out: Vec<u8>,
    acc: u64,
    len: u32,
}

impl Bits {
    fn put(&mut self, value: u32, count: u32) {
        self.acc |= u64::from(value) << self.len;
        self.len += count;
        while self.len >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.len -= 8;
        }
    }

    fn code(&mut self, code: u32, count: u32) {
        let reversed = (0..count).fold(0, |r, i| r | (((code >> i) & 1) << (count - 1 - i)));
        self.put(reversed, count);
    }

    fn finish(mut self) -> Vec<u8> {
        if self.len > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}

/// A zlib stream of `len` zero bytes, compressed about 1,000 to 1 (one
/// fixed-Huffman block: a literal zero, then copies of 258 bytes at
/// distance 1). Written out directly: compressing hundreds of megabytes
/// would take a debug build too long.
fn zeros_zlib(len: usize) -> Vec<u8> {
    let mut bits = Bits::default();
    bits.put(1, 1); // the final block
    bits.put(1, 2); // fixed Huffman codes
    let mut left = len;
    if left > 0 {
        bits.code(0x30, 8); // literal 0
        left -= 1;
    }
    while left >= 258 {
        bits.code(0xC5, 8); // length 258 (symbol 285)
        bits.code(0, 5); // distance 1
        left -= 258;
    }
    for _ in 0..left {
        bits.code(0x30, 8);
    }
    bits.code(0, 7); // end of block (256)
    let mut out = vec![0x78, 0x01];
    out.extend(bits.finish());
    let adler = (((len % 65_521) as u32) << 16) | 1;
    out.extend_from_slice(&adler.to_be_bytes());
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A PNG of `width` x `height` grey pixels of `depth` bits whose image data
/// is `idat` (a zlib stream), written chunk by chunk.
fn grey_png(width: u32, height: u32, depth: u8, idat: &[u8]) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut header = width.to_be_bytes().to_vec();
    header.extend_from_slice(&height.to_be_bytes());
    header.extend_from_slice(&[depth, 0, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &header);
    chunk(&mut out, b"IDAT", idat);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// A black `width` x `height` PNG of `depth`-bit grey, all of it there:
/// every row is a filter byte and `width * depth / 8` bytes of zeros.
fn black_png(width: u32, height: u32, depth: u8) -> Vec<u8> {
    let row = 1 + (width as usize * depth as usize).div_ceil(8);
    grey_png(width, height, depth, &zeros_zlib(row * height as usize))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_images_stay_plain_files_and_the_server_stays_small() {
    let env = Env::start("");
    let alice = env.register("alice").await;

    // The crafted PNGs are well-formed: a small one of the same making
    // decodes to what it says.
    let sample = black_png(300, 200, 1);
    let decoded = image::load_from_memory(&sample).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (300, 200));
    assert!(decoded.to_luma8().pixels().all(|p| p[0] == 0));
    let read = env
        .upload_typed(&alice, "sample.png", "image/png", &sample)
        .await;
    assert_eq!((read.width, read.height), (Some(300), Some(200)));
    assert!(read.thumbnail_file_id.is_some());

    let bombs = [
        // The header says 100,000 x 100,000; the data is a few bytes.
        ("huge.png", grey_png(100_000, 100_000, 8, &zeros_zlib(1000))),
        // 20,000 x 20,000 (400 million pixels): sides past the limit.
        ("wide.png", black_png(20_000, 20_000, 1)),
        // 16,000 x 16,000: sides within the limit, but 256 million pixels
        // (244 MiB decoded, under the decoder's 256 MiB allowance): only
        // the pixel count stops it.
        ("many.png", black_png(16_000, 16_000, 1)),
    ];
    let pid = env.server.pid();
    let baseline = rss_bytes(pid);
    let sampler = RssSampler::start(pid, Duration::from_millis(50));
    for (name, bytes) in &bombs {
        assert!(bytes.len() < 400_000, "{name}: {} bytes", bytes.len());
        let done = env.upload_typed(&alice, name, "image/png", bytes).await;
        assert_eq!(
            (done.width, done.height, done.thumbnail_file_id),
            (None, None, None),
            "{name}"
        );
        assert_eq!(
            done.image_error.as_deref(),
            Some("image_too_large"),
            "{name}"
        );
        // Still a file like any other.
        let (_, _, got) = env.fetch(&alice, done.file_id).await;
        assert_eq!(&got, bytes, "{name}");
    }
    let (peak, samples) = sampler.stop();
    let grew = peak.saturating_sub(baseline);
    eprintln!(
        "server RSS: {} MiB before, {} MiB at most ({samples} samples)",
        baseline / MIB,
        peak / MIB
    );
    assert!(
        grew < 64 * MIB,
        "the server grew by {} MiB reading crafted images",
        grew / MIB
    );
    assert!(env.errors().is_empty(), "{:#?}", env.errors());
}

// A gibibyte, streamed: the server's memory stays flat.

/// The bytes of a big upload, 1 MiB block by block, made on the fly: one
/// pseudo-random block, each copy stamped with its index (so a misplaced
/// block shows).
struct Blocks {
    base: Vec<u8>,
}

impl Blocks {
    fn new() -> Blocks {
        Blocks {
            base: pattern(MIB as usize, 9),
        }
    }

    fn block(&self, index: u64, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.base);
        out[..8].copy_from_slice(&index.to_le_bytes());
    }

    /// The `len` bytes at `offset`.
    fn bytes_at(&self, offset: u64, len: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let mut block = Vec::new();
        let mut at = offset;
        while at < offset + len {
            self.block(at / MIB, &mut block);
            let from = (at % MIB) as usize;
            let take = (MIB - at % MIB).min(offset + len - at) as usize;
            out.extend_from_slice(&block[from..from + take]);
            at += take as u64;
        }
        out
    }
}

/// PUTs the blocks `blocks` as one chunk of an upload of `total` bytes, over
/// a connection of its own, one block in memory at a time, hashing them
/// into `hash`. Returns the status and the JSON answer.
async fn put_blocks(
    env: &Env,
    grant: &UploadTokenGrant,
    source: &Blocks,
    blocks: std::ops::Range<u64>,
    total: u64,
    hash: &mut Sha256,
) -> (u16, serde_json::Value) {
    let (start, end) = (blocks.start * MIB, blocks.end * MIB);
    let mut socket = tokio::net::TcpStream::connect(env.server.http)
        .await
        .unwrap();
    let head = format!(
        "PUT {} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Content-Range: bytes {start}-{}/{total}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        grant.upload_url,
        env.server.http,
        grant.token,
        end - 1,
        end - start
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut block = Vec::with_capacity(MIB as usize);
    for index in blocks {
        source.block(index, &mut block);
        hash.update(&block);
        socket.write_all(&block).await.unwrap();
    }
    let mut answer = Vec::new();
    socket.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer}"));
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    (status, serde_json::from_str(body).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gibibyte_upload_keeps_the_servers_memory_flat() {
    const BLOCKS: u64 = 1024;
    const CHUNK_BLOCKS: u64 = 256;
    let total = BLOCKS * MIB;
    let env = Env::start(&format!(
        "[file]\n\
         max_file_size_bytes = {total}\n\
         user_quota_bytes = {}\n",
        2 * total
    ));
    let alice = env.register("alice").await;
    let grant = alice
        .ok(&RequestUploadToken {
            name: "big.bin".to_owned(),
            size: total,
            mime: "application/octet-stream".to_owned(),
            sha256: None,
            channel_id: None,
        })
        .await;
    let source = Blocks::new();
    let mut hash = Sha256::new();

    let pid = env.server.pid();
    let baseline = rss_bytes(pid);
    let sampler = RssSampler::start(pid, Duration::from_millis(100));
    let started = Instant::now();
    let mut answer = serde_json::Value::Null;
    for first in (0..BLOCKS).step_by(CHUNK_BLOCKS as usize) {
        let (status, body) = put_blocks(
            &env,
            &grant,
            &source,
            first..first + CHUNK_BLOCKS,
            total,
            &mut hash,
        )
        .await;
        assert_eq!(status, 200, "{body}\n{:#?}", env.errors());
        assert_eq!(body["offset"], (first + CHUNK_BLOCKS) * MIB);
        answer = body;
    }
    let elapsed = started.elapsed();
    let (peak, samples) = sampler.stop();
    let grew = peak.saturating_sub(baseline);
    eprintln!(
        "1 GiB uploaded in {:.1} s; server RSS {} MiB before, {} MiB at most ({samples} samples)",
        elapsed.as_secs_f64(),
        baseline / MIB,
        peak / MIB
    );
    assert!(samples >= 5, "{samples} samples");
    assert!(
        grew < 96 * MIB,
        "the server grew by {} MiB receiving 1 GiB",
        grew / MIB
    );

    let done: UploadProgress = serde_json::from_value(answer).unwrap();
    assert_eq!(done.status, FileStatus::Complete);
    let sha = hex::encode(hash.finalize());
    assert_eq!(done.sha256.as_deref(), Some(sha.as_str()));
    let blob = env.files_dir().join("blobs").join(&sha);
    assert_eq!(std::fs::metadata(&blob).unwrap().len(), total);
    assert!(
        files_under(&env.files_dir().join("staging")).is_empty(),
        "no parts are left behind"
    );
    // A range across a chunk boundary reads back right.
    let link: FileUrl = alice
        .ok(&GetUrl {
            file_id: done.file_id,
        })
        .await;
    let at = 512 * MIB - 1000;
    let part = env
        .download(
            &link.url,
            Some(&format!("bytes={at}-{}", at + 4 * 1024 - 1)),
        )
        .await;
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.bytes().await.unwrap().to_vec(),
        source.bytes_at(at, 4 * 1024)
    );
}
