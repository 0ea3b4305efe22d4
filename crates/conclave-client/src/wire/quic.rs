//! QUIC (docs/PROTOCOL.md section 13): TLS 1.3 with ALPN `conclave/1` and a
//! pinned certificate, one bidirectional stream of CCP-1 frames, `Auth` with
//! the access token first.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use conclave_protocol::api::{AckPayload, AuthPayload};
use conclave_protocol::{Frame, FrameDecoder, FrameType, PROTOCOL_VERSION};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest as _, Sha256};

use super::framed::FrameTransport;
use super::noise::ack_or_refusal;
use crate::error::{ClientError, CloseReason, Goaway};

/// The application protocol both sides must name in the TLS handshake.
pub(crate) const ALPN: &[u8] = b"conclave/1";

/// Bytes read from the stream per call: enough for throughput, small
/// enough to keep the per-connection buffer modest. Never more than the
/// frame decoder has room for.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Length of a SHA-256 digest.
const SHA256_LEN_BYTES: usize = 32;

/// The application error code of a QUIC close this side initiates.
const CLOSE_CODE_NORMAL: u32 = 0;

/// Parses a pinned certificate fingerprint: 64 hex digits, either case
/// (colons, as some tools print them, are accepted too).
pub(crate) fn parse_fingerprint(text: &str) -> Result<[u8; SHA256_LEN_BYTES], ClientError> {
    let digits: String = text.trim().chars().filter(|c| *c != ':').collect();
    hex::decode(&digits)
        .ok()
        .and_then(|bytes| <[u8; SHA256_LEN_BYTES]>::try_from(bytes).ok())
        .ok_or_else(|| {
            ClientError::Transport(format!(
                "`{text}` is not a SHA-256 certificate fingerprint (64 hex digits)"
            ))
        })
}

/// Connects, authenticates with `token` and waits for the server's `Ack`.
/// The caller bounds the whole of it with the connect timeout.
pub(crate) async fn connect(
    addr: SocketAddr,
    token: &str,
    cert_sha256: [u8; SHA256_LEN_BYTES],
    idle_timeout: Duration,
) -> Result<(QuicFrames, AckPayload), ClientError> {
    let config = client_config(cert_sha256, idle_timeout)?;
    let local: SocketAddr = if addr.is_ipv6() {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let endpoint = quinn::Endpoint::client(local)
        .map_err(|err| ClientError::Transport(format!("opening a UDP socket: {err}")))?;
    // The name is only sent as SNI; the certificate is pinned, not matched
    // against it.
    let server_name = addr.ip().to_string();
    let connection = endpoint
        .connect_with(config, addr, &server_name)
        .map_err(|err| ClientError::Transport(format!("connecting to {addr}: {err}")))?
        .await
        .map_err(|err| ClientError::Transport(format!("QUIC handshake with {addr}: {err}")))?;
    let (send, recv) = connection
        .open_bi()
        .await
        .map_err(|err| ClientError::Transport(format!("opening the QUIC stream: {err}")))?;
    let mut frames = QuicFrames {
        endpoint,
        connection,
        send,
        recv,
        decoder: FrameDecoder::new(),
        buffer: vec![0_u8; READ_CHUNK_BYTES].into_boxed_slice(),
        early: Vec::new(),
        ping_sequence: 0,
    };

    match frames.authenticate(token).await {
        Ok(ack) => Ok((frames, ack)),
        Err(err) => {
            // Tell the server at once rather than leave it to time out.
            frames
                .connection
                .close(quinn::VarInt::from_u32(CLOSE_CODE_NORMAL), b"refused");
            Err(err)
        }
    }
}

fn client_config(
    cert_sha256: [u8; SHA256_LEN_BYTES],
    idle_timeout: Duration,
) -> Result<quinn::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedCertificate {
        sha256: cert_sha256,
        algorithms: provider.signature_verification_algorithms,
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|err| ClientError::Transport(format!("TLS 1.3 setup: {err}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|err| ClientError::Transport(format!("QUIC TLS setup: {err}")))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    // The server's pings keep a healthy path busy; a silent one is dead.
    let idle = quinn::IdleTimeout::try_from(idle_timeout)
        .map_err(|err| ClientError::Transport(format!("QUIC idle timeout: {err}")))?;
    transport.max_idle_timeout(Some(idle));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Accepts exactly one certificate, named by the SHA-256 of its DER: the
/// server's self-signed certificate is published (and pinned) by its
/// fingerprint, so neither a CA, nor the server name, nor the validity
/// period is consulted. The handshake signature is still verified, so the
/// server must hold the certificate's private key.
#[derive(Debug)]
struct PinnedCertificate {
    sha256: [u8; SHA256_LEN_BYTES],
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let digest = Sha256::digest(end_entity.as_ref());
        if digest.as_slice() == self.sha256.as_slice() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(NotPinned {
                    presented: hex::encode(digest),
                }))),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // QUIC is TLS 1.3 only, and so is this client.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Why a certificate was refused: it is not the pinned one.
struct NotPinned {
    presented: String,
}

/// rustls shows the cause of a certificate error with `Debug`; make that
/// the readable sentence.
impl std::fmt::Debug for NotPinned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::fmt::Display for NotPinned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the server's certificate (SHA-256 {}) is not the pinned one",
            self.presented
        )
    }
}

