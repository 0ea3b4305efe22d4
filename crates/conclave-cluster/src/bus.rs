//! The bus between nodes.
//!
//! Every message is framed as `[node id length: u8][node id][payload]`, so a
//! node recognises (and skips) what it published itself: it has already
//! delivered that to its own sessions.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{BusKind, ClusterError, NodeId};

/// Messages from other nodes buffered for the consumer. When it falls this
/// far behind, the subscriber stops reading (the broker buffers or drops,
/// and sessions catch up by sync).
const INBOUND_CAPACITY: usize = 16_384;

/// How long to wait before reconnecting a lost subscription.
const RECONNECT_DELAY: Duration = Duration::from_millis(500);

/// Sends to every other node.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// `local`, `redis` or `nats`.
    fn kind(&self) -> &'static str;

    /// Whether other nodes may exist (false for the in-process bus).
    fn is_clustered(&self) -> bool;

    /// Publishes `payload` to every other node. Best effort: on failure the
    /// caller logs it; receivers repair order and gaps from the database.
    async fn publish(&self, payload: Bytes) -> Result<(), ClusterError>;
}

/// Connects the chosen bus. Returns it and the stream of payloads other
/// nodes publish, which ends when `stop` is cancelled.
pub async fn connect_bus(
    kind: BusKind,
    url: Option<&str>,
    namespace: &str,
    node: NodeId,
    stop: CancellationToken,
) -> Result<(Arc<dyn Bus>, mpsc::Receiver<Bytes>), ClusterError> {
    let (inbound_tx, inbound) = mpsc::channel(INBOUND_CAPACITY);
    let need_url =
        || url.ok_or_else(|| ClusterError::Invalid("this cluster bus needs a URL".to_owned()));
    let bus: Arc<dyn Bus> = match kind {
        BusKind::Local => {
            // Nothing will ever arrive; keep the sender alive until stop so
            // the consumer does not see a closed stream.
            tokio::spawn(async move {
                stop.cancelled().await;
                drop(inbound_tx);
            });
            Arc::new(LocalBus)
        }
        BusKind::Redis => {
            let bus = RedisBus::connect(need_url()?, namespace, node).await?;
            tokio::spawn(bus.clone().subscribe(inbound_tx, stop));
            bus
        }
        BusKind::Nats => {
            let bus = NatsBus::connect(need_url()?, namespace, node).await?;
            let subscriber = bus
                .client
                .subscribe(bus.subject.clone())
                .await
                .map_err(|err| ClusterError::Nats(err.to_string()))?;
            tokio::spawn(bus.clone().receive(subscriber, inbound_tx, stop));
            bus
        }
    };
    Ok((bus, inbound))
}

fn frame(node: &NodeId, payload: &[u8]) -> Bytes {
    let id = node.as_str().as_bytes();
    let mut out = BytesMut::with_capacity(1 + id.len() + payload.len());
    out.put_u8(id.len() as u8);
    out.put_slice(id);
    out.put_slice(payload);
    out.freeze()
}

/// The payload of a message published by another node; `None` for our own
/// messages and for malformed ones.
fn unframe(node: &NodeId, message: &[u8]) -> Option<Bytes> {
    let (&len, rest) = message.split_first()?;
    let len = usize::from(len);
    if rest.len() < len {
        return None;
    }
    let (sender, payload) = rest.split_at(len);
    if sender == node.as_str().as_bytes() {
        return None;
    }
    Some(Bytes::copy_from_slice(payload))
}

/// One node alone: nothing to tell anyone.
struct LocalBus;

#[async_trait]
impl Bus for LocalBus {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn is_clustered(&self) -> bool {
        false
    }

    async fn publish(&self, _payload: Bytes) -> Result<(), ClusterError> {
        Ok(())
    }
}

/// Redis pub/sub on one channel per namespace.
struct RedisBus {
    client: redis::Client,
    publisher: redis::aio::ConnectionManager,
    channel: String,
    node: NodeId,
}

