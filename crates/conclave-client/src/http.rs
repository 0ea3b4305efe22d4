//! RPC over plain HTTP: `POST {base}/api/v1/{route}`.

use conclave_core::DeviceId;
use conclave_protocol::api::Route;
use conclave_protocol::api::account::{AuthGrant, Login, Register};
use serde::Deserialize;
use serde_json::Value;

use crate::HTTP_TIMEOUT;
use crate::envelope;
use crate::error::ClientError;

/// A stateless RPC client: one HTTP request per call.
///
/// Cloning is cheap and clones share one connection pool, so a load
/// generator can hand a clone (with its own token) to every simulated user.
#[derive(Debug, Clone)]
pub struct HttpClient {
    http: reqwest::Client,
    base_url: String,
    token: Option<String>,
}

impl HttpClient {
    /// A client for the server at `base_url`, e.g. `http://127.0.0.1:8080`.
    #[must_use]
    pub fn new(base_url: &str) -> Self {
        Self::with_http_client(base_url, reqwest::Client::new())
    }

    /// Like [`HttpClient::new`], on a `reqwest` client of the caller's
    /// (to share its pool or tune it).
    #[must_use]
    pub fn with_http_client(base_url: &str, http: reqwest::Client) -> Self {
        Self {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            token: None,
        }
    }

    /// The same client, authenticating as `token`.
    #[must_use]
    pub fn with_token(self, token: impl Into<String>) -> Self {
        Self {
            token: Some(token.into()),
            ..self
        }
    }

    /// The server's base URL, without a trailing slash.
    #[must_use]
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The access token calls are made with, if any.
    #[must_use]
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Calls a route with a typed request.
    ///
    /// # Errors
    ///
    /// [`ClientError::Api`] when the server refuses, [`ClientError::Timeout`]
    /// after [`HTTP_TIMEOUT`], [`ClientError::Transport`] when the request
    /// does not get through, [`ClientError::Protocol`] when the answer does
    /// not match the route's response type.
    pub async fn call<R: Route>(&self, request: &R) -> Result<R::Response, ClientError> {
        let body = envelope::to_body(R::NAME, request)?;
        let response = self.post(R::NAME, body).await?;
        envelope::typed(R::NAME, &response)
    }

    /// Calls a route with any JSON body and returns the response body as is.
    ///
    /// # Errors
    ///
    /// As [`HttpClient::call`], without the type check.
    pub async fn call_raw(&self, route: &str, body: Value) -> Result<Value, ClientError> {
        let response = self.post(route, body).await?;
        serde_json::from_slice(&response).map_err(|err| {
            ClientError::Protocol(format!("the response of `{route}` is not JSON: {err}"))
        })
    }

    /// Posts `body` to `route`; the response body of a success.
    async fn post(&self, route: &str, body: Value) -> Result<bytes::Bytes, ClientError> {
        let url = format!("{}/api/v1/{route}", self.base_url);
        let mut request = self.http.post(url).json(&body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let exchange = async {
            let response = request.send().await.map_err(transport)?;
            let status = response.status();
            let bytes = response.bytes().await.map_err(transport)?;
            if status.is_success() {
                Ok(bytes)
            } else {
                Err(envelope::http_error(status.as_u16(), &bytes))
            }
        };
        tokio::time::timeout(HTTP_TIMEOUT, exchange)
            .await
            .map_err(|_| ClientError::Timeout("an HTTP response"))?
    }

    /// Creates an account and logs its first device in.
    ///
    /// # Errors
    ///
    /// As [`HttpClient::call`]; `conflict` when the username is taken.
    pub async fn register(
        &self,
        username: &str,
        password: &str,
        device_name: Option<&str>,
    ) -> Result<AuthGrant, ClientError> {
        self.call(&Register {
            username: username.to_owned(),
            password: password.to_owned(),
            display_name: None,
            device_name: device_name.map(str::to_owned),
            noise_public_key: None,
        })
        .await
    }

    /// Logs in as a new device. To log an existing device in again, call
    /// [`Login`] with its `device_id`.
    ///
    /// # Errors
    ///
    /// As [`HttpClient::call`]; `invalid_credentials` for a wrong username
    /// or password.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        device_name: Option<&str>,
    ) -> Result<AuthGrant, ClientError> {
        self.call(&Login {
            username: username.to_owned(),
            password: password.to_owned(),
            device_name: device_name.map(str::to_owned),
            device_id: None,
            noise_public_key: None,
        })
        .await
    }
}

