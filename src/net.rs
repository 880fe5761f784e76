//! UDP sockets for QUIC endpoints, the relay's and the client library's alike: bound with the
//! large kernel buffers a busy endpoint needs (the kernel's 208 KiB default drops packets once a
//! few hundred connections share a socket), optionally sharing a port.

use std::net::SocketAddr;

/// A UDP socket bound to `addr` with (up to) the given buffer sizes; the relay's endpoints and
/// shared client endpoints use it. With `reuse_port`, several sockets can share one port
/// (`SO_REUSEPORT`, Unix only).
pub fn udp_socket(
    addr: SocketAddr,
    recv_buffer: usize,
    send_buffer: usize,
    reuse_port: bool,
) -> std::io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    #[cfg(unix)]
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    #[cfg(not(unix))]
    let _ = reuse_port;
    // The kernel's default UDP buffers (208 KiB) drop packets at a few hundred busy connections:
    // every connection's acknowledgements and requests land in one socket. Ask for more; the
    // kernel caps SO_RCVBUF at net.core.rmem_max, so try SO_RCVBUFFORCE (root or CAP_NET_ADMIN)
    // when the cap bites, and say so when neither works.
    set_buffer(&socket, recv_buffer, BufferKind::Recv);
    set_buffer(&socket, send_buffer, BufferKind::Send);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

#[derive(Clone, Copy)]
enum BufferKind {
    Recv,
    Send,
}

fn set_buffer(socket: &socket2::Socket, want: usize, kind: BufferKind) {
    let (set, get, force, name) = match kind {
        BufferKind::Recv => (
            socket2::Socket::set_recv_buffer_size
                as fn(&socket2::Socket, usize) -> std::io::Result<()>,
            socket2::Socket::recv_buffer_size as fn(&socket2::Socket) -> std::io::Result<usize>,
            force_opt(libc_opt::SO_RCVBUFFORCE),
            "receive",
        ),
        BufferKind::Send => (
            socket2::Socket::set_send_buffer_size
                as fn(&socket2::Socket, usize) -> std::io::Result<()>,
            socket2::Socket::send_buffer_size as fn(&socket2::Socket) -> std::io::Result<usize>,
            force_opt(libc_opt::SO_SNDBUFFORCE),
            "send",
        ),
    };
    let _ = set(socket, want);
    // Linux reports twice the usable size.
    if get(socket).unwrap_or(0) >= want {
        return;
    }
    if let Some(opt) = force {
        force_buffer(socket, opt, want);
    }
    let got = get(socket).unwrap_or(0);
    if got < want {
        tracing::warn!(
            wanted = want,
            got,
            "UDP {name} buffer is smaller than configured; raise net.core.{}mem_max",
            if matches!(kind, BufferKind::Recv) {
                "r"
            } else {
                "w"
            }
        );
    }
}

#[cfg(target_os = "linux")]
mod libc_opt {
    pub const SO_RCVBUFFORCE: i32 = libc::SO_RCVBUFFORCE;
    pub const SO_SNDBUFFORCE: i32 = libc::SO_SNDBUFFORCE;
}
#[cfg(not(target_os = "linux"))]
mod libc_opt {
    pub const SO_RCVBUFFORCE: i32 = -1;
    pub const SO_SNDBUFFORCE: i32 = -1;
}

fn force_opt(opt: i32) -> Option<i32> {
    (opt >= 0).then_some(opt)
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn force_buffer(socket: &socket2::Socket, opt: i32, want: usize) {
    use std::os::fd::AsRawFd;
    let val = i32::try_from(want).unwrap_or(i32::MAX);
    // SAFETY: a plain setsockopt on a socket we own, with a pointer to a live i32 and its size.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&val as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn force_buffer(_: &socket2::Socket, _: i32, _: usize) {}