impl RedisBus {
    async fn connect(url: &str, namespace: &str, node: NodeId) -> Result<Arc<Self>, ClusterError> {
        let client = redis::Client::open(url)?;
        let publisher = client.get_connection_manager().await?;
        Ok(Arc::new(Self {
            client,
            publisher,
            channel: format!("{namespace}:bus"),
            node,
        }))
    }

    /// Reads the subscription, reconnecting when it drops. What is published
    /// while it is down is missed; the sequencer fills a channel's gap from
    /// the database at its next event.
    async fn subscribe(self: Arc<Self>, inbound: mpsc::Sender<Bytes>, stop: CancellationToken) {
        loop {
            let pubsub = async {
                let mut pubsub = self.client.get_async_pubsub().await?;
                pubsub.subscribe(&self.channel).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            let pubsub = tokio::select! {
                () = stop.cancelled() => return,
                pubsub = pubsub => pubsub,
            };
            match pubsub {
                Ok(pubsub) => {
                    let mut messages = pubsub.into_on_message();
                    loop {
                        let message = tokio::select! {
                            () = stop.cancelled() => return,
                            message = messages.next() => message,
                        };
                        let Some(message) = message else { break };
                        if let Some(payload) = unframe(&self.node, message.get_payload_bytes())
                            && inbound.send(payload).await.is_err()
                        {
                            return;
                        }
                    }
                    tracing::warn!("the Redis bus subscription dropped; reconnecting");
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot subscribe to the Redis bus; retrying");
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(RECONNECT_DELAY) => {}
            }
        }
    }
}

#[async_trait]
impl Bus for RedisBus {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn is_clustered(&self) -> bool {
        true
    }

    async fn publish(&self, payload: Bytes) -> Result<(), ClusterError> {
        let mut publisher = self.publisher.clone();
        redis::cmd("PUBLISH")
            .arg(&self.channel)
            .arg(frame(&self.node, &payload).as_ref())
            .query_async::<()>(&mut publisher)
            .await?;
        Ok(())
    }
}

/// NATS core publish/subscribe on one subject per namespace. The client
/// reconnects and resubscribes by itself.
struct NatsBus {
    client: async_nats::Client,
    subject: String,
    node: NodeId,
}

impl NatsBus {
    async fn connect(url: &str, namespace: &str, node: NodeId) -> Result<Arc<Self>, ClusterError> {
        let client = async_nats::connect(url)
            .await
            .map_err(|err| ClusterError::Nats(err.to_string()))?;
        Ok(Arc::new(Self {
            client,
            subject: format!("{namespace}.bus"),
            node,
        }))
    }

    async fn receive(
        self: Arc<Self>,
        mut subscriber: async_nats::Subscriber,
        inbound: mpsc::Sender<Bytes>,
        stop: CancellationToken,
    ) {
        loop {
            let message = tokio::select! {
                () = stop.cancelled() => return,
                message = subscriber.next() => message,
            };
            let Some(message) = message else {
                tracing::warn!("the NATS bus subscription ended");
                return;
            };
            if let Some(payload) = unframe(&self.node, &message.payload)
                && inbound.send(payload).await.is_err()
            {
                return;
            }
        }
    }
}

#[async_trait]
impl Bus for NatsBus {
    fn kind(&self) -> &'static str {
        "nats"
    }

    fn is_clustered(&self) -> bool {
        true
    }

    async fn publish(&self, payload: Bytes) -> Result<(), ClusterError> {
        self.client
            .publish(self.subject.clone(), frame(&self.node, &payload))
            .await
            .map_err(|err| ClusterError::Nats(err.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_own_messages_are_skipped() {
        let me = NodeId::new("aaaa");
        let other = NodeId::new("bbbb");
        let framed = frame(&other, b"hello");
        assert_eq!(unframe(&me, &framed).as_deref(), Some(&b"hello"[..]));
        assert_eq!(unframe(&other, &framed), None);
        assert_eq!(unframe(&me, &[]), None);
        assert_eq!(unframe(&me, &[9, b'x']), None, "truncated sender");
    }
}
