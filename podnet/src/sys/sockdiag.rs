//! Sockets of the calling thread's network namespace through netlink `sock_diag`
//! (`NETLINK_SOCK_DIAG`): listing the IPv4 or IPv6 TCP and UDP sockets that have a peer
//! (`SOCK_DIAG_BY_FAMILY` dump) and destroying one (`SOCK_DESTROY`, what `ss -K` does).
//!
//! Destroying a socket needs a kernel built with `CONFIG_INET_DIAG_DESTROY` and
//! `CAP_NET_ADMIN` in the namespace's user namespace. The kernel aborts it: a TCP socket sends
//! a RST to its peer and its owner's next (or pending) call fails with `ECONNABORTED`; a UDP
//! socket is disconnected and its owner's next call fails likewise, so a client that reconnects
//! gets a new destination.
//!
//! Requests and answers are built and read as bytes in the kernel's layouts
//! (`linux/netlink.h`, `linux/inet_diag.h`), so no struct is transmuted. A netlink socket
//! acts in the namespace it was created in: open [`SockDiag`] on a thread inside the wanted
//! namespace (see [`crate::sys::netns::Netns::run`]).
//!
//! A leaf: it uses nothing else of podnet.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

/// `NETLINK_SOCK_DIAG` (`linux/netlink.h`).
const NETLINK_SOCK_DIAG: libc::c_int = 4;
/// `SOCK_DIAG_BY_FAMILY` and `SOCK_DESTROY` (`linux/sock_diag.h`).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
/// `NLMSG_ERROR` and `NLMSG_DONE` (`linux/netlink.h`).
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// `nlmsghdr` flags.
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
/// `struct nlmsghdr`.
const NLMSG_HDR_LEN: usize = 16;
/// `struct inet_diag_sockid`: sport, dport (big-endian), src and dst (16 bytes each), ifindex,
/// cookie (two host-order `u32`, low half first).
const SOCKID_LEN: usize = 48;
const SOCKID_SRC_OFF: usize = 4;
const SOCKID_DST_OFF: usize = 20;
const SOCKID_COOKIE_OFF: usize = 40;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, sockid.
const REQ_LEN: usize = 8 + SOCKID_LEN;
/// `struct inet_diag_msg`: family, state, timer, retrans, sockid, then five `u32`.
const DIAG_MSG_LEN: usize = 4 + SOCKID_LEN + 20;
/// Offset of the sockid in an `inet_diag_msg`.
const DIAG_MSG_SOCKID_OFF: usize = 4;
/// Receive buffer: the kernel fills dump answers up to about 32 KiB per read.
const RECV_BUF: usize = 64 * 1024;
/// A read waits at most this long (the kernel answers at once; this only bounds a fault).
const RECV_TIMEOUT: Duration = Duration::from_secs(5);
/// A dump ends after at most this many reads (each carries many sockets).
const MAX_DUMP_READS: usize = 1 << 20;

/// TCP states (`include/net/tcp_states.h`) as bits of `idiag_states`.
const TCP_ESTABLISHED: u8 = 1;
const TCP_TIME_WAIT: u8 = 6;
const TCP_CLOSE: u8 = 7;
const TCP_LISTEN: u8 = 10;
/// Every state.
const ALL_STATES: u32 = u32::MAX;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum SockDiagError {
    /// A system call on the netlink socket failed.
    #[error("sock_diag: {op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The kernel refused a request (`EOPNOTSUPP`: a kernel without
    /// `CONFIG_INET_DIAG_DESTROY`; `EPERM`: no `CAP_NET_ADMIN`).
    #[error("sock_diag: {op} of {what}: the kernel answered: {source}")]
    Refused {
        op: &'static str,
        what: String,
        #[source]
        source: io::Error,
    },
    /// An answer too short for what its header says.
    #[error("sock_diag: malformed answer: {what}")]
    Malformed { what: &'static str },
    /// A dump that did not end within its bound.
    #[error("sock_diag: the dump of protocol {proto} did not end after {reads} reads")]
    Unbounded { proto: u8, reads: usize },
}

/// One IPv4 or IPv6 socket as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InetSocket {
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
    /// The socket's state (`TCP_ESTABLISHED`, ...; a connected UDP socket is established).
    pub state: u8,
    /// Addresses as the socket holds them: an IPv6 socket talking IPv4 has IPv4-mapped ones.
    pub local: SocketAddr,
    pub peer: SocketAddr,
    /// The socket's address family (`AF_INET` or `AF_INET6`), echoed in a destroy request.
    family: u8,
    /// The socket's cookie (`SO_COOKIE`, what `bpf_get_socket_cookie` returns).
    pub cookie: u64,
    /// The kernel's identity of the socket, echoed in a destroy request.
    id: [u8; SOCKID_LEN],
}

