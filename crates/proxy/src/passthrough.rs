//! A captured connection forwarded, untouched, to the destination the application asked for: what
//! the sidecar does with destinations that are not mesh services (Istio's PassthroughCluster).
//!
//! The destination is read from the connection (`SO_ORIGINAL_DST`, set by the `REDIRECT` of
//! [`crate::capture`]), and the upstream connection carries the proxy's socket mark, so that
//! capture lets it out instead of sending it back to the proxy.

use nix::sys::socket::{getsockopt, setsockopt, sockopt};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Where a redirected connection was going. Fails for a connection that was not redirected.
pub fn original_destination(connection: &TcpStream) -> io::Result<SocketAddrV4> {
    let address = getsockopt(connection, sockopt::OriginalDst).map_err(|errno| {
        io::Error::new(
            io::Error::from(errno).kind(),
            format!("no original destination ({errno}): the connection was not redirected by the capture rules"),
        )
    })?;
    Ok(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(address.sin_addr.s_addr)),
        u16::from_be(address.sin_port),
    ))
}

/// A TCP connection to `destination` whose packets carry `mark`, so that capture passes them
/// (0: no mark, for proxies outside a captured pod).
pub async fn connect_marked(destination: SocketAddr, mark: u32) -> io::Result<TcpStream> {
    connect_marked_from(destination, None, mark).await
}

/// [`connect_marked`] from a chosen local address (port picked by the kernel).
pub async fn connect_marked_from(
    destination: SocketAddr,
    source: Option<IpAddr>,
    mark: u32,
) -> io::Result<TcpStream> {
    let socket = match destination {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if mark != 0 {
        setsockopt(&socket, sockopt::Mark, &mark).map_err(|errno| {
            io::Error::new(
                io::Error::from(errno).kind(),
                format!("cannot set socket mark {mark} ({errno}): the proxy needs CAP_NET_ADMIN"),
            )
        })?;
    }
    if let Some(source) = source {
        socket.bind(SocketAddr::new(source, 0)).map_err(|error| {
            io::Error::new(
                error.kind(),
                format!("cannot bind the connection to {destination} to {source}: {error}"),
            )
        })?;
    }
    socket.connect(destination).await
}

/// Forwards one captured connection to its original destination until both sides are done;
/// the bytes sent each way.
pub async fn forward(mut downstream: TcpStream, mark: u32) -> io::Result<(u64, u64)> {
    let destination = original_destination(&downstream)?;
    let mut upstream = connect_marked(destination.into(), mark).await?;
    tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await
}

/// Accepts captured connections on `listener` and forwards each to its original destination.
pub async fn serve(listener: TcpListener, mark: u32) -> io::Result<()> {
    loop {
        let (connection, peer) = listener.accept().await?;
        tokio::spawn(async move {
            if let Err(error) = forward(connection, mark).await {
                tracing::debug!(%peer, %error, "passthrough connection ended with an error");
            }
        });
    }
}
