//! What `/proc` tells about the calling thread's network namespace.

use std::collections::HashSet;

/// Which socket table to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
}

/// The ports sockets in the calling thread's namespace hold (any address), as
/// `/proc/net/{tcp,udp}` shows: for TCP only listening sockets. (Reading the file costs
/// milliseconds, so callers checking many ports read it once.)
pub fn bound_ports(transport: Transport) -> HashSet<u16> {
    let file = match transport {
        Transport::Tcp => "/proc/thread-self/net/tcp",
        Transport::Udp => "/proc/thread-self/net/udp",
    };
    let Ok(text) = std::fs::read_to_string(file) else {
        return HashSet::new();
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1)?;
            let state = fields.nth(1)?;
            // TCP: only listening sockets (state 0A) hold the port for new connections.
            if transport == Transport::Tcp && state != "0A" {
                return None;
            }
            u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()
        })
        .collect()
}