impl std::error::Error for NotPinned {}

/// CCP-1 frames on the session's QUIC stream.
pub(crate) struct QuicFrames {
    /// Kept so the endpoint outlives the connection and can drain it on
    /// close.
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
    buffer: Box<[u8]>,
    /// Frames that arrived behind the `Ack` while connecting; handed out by
    /// the first `recv`.
    early: Vec<Frame>,
    ping_sequence: u64,
}

enum ReadFailure {
    /// The server finished its side of the stream.
    Finished,
    Stream(quinn::ReadError),
    Codec(conclave_protocol::CodecError),
}

impl QuicFrames {
    /// Sends `Auth` with the token and waits for the server's first frame,
    /// which must be `Ack` (or a refusal); frames behind it are kept for the
    /// session.
    async fn authenticate(&mut self, token: &str) -> Result<AckPayload, ClientError> {
        let auth = Frame::json(
            FrameType::Auth,
            0,
            0,
            &AuthPayload {
                token: token.to_owned(),
                supported_versions: vec![PROTOCOL_VERSION],
                hold_events: false,
            },
        )
        .and_then(|frame| frame.encode())
        .map_err(|err| ClientError::Protocol(format!("cannot frame the Auth: {err}")))?;
        self.send
            .write_all(&auth)
            .await
            .map_err(|err| ClientError::Transport(format!("sending the Auth: {err}")))?;

        let mut received = Vec::new();
        while received.is_empty() {
            received = self.read_some().await.map_err(|why| match why {
                ReadFailure::Finished => ClientError::Transport(
                    "the server closed the stream before acknowledging the session".to_owned(),
                ),
                ReadFailure::Stream(err) => {
                    ClientError::Transport(format!("reading the server's Ack: {err}"))
                }
                ReadFailure::Codec(err) => ClientError::Protocol(format!(
                    "the server's stream is malformed ({}): {err}",
                    err.code()
                )),
            })?;
        }
        let mut received = received.into_iter();
        let first = received
            .next()
            .ok_or_else(|| ClientError::Protocol("no frame arrived before the Ack".to_owned()))?;
        let ack = ack_or_refusal(&first)?;
        self.early = received.collect();
        Ok(ack)
    }

    /// One stream read, framed (possibly into no frame yet).
    ///
    /// Cancel-safe: quinn's `read` is, and what it returns is pushed into
    /// the decoder before anything else can happen.
    async fn read_some(&mut self) -> Result<Vec<Frame>, ReadFailure> {
        // Never read more than the decoder may buffer (one maximal frame).
        // Every earlier read was drained, so the room is never zero unless
        // the decoder is poisoned, which it reports below.
        let room = self
            .decoder
            .remaining_capacity()
            .min(self.buffer.len())
            .max(1);
        let window = self.buffer.get_mut(..room).unwrap_or_default();
        let read = match self.recv.read(window).await {
            Ok(Some(read)) => read,
            Ok(None) => return Err(ReadFailure::Finished),
            Err(err) => return Err(ReadFailure::Stream(err)),
        };
        let data = self.buffer.get(..read).unwrap_or_default();
        self.decoder.push(data).map_err(ReadFailure::Codec)?;
        let mut frames = Vec::new();
        while let Some(frame) = self.decoder.next_frame().map_err(ReadFailure::Codec)? {
            frames.push(frame);
        }
        Ok(frames)
    }
}

