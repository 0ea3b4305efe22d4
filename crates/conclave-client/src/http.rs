//! RPC over plain HTTP: `POST {base}/api/v1/{route}`.

use conclave_protocol::api::Route;
use conclave_protocol::api::account::{AuthGrant, Login, Register};
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
        let response = self.call_raw(R::NAME, body).await?;
        envelope::typed(R::NAME, response)
    }

    /// Calls a route with any JSON body and returns the response body as is.
    ///
    /// # Errors
    ///
    /// As [`HttpClient::call`], without the type check.
    pub async fn call_raw(&self, route: &str, body: Value) -> Result<Value, ClientError> {
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
                serde_json::from_slice(&bytes).map_err(|err| {
                    ClientError::Protocol(format!("the response of `{route}` is not JSON: {err}"))
                })
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
