//! The JSON encoding: envelopes in WebSocket text messages.

use conclave_core::ChannelId;
use conclave_core::limits::JSON_BODY_MAX_BYTES;
use conclave_protocol::api::{
    ErrorBody, EventPayload, GoawayPayload, JsonRequest, ResponsePayload,
};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Message;

use super::ws::{self, Data, WsStream};
use crate::connection::Event;
use crate::envelope;
use crate::error::{ClientError, CloseReason};
use crate::session::{Inbound, Wire};

pub(crate) struct JsonWire {
    socket: WsStream,
}

impl JsonWire {
    pub(crate) fn new(socket: WsStream) -> Self {
        Self { socket }
    }
}

impl Wire for JsonWire {
    type Out = Message;

    fn encode_request(&self, id: u64, route: &str, body: Value) -> Result<Message, ClientError> {
        let request = JsonRequest {
            id,
            route: route.to_owned(),
            body,
        };
        let text = serde_json::to_string(&request).map_err(|err| {
            ClientError::Protocol(format!("cannot encode a `{route}` request: {err}"))
        })?;
        // The server closes the whole connection over an oversized message;
        // refusing here costs only this call.
        if text.len() > JSON_BODY_MAX_BYTES {
            return Err(ClientError::Protocol(format!(
                "the `{route}` request is {} bytes; the server accepts at most {JSON_BODY_MAX_BYTES}",
                text.len()
            )));
        }
        Ok(Message::text(text))
    }

    async fn send(&mut self, out: Message) -> Result<(), String> {
        ws::send(&mut self.socket, out).await
    }

    async fn recv(&mut self) -> Result<Vec<Inbound<Message>>, CloseReason> {
        Ok(match ws::next_data(&mut self.socket).await? {
            None => Vec::new(),
            Some(Data::Text(text)) => interpret(text.as_str()).into_iter().collect(),
            Some(Data::Binary(bytes)) => {
                // Only a binary request gets a binary answer, and we send none.
                tracing::warn!(
                    len = bytes.len(),
                    "ignoring a binary message on a JSON-mode connection"
                );
                Vec::new()
            }
        })
    }

    async fn keepalive(&mut self) -> Result<(), String> {
        ws::keepalive(&mut self.socket).await
    }

    async fn close(&mut self) {
        ws::close(&mut self.socket).await;
    }
}

/// What a text message from the server means: a goaway
/// (`{"goaway":{..}}`), an event (`{"event":..}`) or a response
/// (`{"id":..,"ok":..}`). Read in one pass; bodies stay encoded until the
/// caller parses them into their types.
fn interpret(text: &str) -> Option<Inbound<Message>> {
    /// Every field any of the three kinds has.
    #[derive(serde::Deserialize)]
    struct Text {
        goaway: Option<Box<RawValue>>,
        event: Option<String>,
        channel_id: Option<ChannelId>,
        pts: Option<u64>,
        id: Option<u64>,
        ok: Option<bool>,
        body: Option<Box<RawValue>>,
        error: Option<ErrorBody>,
    }
    let message: Text = match serde_json::from_str(text) {
        Ok(message) => message,
        Err(err) => {
            tracing::warn!(error = %err, "ignoring a text message that is neither response, event nor goaway");
            return None;
        }
    };
    if let Some(goaway) = message.goaway {
        return Some(match serde_json::from_str::<GoawayPayload>(goaway.get()) {
            Ok(goaway) => Inbound::Goaway(goaway.into()),
            Err(err) => Inbound::Fatal(format!("unreadable goaway: {err}")),
        });
    }
    if let Some(name) = message.event {
        let Some(body) = message.body else {
            tracing::warn!(event = %name, "ignoring an event without a body");
            return None;
        };
        return Some(Inbound::Event(Event::from_payload(EventPayload {
            event: name,
            channel_id: message.channel_id,
            pts: message.pts,
            body,
        })));
    }
    let Some(ok) = message.ok else {
        tracing::warn!("ignoring a text message that is neither response, event nor goaway");
        return None;
    };
    let Some(id) = message.id else {
        // The server could not read the id of one of our requests; we never
        // send such requests, and there is no call to hand the error to.
        tracing::warn!(error = ?message.error, "the server answered a request without an id");
        return None;
    };
    let response = ResponsePayload {
        id: Some(id),
        ok,
        body: message.body,
        error: message.error,
    };
    Some(Inbound::Response {
        id,
        result: envelope::response_result(response),
    })
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn text_messages_are_told_apart() {
        let response = interpret(r#"{"id":3,"ok":true,"body":{"x":1}}"#);
        assert!(
            matches!(response, Some(Inbound::Response { id: 3, result: Ok(ref body) }) if body.get() == r#"{"x":1}"#)
        );
        let refused =
            interpret(r#"{"id":4,"ok":false,"error":{"code":"bad_request","message":"m"}}"#);
        assert!(
            matches!(refused, Some(Inbound::Response { id: 4, result: Err(ref err) }) if err.code() == Some("bad_request"))
        );
        let event = interpret(r#"{"event":"user/updated","channel_id":"7","pts":9,"body":{}}"#);
        assert!(
            matches!(event, Some(Inbound::Event(ref e)) if e.name == "user/updated" && e.pts == Some(9) && e.channel_id.map(|c| c.get()) == Some(7))
        );
        let goaway = interpret(r#"{"goaway":{"code":"idle_timeout","message":"bye"}}"#);
        assert!(matches!(goaway, Some(Inbound::Goaway(ref g)) if g.code == "idle_timeout"));
        assert!(interpret("not json").is_none());
        assert!(
            interpret(r#"{"ok":false,"error":{"code":"invalid_json","message":"m"}}"#).is_none()
        );
    }

    #[test]
    fn bodies_stay_as_sent_and_a_broken_goaway_ends_the_session() {
        let event = interpret(r#"{"event":"message/new","body":{"text":"h\u00e9","n":[1, 2]}}"#);
        let Some(Inbound::Event(event)) = event else {
            panic!("not an event");
        };
        assert_eq!(event.raw_body.get(), r#"{"text":"h\u00e9","n":[1, 2]}"#);
        assert_eq!(event.body()["text"], "h\u{e9}");
        #[derive(serde::Deserialize)]
        struct Text<'a> {
            n: Vec<u8>,
            #[serde(borrow)]
            text: std::borrow::Cow<'a, str>,
        }
        let text: Text<'_> = event.body_as().unwrap();
        assert_eq!((text.n, text.text.as_ref()), (vec![1, 2], "h\u{e9}"));
        assert!(event.body_as::<Vec<u8>>().is_err(), "not a list");

        let goaway = interpret(r#"{"goaway":{"code":7}}"#);
        assert!(matches!(goaway, Some(Inbound::Fatal(_))), "not fatal");
        assert!(
            interpret(r#"{"event":"user/updated"}"#).is_none(),
            "no body"
        );
    }
}
