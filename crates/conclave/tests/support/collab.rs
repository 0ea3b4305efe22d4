//! A server with accounts and documents, for the collaborative-document
//! tests: fast password hashing, rate limits out of the way, helpers for
//! the `doc/*` routes.

use std::path::PathBuf;

use conclave_client::HttpClient;
use conclave_client::api::account::AuthGrant;
use conclave_client::api::documents::{DocCreate, DocScope, DocToken, DocumentView};
use conclave_client::api::messaging::DirectGetOrCreate;
use conclave_core::ChannelId;

use super::{Server, start_server, write_config};

pub const PASSWORD: &str = "correct horse battery staple";

/// A test's server and its directory (kept until the test ends).
pub struct CollabEnv {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub server: Server,
}

impl CollabEnv {
    /// A server whose configuration adds `extra` TOML.
    pub fn start(extra: &str) -> CollabEnv {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = write_config(dir.path(), extra);
        let server = start_server(dir.path(), &config);
        CollabEnv {
            dir,
            config,
            server,
        }
    }

    /// Starts a new server on the same data directory (the old one must
    /// have exited); it listens on new ports.
    pub fn restart(&mut self) {
        self.server = start_server(self.dir.path(), &self.config);
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.server.http)
    }

    /// What a y-websocket provider takes as its server URL.
    pub fn collab_url(&self) -> String {
        format!("ws://{}/collab", self.server.http)
    }

    /// What a Hocuspocus provider takes as its `url`.
    pub fn hocuspocus_url(&self) -> String {
        format!("ws://{}/hocuspocus", self.server.http)
    }

    pub fn http(&self) -> HttpClient {
        HttpClient::new(&self.base())
    }

    pub fn as_user(&self, grant: &AuthGrant) -> HttpClient {
        self.http().with_token(&grant.token)
    }

    pub async fn register(&self, username: &str) -> AuthGrant {
        self.http()
            .register(username, PASSWORD, Some("laptop"))
            .await
            .unwrap_or_else(|err| panic!("register {username}: {err}"))
    }

    pub async fn direct(&self, from: &AuthGrant, to: &AuthGrant) -> ChannelId {
        self.as_user(from)
            .call(&DirectGetOrCreate {
                user_id: to.user_id,
            })
            .await
            .expect("channel/direct/get_or_create")
            .channel_id
    }

    pub async fn create_doc(
        &self,
        owner: &AuthGrant,
        name: &str,
        channel: Option<ChannelId>,
    ) -> DocumentView {
        self.as_user(owner)
            .call(&DocCreate {
                name: name.to_owned(),
                channel_id: channel,
            })
            .await
            .unwrap_or_else(|err| panic!("doc/create {name}: {err}"))
    }

    pub async fn token(&self, user: &AuthGrant, name: &str, scope: DocScope) -> String {
        self.as_user(user)
            .call(&DocToken {
                name: name.to_owned(),
                scope,
            })
            .await
            .unwrap_or_else(|err| panic!("doc/token {name}: {err}"))
            .token
    }
}
