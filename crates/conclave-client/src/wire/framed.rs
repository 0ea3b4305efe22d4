//! The CCP-1 session: RPCs, events, heartbeats and goaways as frames, over
//! any transport that can move whole frames.

use std::future::Future;

use bytes::Bytes;
use conclave_core::ChannelId;
use conclave_protocol::api::{EventPayload, GoawayPayload, RequestPayload, ResponsePayload};
use conclave_protocol::{Frame, FrameType, parse_json_payload};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::connection::Event;
use crate::envelope;
use crate::error::{ClientError, CloseReason};
use crate::session::{Inbound, Wire};

/// A carrier of CCP-1 frames: the WebSocket's binary mode, a Noise tunnel
/// over TCP, or a QUIC stream. It moves encoded frames and
/// nothing more; what the frames mean is [`Framed`]'s business.
pub(crate) trait FrameTransport: Send + 'static {
    /// Sends one or more whole encoded frames.
    fn send(&mut self, frames: Bytes) -> impl Future<Output = Result<(), String>> + Send;

    /// Receives the next frames (possibly none, for transport-level
    /// traffic such as a WebSocket pong), or why the stream ended.
    ///
    /// Must be cancel-safe (see [`Wire::recv`]): a transport that reads a
    /// byte stream keeps partial frames in its own decoder.
    fn recv(&mut self) -> impl Future<Output = Result<Vec<Frame>, CloseReason>> + Send;

    /// Proves to the server that we are alive (a WebSocket ping; a `Ping`
    /// frame where the transport has no pings of its own).
    fn keepalive(&mut self) -> impl Future<Output = Result<(), String>> + Send;

    /// Runs the transport's closing handshake.
    fn close(&mut self) -> impl Future<Output = ()> + Send;
}

/// The CCP-1 wire format over a frame transport.
pub(crate) struct Framed<T> {
    transport: T,
}

impl<T: FrameTransport> Framed<T> {
    pub(crate) fn new(transport: T) -> Self {
        Self { transport }
    }
}

impl<T: FrameTransport> Wire for Framed<T> {
    type Out = Bytes;

    fn encode_request(&self, id: u64, route: &str, body: Value) -> Result<Bytes, ClientError> {
        let payload = RequestPayload {
            route: route.to_owned(),
            body,
        };
        // The request id travels as the frame's sequence number.
        Frame::json(FrameType::RpcRequest, 0, id, &payload)
            .and_then(|frame| frame.encode())
            .map_err(|err| {
                ClientError::Protocol(format!("cannot frame a `{route}` request: {err}"))
            })
    }

    async fn send(&mut self, out: Bytes) -> Result<(), String> {
        self.transport.send(out).await
    }

    async fn recv(&mut self) -> Result<Vec<Inbound<Bytes>>, CloseReason> {
        let frames = self.transport.recv().await?;
        Ok(frames.into_iter().filter_map(interpret).collect())
    }

    async fn keepalive(&mut self) -> Result<(), String> {
        self.transport.keepalive().await
    }

    async fn close(&mut self) {
        self.transport.close().await;
    }
}