impl std::fmt::Display for InetSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proto = match i32::from(self.proto) {
            libc::IPPROTO_TCP => "tcp",
            libc::IPPROTO_UDP => "udp",
            _ => "?",
        };
        write!(f, "{proto} {} -> {}", self.local, self.peer)
    }
}

/// A `NETLINK_SOCK_DIAG` socket in the namespace it was opened in.
#[derive(Debug)]
pub struct SockDiag {
    fd: OwnedFd,
    seq: u32,
}

fn io_err(op: &'static str) -> SockDiagError {
    SockDiagError::Io {
        op,
        source: io::Error::last_os_error(),
    }
}

fn u16_at(buf: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(buf.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(buf: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(buf.get(off..off + 4)?.try_into().ok()?))
}

fn ip_at(family: u8, buf: &[u8], off: usize) -> Option<IpAddr> {
    if i32::from(family) == libc::AF_INET6 {
        let octets: [u8; 16] = buf.get(off..off + 16)?.try_into().ok()?;
        return Some(IpAddr::V6(Ipv6Addr::from(octets)));
    }
    let octets: [u8; 4] = buf.get(off..off + 4)?.try_into().ok()?;
    Some(IpAddr::V4(Ipv4Addr::from(octets)))
}

/// The states a dump of `proto` asks for: sockets with a peer that can be aborted.
fn connected_states(proto: u8) -> u32 {
    if i32::from(proto) == libc::IPPROTO_UDP {
        1 << TCP_ESTABLISHED
    } else {
        ALL_STATES & !(1 << TCP_LISTEN) & !(1 << TCP_TIME_WAIT) & !(1 << TCP_CLOSE)
    }
}

/// Reads one socket from an `inet_diag_msg`.
fn parse_socket(proto: u8, msg: &[u8]) -> Option<InetSocket> {
    if msg.len() < DIAG_MSG_LEN || !matches!(i32::from(msg[0]), libc::AF_INET | libc::AF_INET6) {
        return None;
    }
    let family = msg[0];
    let id: [u8; SOCKID_LEN] = msg
        .get(DIAG_MSG_SOCKID_OFF..DIAG_MSG_SOCKID_OFF + SOCKID_LEN)?
        .try_into()
        .ok()?;
    let sport = u16::from_be_bytes([id[0], id[1]]);
    let dport = u16::from_be_bytes([id[2], id[3]]);
    let cookie_lo = u32_at(&id, SOCKID_COOKIE_OFF)?;
    let cookie_hi = u32_at(&id, SOCKID_COOKIE_OFF + 4)?;
    Some(InetSocket {
        proto,
        state: msg[1],
        local: SocketAddr::new(ip_at(family, &id, SOCKID_SRC_OFF)?, sport),
        peer: SocketAddr::new(ip_at(family, &id, SOCKID_DST_OFF)?, dport),
        family,
        cookie: u64::from(cookie_lo) | (u64::from(cookie_hi) << 32),
        id,
    })
}

/// The netlink messages in `buf`: `(type, payload)`.
fn messages(buf: &[u8]) -> Result<Vec<(u16, &[u8])>, SockDiagError> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + NLMSG_HDR_LEN <= buf.len() {
        let malformed = SockDiagError::Malformed {
            what: "netlink message length",
        };
        let len = u32_at(buf, off).and_then(|l| usize::try_from(l).ok());
        let kind = u16_at(buf, off + 4);
        let (Some(len), Some(kind)) = (len, kind) else {
            return Err(malformed);
        };
        if len < NLMSG_HDR_LEN || off + len > buf.len() {
            return Err(malformed);
        }
        out.push((kind, &buf[off + NLMSG_HDR_LEN..off + len]));
        // Messages are 4-byte aligned.
        off += (len + 3) & !3;
    }
    Ok(out)
}

/// The errno of an `NLMSG_ERROR` payload (0: an acknowledgement).
fn error_code(payload: &[u8]) -> Result<i32, SockDiagError> {
    u32_at(payload, 0)
        .map(|e| i32::from_ne_bytes(e.to_ne_bytes()))
        .ok_or(SockDiagError::Malformed {
            what: "netlink error message",
        })
}

