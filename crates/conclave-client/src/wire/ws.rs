//! The WebSocket under both encodings: connecting, reading data messages,
//! keepalive and the closing handshake.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use conclave_protocol::{DECODER_BUFFER_MAX_BYTES, Decoded, Frame, decode_frame};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::framed::FrameTransport;
use crate::connection::Encoding;
use crate::envelope;
use crate::error::{ClientError, CloseReason, Goaway};

pub(crate) type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Largest message we accept: one maximal CCP-1 frame with its length
/// prefix, which is all the server ever puts in one binary message (JSON
/// text messages are far smaller). Anything bigger is refused before it is
/// buffered.
const MESSAGE_MAX_BYTES: usize = DECODER_BUFFER_MAX_BYTES;

/// Bytes read per syscall. tungstenite's default (128 KiB) is kept for the
/// connection's life and zero-filled before every read, which made a
/// process holding thousands of connections spend its time clearing
/// memory; a larger message is still read whole, in several steps.
const READ_BUFFER_BYTES: usize = 16 * 1024;

/// Opens and authenticates the WebSocket, from `local_addr` when given.
pub(crate) async fn connect(
    base_url: &str,
    token: &str,
    encoding: Encoding,
    connect_timeout: Duration,
    local_addr: Option<IpAddr>,
) -> Result<WsStream, ClientError> {
    let url = ws_url(base_url, encoding)?;
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|err| ClientError::Transport(format!("invalid WebSocket URL `{url}`: {err}")))?;
    let bearer = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
        ClientError::Transport("the token contains characters not allowed in a header".to_owned())
    })?;
    request.headers_mut().insert(AUTHORIZATION, bearer);
    let config = WebSocketConfig::default()
        .max_message_size(Some(MESSAGE_MAX_BYTES))
        .max_frame_size(Some(MESSAGE_MAX_BYTES))
        .read_buffer_size(READ_BUFFER_BYTES);
    let connecting = async {
        let Some(local) = local_addr else {
            // Small request/response messages: Nagle's algorithm would only
            // add latency to every call.
            let disable_nagle = true;
            return Ok(tokio_tungstenite::connect_async_with_config(
                request,
                Some(config),
                disable_nagle,
            )
            .await);
        };
        // The same handshake over a socket we bound ourselves (no TLS: this
        // build of the SDK speaks `ws` only, as `connect_async` does).
        let addr = resolve(&url).await?;
        let stream = super::tcp_connect(addr, Some(local)).await.map_err(|err| {
            ClientError::Transport(format!("connecting to {addr} from {local}: {err}"))
        })?;
        Ok(tokio_tungstenite::client_async_with_config(
            request,
            MaybeTlsStream::Plain(stream),
            Some(config),
        )
        .await)
    };
    match tokio::time::timeout(connect_timeout, connecting).await {
        Err(_) => Err(ClientError::Timeout("the WebSocket to open")),
        Ok(Err(err)) => Err(err),
        Ok(Ok(Ok((socket, _response)))) => Ok(socket),
        // Refused before the upgrade: the body is the server's JSON error.
        Ok(Ok(Err(tungstenite::Error::Http(response)))) => Err(envelope::http_error(
            response.status().as_u16(),
            response.body().as_deref().unwrap_or_default(),
        )),
        Ok(Ok(Err(err))) => Err(ClientError::Transport(format!(
            "opening the WebSocket to `{url}`: {err}"
        ))),
    }
}

/// The socket address of a `ws://host[:port]/...` URL (the first one the
/// host resolves to).
async fn resolve(url: &str) -> Result<SocketAddr, ClientError> {
    let unsupported = || {
        ClientError::Transport(format!(
            "cannot connect to `{url}` from a chosen local address (only ws:// URLs are supported)"
        ))
    };
    let rest = url.strip_prefix("ws://").ok_or_else(unsupported)?;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    // A port after the host (not inside an IPv6 literal's brackets).
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.contains(']'));
    let target = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let mut addrs = tokio::net::lookup_host(target.as_str())
        .await
        .map_err(|err| ClientError::Transport(format!("resolving `{authority}`: {err}")))?;
    addrs
        .next()
        .ok_or_else(|| ClientError::Transport(format!("`{authority}` resolves to no address")))
}

/// `{base}/v1/ws?encoding=..` with the scheme made a WebSocket one.
fn ws_url(base_url: &str, encoding: Encoding) -> Result<String, ClientError> {
    let base = base_url.trim_end_matches('/');
    let (scheme, rest) = base
        .split_once("://")
        .ok_or_else(|| ClientError::Transport(format!("`{base_url}` is not a URL (no scheme)")))?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        other => {
            return Err(ClientError::Transport(format!(
                "unsupported URL scheme `{other}` (expected http, https, ws or wss)"
            )));
        }
    };
    Ok(format!(
        "{scheme}://{rest}/v1/ws?encoding={}",
        encoding.as_str()
    ))
}

/// A data message from the server.
pub(crate) enum Data {
    Text(Utf8Bytes),
    Binary(Bytes),
}