/// What a frame from the server means.
fn interpret(frame: Frame) -> Option<Inbound<Bytes>> {
    match frame.frame_type {
        FrameType::RpcResponse => {
            let id = frame.sequence;
            let result = parse_json_payload::<ResponsePayload<Box<RawValue>>>(&frame)
                .map_err(|err| {
                    ClientError::Protocol(format!("unreadable response to request {id}: {err}"))
                })
                .and_then(envelope::response_result);
            Some(Inbound::Response { id, result })
        }
        FrameType::Event => match parse_json_payload::<EventPayload<Box<RawValue>>>(&frame) {
            Ok(payload) => {
                let mut event = Event::from_payload(payload);
                // The header carries channel and pts, 0 meaning none; the
                // payload omits them.
                if frame.channel_id != 0 {
                    event.channel_id = Some(ChannelId::new(frame.channel_id));
                }
                if frame.sequence != 0 {
                    event.pts = Some(frame.sequence);
                }
                Some(Inbound::Event(event))
            }
            Err(err) => {
                // One unreadable event is lost; the session (and sync, for
                // channel events) carries on.
                tracing::warn!(error = %err, "ignoring an unreadable event frame");
                None
            }
        },
        FrameType::Ping => {
            match Frame::new(
                FrameType::Pong,
                frame.channel_id,
                frame.sequence,
                frame.payload,
            )
            .encode()
            {
                Ok(pong) => Some(Inbound::Reply(pong)),
                // A ping the decoder accepted always fits in a pong.
                Err(err) => Some(Inbound::Fatal(format!("cannot answer a ping: {err}"))),
            }
        }
        FrameType::Goaway => Some(match parse_json_payload::<GoawayPayload>(&frame) {
            Ok(goaway) => Inbound::Goaway(goaway.into()),
            Err(err) => Inbound::Fatal(format!("unreadable goaway: {err}")),
        }),
        FrameType::Pong => None,
        other => {
            // Frame types added later (documents, calls) must not break
            // older clients.
            tracing::debug!(frame_type = ?other, "ignoring a frame type this client does not handle");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    //! The frame session against a scripted in-memory transport: the parts
    //! the server never exercises over the WebSocket (CCP-1 pings) and the
    //! header-to-event mapping, without a network.

    use std::time::Duration;

    use serde_json::json;
    use tokio::sync::mpsc;

    use super::*;
    use crate::connection::{ConnectOptions, Connection, Encoding};

    /// Frames the scripted server may queue before the test reads them.
    const SCRIPT_QUEUE_FRAMES: usize = 64;
    /// How long a test waits for the client to do something.
    const STEP_TIMEOUT: Duration = Duration::from_secs(5);

    /// The client end of an in-memory frame pipe.
    struct Pipe {
        to_server: mpsc::Sender<Frame>,
        from_server: mpsc::Receiver<Frame>,
    }

    impl FrameTransport for Pipe {
        async fn send(&mut self, frames: Bytes) -> Result<(), String> {
            let mut rest = &frames[..];
            while !rest.is_empty() {
                let Ok(conclave_protocol::Decoded::Frame { frame, consumed }) =
                    conclave_protocol::decode_frame(rest)
                else {
                    return Err("the client sent a broken frame".to_owned());
                };
                rest = rest.get(consumed..).unwrap_or_default();
                self.to_server
                    .send(frame)
                    .await
                    .map_err(|_| "the server is gone".to_owned())?;
            }
            Ok(())
        }

        async fn recv(&mut self) -> Result<Vec<Frame>, CloseReason> {
            match self.from_server.recv().await {
                Some(frame) => Ok(vec![frame]),
                None => Err(CloseReason::Disconnected("pipe closed".to_owned())),
            }
        }

        async fn keepalive(&mut self) -> Result<(), String> {
            Ok(())
        }

        async fn close(&mut self) {}
    }

    struct Server {
        to_client: mpsc::Sender<Frame>,
        from_client: mpsc::Receiver<Frame>,
    }

    impl Server {
        async fn push(&self, frame: Frame) {
            assert!(self.to_client.send(frame).await.is_ok(), "client gone");
        }

        async fn next(&mut self) -> Frame {
            let frame = tokio::time::timeout(STEP_TIMEOUT, self.from_client.recv()).await;
            frame.ok().flatten().expect("the client sends a frame")
        }
    }

    fn pair() -> (Connection, Server) {
        let (to_server, from_client) = mpsc::channel(SCRIPT_QUEUE_FRAMES);
        let (to_client, from_server) = mpsc::channel(SCRIPT_QUEUE_FRAMES);
        let pipe = Pipe {
            to_server,
            from_server,
        };
        let connection = Connection::start(
            Framed::new(pipe),
            Encoding::Binary,
            ConnectOptions::default(),
        );
        (
            connection,
            Server {
                to_client,
                from_client,
            },
        )
    }

    fn json_frame(frame_type: FrameType, channel: u64, sequence: u64, value: &Value) -> Frame {
        Frame::json(frame_type, channel, sequence, value).expect("an object fits in a frame")
    }

    #[tokio::test]
    async fn calls_are_matched_to_responses_by_sequence() {
        let (connection, mut server) = pair();
        let (first, second, ()) = tokio::join!(
            connection.call_raw("a/first", json!({"n": 1})),
            connection.call_raw("a/second", json!({})),
            async {
                let one = server.next().await;
                let two = server.next().await;
                for request in [&one, &two] {
                    assert_eq!(request.frame_type, FrameType::RpcRequest);
                    assert_eq!(request.channel_id, 0);
                }
                let route = |frame: &Frame| {
                    parse_json_payload::<RequestPayload>(frame)
                        .map(|r| r.route)
                        .unwrap_or_default()
                };
                // Answer in reverse order: only the sequence ties them up.
                for request in [&two, &one] {
                    let body = json!({"ok": true, "body": {"route": route(request)}});
                    server
                        .push(json_frame(
                            FrameType::RpcResponse,
                            0,
                            request.sequence,
                            &body,
                        ))
                        .await;
                }
            }
        );
        assert_eq!(first, Ok(json!({"route": "a/first"})));
        assert_eq!(second, Ok(json!({"route": "a/second"})));
    }

    #[tokio::test]
    async fn error_responses_become_api_errors() {
        let (connection, mut server) = pair();
        let (result, ()) = tokio::join!(connection.call_raw("x", json!({})), async {
            let request = server.next().await;
            let body = json!({"ok": false, "error": {"code": "rate_limited", "message": "slow down", "retry_after_ms": 250}});
            server
                .push(json_frame(
                    FrameType::RpcResponse,
                    0,
                    request.sequence,
                    &body,
                ))
                .await;
        });
        let err = result.expect_err("the call fails");
        assert_eq!(err.code(), Some("rate_limited"));
        assert_eq!(err.retry_after_ms(), Some(250));
    }

    #[tokio::test]
    async fn pings_are_answered_with_the_same_sequence_and_payload() {
        let (_connection, mut server) = pair();
        server
            .push(Frame::new(
                FrameType::Ping,
                0,
                42,
                Bytes::from_static(b"nonce"),
            ))
            .await;
        let pong = server.next().await;
        assert_eq!(
            pong,
            Frame::new(FrameType::Pong, 0, 42, Bytes::from_static(b"nonce"))
        );
    }

    #[tokio::test]
    async fn event_headers_become_channel_and_pts() {
        let (mut connection, server) = pair();
        let body = json!({"event": "message/new", "body": {"text": "hi"}});
        server
            .push(json_frame(FrameType::Event, 9, 1234, &body))
            .await;
        let plain = json!({"event": "user/updated", "body": {}});
        server
            .push(json_frame(FrameType::Event, 0, 0, &plain))
            .await;

        let event = connection.next_event_timeout(STEP_TIMEOUT).await;
        let event = event.ok().flatten().expect("an event");
        assert_eq!(event.name, "message/new");
        assert_eq!(event.channel_id, Some(ChannelId::new(9)));
        assert_eq!(event.pts, Some(1234));
        assert_eq!(event.body(), json!({"text": "hi"}));

        let event = connection.next_event_timeout(STEP_TIMEOUT).await;
        let event = event.ok().flatten().expect("an event");
        assert_eq!(event.name, "user/updated");
        assert_eq!((event.channel_id, event.pts), (None, None));
    }

    #[tokio::test]
    async fn a_goaway_fails_pending_calls_and_ends_the_events() {
        let (mut connection, mut server) = pair();
        let (result, ()) = tokio::join!(connection.call_raw("slow", json!({})), async {
            let _request = server.next().await;
            let kicked = json!({"event": "session/kicked", "body": {"code": "session_kicked"}});
            server
                .push(json_frame(FrameType::Event, 0, 0, &kicked))
                .await;
            let goaway = json!({"code": "session_kicked", "message": "bye"});
            server
                .push(json_frame(FrameType::Goaway, 0, 0, &goaway))
                .await;
        });
        let err = result.expect_err("the pending call fails");
        assert!(matches!(err, ClientError::Closed(Some(_))), "{err:?}");
        assert_eq!(err.code(), Some("session_kicked"));

        let reason = tokio::time::timeout(STEP_TIMEOUT, connection.closed()).await;
        assert_eq!(
            reason.ok().as_ref().and_then(|r| r.code()),
            Some("session_kicked")
        );
        assert_eq!(
            connection.goaway().map(|g| g.message),
            Some("bye".to_owned())
        );
        let kicked = connection.next_event_timeout(STEP_TIMEOUT).await;
        assert_eq!(
            kicked.ok().flatten().map(|e| e.name),
            Some("session/kicked".to_owned())
        );
        assert_eq!(connection.next_event_timeout(STEP_TIMEOUT).await, Ok(None));
        let late = connection.call_raw("late", json!({})).await;
        assert_eq!(
            late.err().as_ref().and_then(ClientError::code),
            Some("session_kicked")
        );
    }

    #[tokio::test]
    async fn unread_events_stop_reading_but_lose_nothing() {
        let (mut connection, mut server) = pair();
        // More than the event queue and the script's pipe hold together, so
        // the script can only finish if the session keeps reading.
        let total = crate::EVENT_QUEUE_CAPACITY + 2 * SCRIPT_QUEUE_FRAMES;
        let pushing = tokio::spawn(async move {
            for pts in 1..=total {
                let body = json!({"event": "n", "body": {}});
                let pts = u64::try_from(pts).unwrap_or(u64::MAX);
                server
                    .push(json_frame(FrameType::Event, 1, pts, &body))
                    .await;
            }
            server
        });
        // Nobody reads events for a while: the session stops reading rather
        // than buffer, so the script stalls.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!pushing.is_finished(), "the session kept reading");
        // Requests still go out while reading is paused (their responses
        // wait behind the unread events).
        let call = connection.call_raw("sent/while/paused", json!({}));
        let unanswered = tokio::time::timeout(Duration::from_millis(100), call).await;
        assert!(unanswered.is_err(), "{unanswered:?}");

        for expected in 1..=total {
            let event = connection.next_event_timeout(STEP_TIMEOUT).await;
            let pts = event.ok().flatten().and_then(|e| e.pts);
            assert_eq!(pts, u64::try_from(expected).ok());
        }
        server = pushing.await.expect("the script finishes");
        let request = server.next().await;
        assert_eq!(request.frame_type, FrameType::RpcRequest);
        let route = parse_json_payload::<RequestPayload>(&request).map(|r| r.route);
        assert_eq!(route.ok().as_deref(), Some("sent/while/paused"));
    }

    #[tokio::test]
    async fn dropping_the_connection_ends_its_task() {
        let (connection, mut server) = pair();
        drop(connection);
        // The task owned the only sender to the script: its end shows the
        // task is gone.
        let ended = tokio::time::timeout(STEP_TIMEOUT, server.from_client.recv()).await;
        assert_eq!(ended, Ok(None));
    }
}