/// A connection the server closed with an application error code and a
/// reason: the reason is the error code (e.g. `auth_timeout`), the way the
/// WebSocket's close reason is.
fn connection_lost(err: &quinn::ReadError) -> CloseReason {
    if let quinn::ReadError::ConnectionLost(quinn::ConnectionError::ApplicationClosed(close)) = err
    {
        let code = String::from_utf8_lossy(&close.reason);
        let is_code = !code.is_empty()
            && code
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit());
        if close.error_code != quinn::VarInt::from_u32(CLOSE_CODE_NORMAL) && is_code {
            return CloseReason::Goaway(Goaway {
                code: code.into_owned(),
                message: String::new(),
            });
        }
    }
    CloseReason::Disconnected(format!("reading the QUIC stream: {err}"))
}

impl FrameTransport for QuicFrames {
    async fn send(&mut self, frames: Bytes) -> Result<(), String> {
        self.send
            .write_all(&frames)
            .await
            .map_err(|err| format!("writing to the QUIC stream: {err}"))
    }

    async fn recv(&mut self) -> Result<Vec<Frame>, CloseReason> {
        if !self.early.is_empty() {
            return Ok(std::mem::take(&mut self.early));
        }
        self.read_some().await.map_err(|why| match why {
            ReadFailure::Finished => {
                CloseReason::Disconnected("the server finished the stream".to_owned())
            }
            ReadFailure::Stream(err) => connection_lost(&err),
            ReadFailure::Codec(err) => CloseReason::Disconnected(format!(
                "the server's stream is malformed ({}): {err}",
                err.code()
            )),
        })
    }

    async fn keepalive(&mut self) -> Result<(), String> {
        self.ping_sequence = self.ping_sequence.wrapping_add(1);
        let ping = Frame::new(FrameType::Ping, 0, self.ping_sequence, Bytes::new())
            .encode()
            .map_err(|err| format!("cannot encode a ping: {err}"))?;
        self.send(ping).await
    }

    async fn close(&mut self) {
        let _ = self.send.finish();
        self.connection
            .close(quinn::VarInt::from_u32(CLOSE_CODE_NORMAL), b"bye");
        // Lets the close reach the server; the session bounds this with its
        // close timeout.
        self.endpoint.wait_idle().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_64_hex_digits() {
        let hex64 = "ab".repeat(32);
        assert_eq!(parse_fingerprint(&hex64).ok(), Some([0xab; 32]));
        assert_eq!(
            parse_fingerprint(&hex64.to_uppercase()).ok(),
            Some([0xab; 32])
        );
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_fingerprint(&colons).ok(), Some([0xab; 32]));
        for bad in ["", "ab", &"ab".repeat(33), &"zz".repeat(32)] {
            assert!(parse_fingerprint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_the_pinned_certificate_is_accepted() {
        let provider = rustls::crypto::ring::default_provider();
        let cert = CertificateDer::from(vec![1_u8, 2, 3]);
        let pinned = |sha256| PinnedCertificate {
            sha256,
            algorithms: provider.signature_verification_algorithms,
        };
        let digest: [u8; 32] = Sha256::digest([1_u8, 2, 3]).into();
        let name = ServerName::try_from("127.0.0.1").expect("an IP is a server name");
        let now = UnixTime::now();
        assert!(
            pinned(digest)
                .verify_server_cert(&cert, &[], &name, &[], now)
                .is_ok()
        );
        let err = pinned([0; 32])
            .verify_server_cert(&cert, &[], &name, &[], now)
            .expect_err("another certificate");
        assert!(err.to_string().contains(&hex::encode(digest)), "{err}");
        assert!(!pinned(digest).supported_verify_schemes().is_empty());
    }
}