/// Reads the next message: `Some` data, `None` for a control message (which
/// still proves the server alive; tungstenite queues the pong to a ping
/// itself and sends it with the next read or write), or why the stream
/// ended.
///
/// Cancel-safe: the only await is the stream's `next`, which is.
pub(crate) async fn next_data(socket: &mut WsStream) -> Result<Option<Data>, CloseReason> {
    match socket.next().await {
        Some(Ok(Message::Text(text))) => Ok(Some(Data::Text(text))),
        Some(Ok(Message::Binary(bytes))) => Ok(Some(Data::Binary(bytes))),
        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Ok(None),
        Some(Ok(Message::Close(frame))) => Err(closed_by_server(frame)),
        Some(Err(err)) => Err(CloseReason::Disconnected(err.to_string())),
        None => Err(CloseReason::Disconnected(
            "the server ended the connection".to_owned(),
        )),
    }
}

/// A close frame without a goaway before it: the server puts the error code
/// in the close reason, so that is still an explanation.
fn closed_by_server(frame: Option<CloseFrame>) -> CloseReason {
    match frame {
        Some(frame) if !frame.reason.is_empty() => CloseReason::Goaway(Goaway {
            code: frame.reason.as_str().to_owned(),
            message: String::new(),
        }),
        Some(frame) => CloseReason::Disconnected(format!(
            "the server closed the connection (close code {})",
            u16::from(frame.code)
        )),
        None => CloseReason::Disconnected("the server closed the connection".to_owned()),
    }
}

pub(crate) async fn send(socket: &mut WsStream, message: Message) -> Result<(), String> {
    socket.send(message).await.map_err(|err| err.to_string())
}

/// A WebSocket ping: the server counts any traffic as a sign of life.
pub(crate) async fn keepalive(socket: &mut WsStream) -> Result<(), String> {
    send(socket, Message::Ping(Bytes::new())).await
}

/// Sends our close frame and reads until the server's arrives (or the
/// stream ends), so the handshake completes; the caller bounds the time.
pub(crate) async fn close(socket: &mut WsStream) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: Utf8Bytes::from_static(""),
    };
    // Fails harmlessly when the server closed first: its close frame has
    // already been answered.
    let _ = socket.close(Some(frame)).await;
    while let Some(Ok(_)) = socket.next().await {}
}

/// The binary encoding: each binary message holds whole CCP-1 frames.
pub(crate) struct WsFrames {
    socket: WsStream,
}

impl WsFrames {
    pub(crate) fn new(socket: WsStream) -> Self {
        Self { socket }
    }
}

impl FrameTransport for WsFrames {
    async fn send(&mut self, frames: Bytes) -> Result<(), String> {
        send(&mut self.socket, Message::Binary(frames)).await
    }

    async fn recv(&mut self) -> Result<Vec<Frame>, CloseReason> {
        match next_data(&mut self.socket).await? {
            None => Ok(Vec::new()),
            Some(Data::Binary(bytes)) => split_frames(&bytes).map_err(|why| {
                CloseReason::Disconnected(format!("the server broke the framing: {why}"))
            }),
            Some(Data::Text(text)) => {
                // Only a JSON-mode request gets a text answer, and we send none.
                tracing::warn!(
                    len = text.len(),
                    "ignoring a text message on a binary-mode connection"
                );
                Ok(Vec::new())
            }
        }
    }

    async fn keepalive(&mut self) -> Result<(), String> {
        keepalive(&mut self.socket).await
    }

    async fn close(&mut self) {
        close(&mut self.socket).await;
    }
}

/// The frames of one binary message, which must end on a frame boundary.
fn split_frames(mut rest: &[u8]) -> Result<Vec<Frame>, String> {
    let mut frames = Vec::new();
    while !rest.is_empty() {
        match decode_frame(rest).map_err(|err| err.to_string())? {
            Decoded::Frame { frame, consumed } => {
                frames.push(frame);
                rest = rest.get(consumed..).unwrap_or_default();
            }
            Decoded::Incomplete => return Err("a binary message ends mid-frame".to_owned()),
        }
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_become_websocket_urls() {
        let url = |base| ws_url(base, Encoding::Binary).map_err(|err| err.to_string());
        assert_eq!(
            url("http://127.0.0.1:8080/"),
            Ok("ws://127.0.0.1:8080/v1/ws?encoding=binary".to_owned())
        );
        assert_eq!(
            url("HTTPS://chat.example"),
            Ok("wss://chat.example/v1/ws?encoding=binary".to_owned())
        );
        assert_eq!(
            url("ws://h:1"),
            Ok("ws://h:1/v1/ws?encoding=binary".to_owned())
        );
        assert!(url("ftp://h").is_err());
        assert!(url("127.0.0.1:8080").is_err());
    }

    #[test]
    fn a_message_must_hold_whole_frames() {
        let one = Frame::new(conclave_protocol::FrameType::Pong, 0, 7, Bytes::new())
            .encode()
            .unwrap_or_default();
        let mut two = one.to_vec();
        two.extend_from_slice(&one);
        assert_eq!(split_frames(&two).map(|f| f.len()), Ok(2));
        let cut = two.get(..two.len() - 1).unwrap_or_default();
        assert!(split_frames(cut).is_err());
    }

    #[test]
    fn a_close_reason_names_the_code() {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: Utf8Bytes::from_static("session_kicked"),
        };
        assert_eq!(closed_by_server(Some(frame)).code(), Some("session_kicked"));
        assert_eq!(closed_by_server(None).code(), None);
    }
}