impl SockDiag {
    /// Opens a sock_diag socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, SockDiagError> {
        // SAFETY: plain integer arguments; the returned fd is checked and then owned.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io_err("socket"));
        }
        // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let timeout = libc::timeval {
            tv_sec: libc::time_t::try_from(RECV_TIMEOUT.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_usec: 0,
        };
        // SAFETY: `timeout` is a valid timeval that outlives the call, with its size given.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                libc::socklen_t::try_from(size_of::<libc::timeval>()).unwrap_or(0),
            )
        };
        if rc != 0 {
            return Err(io_err("setsockopt SO_RCVTIMEO"));
        }
        Ok(Self { fd, seq: 0 })
    }

    /// Sends one request: `kind`, `flags`, then `inet_diag_req_v2` for `proto` with `states`
    /// and the socket identity `id`.
    fn send(
        &mut self,
        kind: u16,
        flags: u16,
        family: u8,
        proto: u8,
        states: u32,
        id: &[u8; SOCKID_LEN],
    ) -> Result<(), SockDiagError> {
        self.seq = self.seq.wrapping_add(1);
        let mut msg = Vec::with_capacity(NLMSG_HDR_LEN + REQ_LEN);
        let total = u32::try_from(NLMSG_HDR_LEN + REQ_LEN).unwrap_or(u32::MAX);
        msg.extend_from_slice(&total.to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&[family, proto, 0, 0]);
        msg.extend_from_slice(&states.to_ne_bytes());
        msg.extend_from_slice(id);
        // SAFETY: a zeroed sockaddr_nl is valid; family set below (pid 0: the kernel).
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = u16::try_from(libc::AF_NETLINK).unwrap_or(0);
        // SAFETY: `msg` and `kernel` are valid for the given lengths during the call.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&raw const kernel).cast(),
                libc::socklen_t::try_from(size_of::<libc::sockaddr_nl>()).unwrap_or(0),
            )
        };
        if usize::try_from(sent).ok() == Some(msg.len()) {
            Ok(())
        } else {
            Err(io_err("sendto"))
        }
    }

    fn recv<'a>(&self, buf: &'a mut [u8]) -> Result<&'a [u8], SockDiagError> {
        // SAFETY: `buf` is valid and writable for its length during the call.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let n = usize::try_from(n).map_err(|_| io_err("recv"))?;
        Ok(&buf[..n])
    }

    /// Every IPv4 socket of `proto` (`IPPROTO_TCP` or `IPPROTO_UDP`) in this namespace that has
    /// a peer: TCP sockets other than listening, closed and time-wait ones; connected UDP
    /// sockets. With `ipv6`, the IPv6 sockets instead (those talking IPv4 through mapped
    /// addresses included).
    pub fn connected(&mut self, proto: u8, ipv6: bool) -> Result<Vec<InetSocket>, SockDiagError> {
        let family = if ipv6 { libc::AF_INET6 } else { libc::AF_INET };
        self.send(
            SOCK_DIAG_BY_FAMILY,
            NLM_F_REQUEST | NLM_F_DUMP,
            u8::try_from(family).unwrap_or(0),
            proto,
            connected_states(proto),
            &[0; SOCKID_LEN],
        )?;
        let mut buf = vec![0u8; RECV_BUF];
        let mut out = Vec::new();
        for _ in 0..MAX_DUMP_READS {
            let data = self.recv(&mut buf)?;
            for (kind, payload) in messages(data)? {
                match kind {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        return Err(SockDiagError::Refused {
                            op: "dump",
                            what: format!("protocol {proto}"),
                            source: io::Error::from_raw_os_error(-error_code(payload)?),
                        });
                    }
                    SOCK_DIAG_BY_FAMILY => out.extend(parse_socket(proto, payload)),
                    _ => {}
                }
            }
        }
        Err(SockDiagError::Unbounded {
            proto,
            reads: MAX_DUMP_READS,
        })
    }

    /// Destroys `sock`: `Ok(false)` when it is already gone.
    pub fn destroy(&mut self, sock: &InetSocket) -> Result<bool, SockDiagError> {
        self.send(
            SOCK_DESTROY,
            NLM_F_REQUEST | NLM_F_ACK,
            sock.family,
            sock.proto,
            ALL_STATES,
            &sock.id,
        )?;
        let mut buf = vec![0u8; RECV_BUF];
        // The acknowledgement is the answer's only message; a stray dump tail is skipped.
        for _ in 0..MAX_DUMP_READS {
            let data = self.recv(&mut buf)?;
            for (kind, payload) in messages(data)? {
                if kind != NLMSG_ERROR {
                    continue;
                }
                return match -error_code(payload)? {
                    0 => Ok(true),
                    libc::ENOENT => Ok(false),
                    errno => Err(SockDiagError::Refused {
                        op: "destroy",
                        what: sock.to_string(),
                        source: io::Error::from_raw_os_error(errno),
                    }),
                };
            }
        }
        Err(SockDiagError::Unbounded {
            proto: sock.proto,
            reads: MAX_DUMP_READS,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diag_msg(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, cookie: u64) -> Vec<u8> {
        let mut m = vec![
            u8::try_from(libc::AF_INET).expect("fits"),
            TCP_ESTABLISHED,
            0,
            0,
        ];
        m.extend_from_slice(&sport.to_be_bytes());
        m.extend_from_slice(&dport.to_be_bytes());
        let mut src16 = [0u8; 16];
        src16[..4].copy_from_slice(&src);
        let mut dst16 = [0u8; 16];
        dst16[..4].copy_from_slice(&dst);
        m.extend_from_slice(&src16);
        m.extend_from_slice(&dst16);
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(
            &u32::try_from(cookie & 0xffff_ffff)
                .expect("low")
                .to_ne_bytes(),
        );
        m.extend_from_slice(&u32::try_from(cookie >> 32).expect("high").to_ne_bytes());
        m.extend_from_slice(&[0; 20]);
        m
    }

    #[test]
    fn reads_a_socket_from_its_diag_message() {
        let cookie = 0x0123_4567_89ab_cdef;
        let msg = diag_msg([10, 0, 0, 1], 40000, [10, 0, 0, 2], 8080, cookie);
        assert_eq!(msg.len(), DIAG_MSG_LEN);
        let sock = parse_socket(6, &msg).expect("parsed");
        assert_eq!(sock.local, "10.0.0.1:40000".parse().expect("addr"));
        assert_eq!(sock.peer, "10.0.0.2:8080".parse().expect("addr"));
        assert_eq!(sock.cookie, cookie);
        assert_eq!(sock.state, TCP_ESTABLISHED);
        assert_eq!(
            sock.id[..],
            msg[DIAG_MSG_SOCKID_OFF..DIAG_MSG_SOCKID_OFF + SOCKID_LEN]
        );
        assert!(parse_socket(6, &msg[..DIAG_MSG_LEN - 1]).is_none(), "short");
    }

    #[test]
    fn reads_an_ipv6_socket_from_its_diag_message() {
        let mut msg = diag_msg([0; 4], 40000, [0; 4], 8080, 7);
        msg[0] = u8::try_from(libc::AF_INET6).expect("fits");
        let (src, dst): (Ipv6Addr, Ipv6Addr) = (
            "fd00:10:244:1::2".parse().expect("addr"),
            "fd00:10:244:1::3".parse().expect("addr"),
        );
        let off = DIAG_MSG_SOCKID_OFF;
        msg[off + SOCKID_SRC_OFF..off + SOCKID_SRC_OFF + 16].copy_from_slice(&src.octets());
        msg[off + SOCKID_DST_OFF..off + SOCKID_DST_OFF + 16].copy_from_slice(&dst.octets());
        let sock = parse_socket(17, &msg).expect("parsed");
        assert_eq!(
            sock.local,
            "[fd00:10:244:1::2]:40000".parse().expect("addr")
        );
        assert_eq!(sock.peer, "[fd00:10:244:1::3]:8080".parse().expect("addr"));
        assert_eq!(i32::from(sock.family), libc::AF_INET6);
        msg[0] = 1;
        assert!(parse_socket(17, &msg).is_none(), "neither family");
    }

    #[test]
    fn splits_netlink_messages_and_refuses_bad_lengths() {
        let mut buf = Vec::new();
        for (kind, payload) in [(SOCK_DIAG_BY_FAMILY, vec![1u8, 2, 3]), (NLMSG_DONE, vec![])] {
            let len = u32::try_from(NLMSG_HDR_LEN + payload.len()).expect("fits");
            buf.extend_from_slice(&len.to_ne_bytes());
            buf.extend_from_slice(&kind.to_ne_bytes());
            buf.extend_from_slice(&[0; 10]);
            buf.extend_from_slice(&payload);
            while buf.len() % 4 != 0 {
                buf.push(0);
            }
        }
        let msgs = messages(&buf).expect("parsed");
        assert_eq!(
            msgs,
            vec![
                (SOCK_DIAG_BY_FAMILY, &[1u8, 2, 3][..]),
                (NLMSG_DONE, &[][..])
            ]
        );
        buf[0] = 200;
        assert!(messages(&buf).is_err(), "a length past the buffer");
    }

    #[test]
    fn udp_dumps_ask_for_connected_sockets_only() {
        assert_eq!(connected_states(17), 1 << TCP_ESTABLISHED);
        let tcp = connected_states(6);
        assert_eq!(tcp & (1 << TCP_LISTEN), 0);
        assert_ne!(tcp & (1 << TCP_ESTABLISHED), 0);
    }
}
