//! Wire formats and the sockets under them.
//!
//! - [`json`]: JSON envelopes in WebSocket text messages.
//! - [`framed`]: CCP-1 frames over any [`framed::FrameTransport`]; the
//!   WebSocket binary mode is one such transport ([`ws::WsFrames`]), TCP
//!   with a Noise tunnel ([`noise::NoiseFrames`]) and a QUIC stream
//!   ([`quic::QuicFrames`]) are the others, sharing all of the RPC and
//!   event handling.

pub(crate) mod framed;
pub(crate) mod json;
pub(crate) mod noise;
pub(crate) mod quic;
pub(crate) mod ws;

use std::net::{IpAddr, SocketAddr};

use tokio::net::{TcpSocket, TcpStream};

/// Connects to `addr`, from `local` (with a port the system picks) when
/// given, and turns Nagle's algorithm off: small request/response frames
/// would only wait for it.
pub(crate) async fn tcp_connect(
    addr: SocketAddr,
    local: Option<IpAddr>,
) -> std::io::Result<TcpStream> {
    let stream = match local {
        None => TcpStream::connect(addr).await?,
        Some(ip) => {
            let socket = if ip.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(addr).await?
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connects_from_the_chosen_local_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a listener");
        let addr = listener.local_addr().expect("its address");
        let source: IpAddr = [127, 0, 0, 3].into();
        let (client, accepted) = tokio::join!(tcp_connect(addr, Some(source)), listener.accept());
        let client = client.expect("connects from 127.0.0.3");
        let (_server_side, peer) = accepted.expect("accepts");
        assert_eq!(peer.ip(), source);
        assert_eq!(client.local_addr().expect("bound").ip(), source);
        assert!(client.nodelay().expect("nodelay readable"));

        let (client, accepted) = tokio::join!(tcp_connect(addr, None), listener.accept());
        assert!(client.is_ok() && accepted.is_ok());
    }
}