/// What `GET /v1/server-info` tells a client before it connects: the keys
/// to pin for the encrypted transports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// The server software's name (`conclave`).
    pub name: String,
    /// The server software's version.
    pub version: String,
    /// Identifies this installation (stable across restarts).
    pub installation_id: String,
    /// The protocol version the server speaks.
    pub protocol_version: u32,
    /// The server's static X25519 key, for
    /// [`crate::NoiseOptions::server_public_key`].
    pub noise_public_key: [u8; 32],
    /// SHA-256 of the QUIC certificate (lowercase hex), for
    /// [`crate::Connection::connect_quic`].
    pub quic_cert_sha256: String,
}

/// `GET /v1/server-info` as it travels.
#[derive(Deserialize)]
struct ServerInfoBody {
    name: String,
    version: String,
    installation_id: String,
    protocol_version: u32,
    noise_public_key: String,
    quic_cert_sha256: String,
}

impl TryFrom<ServerInfoBody> for ServerInfo {
    type Error = ClientError;

    fn try_from(body: ServerInfoBody) -> Result<Self, ClientError> {
        let noise_public_key = hex::decode(&body.noise_public_key)
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .ok_or_else(|| {
                ClientError::Protocol(format!(
                    "the server's noise_public_key `{}` is not 64 hex digits",
                    body.noise_public_key
                ))
            })?;
        Ok(Self {
            name: body.name,
            version: body.version,
            installation_id: body.installation_id,
            protocol_version: body.protocol_version,
            noise_public_key,
            quic_cert_sha256: body.quic_cert_sha256.to_ascii_lowercase(),
        })
    }
}

/// [`HttpClient::server_info`] without keeping a client: what the server at
/// `base_url` (e.g. `http://127.0.0.1:8080`) publishes about itself.
///
/// # Errors
///
/// As [`HttpClient::server_info`].
pub async fn server_info(base_url: &str) -> Result<ServerInfo, ClientError> {
    HttpClient::new(base_url).server_info().await
}

impl HttpClient {
    /// `GET /v1/server-info`: the server's version and the keys to pin.
    ///
    /// # Errors
    ///
    /// [`ClientError::Timeout`] after [`HTTP_TIMEOUT`],
    /// [`ClientError::Transport`] when the request does not get through or
    /// the server answers with an error status, [`ClientError::Protocol`]
    /// when the answer is not the expected JSON.
    pub async fn server_info(&self) -> Result<ServerInfo, ClientError> {
        let url = format!("{}/v1/server-info", self.base_url);
        let exchange = async {
            let response = self.http.get(url).send().await.map_err(transport)?;
            let status = response.status();
            let bytes = response.bytes().await.map_err(transport)?;
            if !status.is_success() {
                return Err(envelope::http_error(status.as_u16(), &bytes));
            }
            let body: ServerInfoBody = serde_json::from_slice(&bytes).map_err(|err| {
                ClientError::Protocol(format!("unreadable /v1/server-info: {err}"))
            })?;
            ServerInfo::try_from(body)
        };
        tokio::time::timeout(HTTP_TIMEOUT, exchange)
            .await
            .map_err(|_| ClientError::Timeout("an HTTP response"))?
    }

    /// [`HttpClient::register`], registering the first device's Noise
    /// static public key (e.g. [`crate::generate_device_keypair`]'s
    /// `public`), which the TCP+Noise transport requires.
    ///
    /// # Errors
    ///
    /// As [`HttpClient::register`]; `bad_request` for an unusable key.
    pub async fn register_with_noise_key(
        &self,
        username: &str,
        password: &str,
        device_name: Option<&str>,
        noise_public_key: &[u8; 32],
    ) -> Result<AuthGrant, ClientError> {
        self.call(&Register {
            username: username.to_owned(),
            password: password.to_owned(),
            display_name: None,
            device_name: device_name.map(str::to_owned),
            noise_public_key: Some(hex::encode(noise_public_key)),
        })
        .await
    }

    /// Logs in with a Noise static public key: as a new device, or, with
    /// `device_id`, again on an existing one (replacing its key).
    ///
    /// # Errors
    ///
    /// As [`HttpClient::login`]; `bad_request` for an unusable key.
    pub async fn login_with_noise_key(
        &self,
        username: &str,
        password: &str,
        device_name: Option<&str>,
        device_id: Option<DeviceId>,
        noise_public_key: &[u8; 32],
    ) -> Result<AuthGrant, ClientError> {
        self.call(&Login {
            username: username.to_owned(),
            password: password.to_owned(),
            device_name: device_name.map(str::to_owned),
            device_id,
            noise_public_key: Some(hex::encode(noise_public_key)),
        })
        .await
    }
}

fn transport(err: reqwest::Error) -> ClientError {
    // reqwest's Display omits the cause ("error sending request"); the chain
    // says what actually failed (connection refused, reset, ...).
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    ClientError::Transport(text)
}
