//! `flood udp IP:PORT --seconds S [--source-port P]`: sends small datagrams on one connected
//! socket as fast as it can for S seconds, nothing awaited, and prints `sent=N failed=M rate=R`
//! (R: datagrams handed to the kernel per second). For measuring what a drop flood costs: a
//! send refused by an earlier ICMP error is counted as failed and the loop goes on.

use std::{
    net::{SocketAddr, UdpSocket},
    process::ExitCode,
    time::{Duration, Instant},
};

/// Payload of each datagram (a 60-byte frame with Ethernet, IPv4 and UDP headers).
const PAYLOAD: [u8; 18] = *b"podnet-flood-probe";
/// Datagrams sent between two looks at the clock.
const BATCH: u64 = 256;

pub fn flood(addr: SocketAddr, seconds: Duration, source_port: u16) -> std::io::Result<ExitCode> {
    let socket = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], source_port)))?;
    socket.connect(addr)?;
    let started = Instant::now();
    let (mut sent, mut failed) = (0u64, 0u64);
    while started.elapsed() < seconds {
        for _ in 0..BATCH {
            match socket.send(&PAYLOAD) {
                Ok(_) => sent += 1,
                Err(_) => failed += 1,
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    #[expect(clippy::cast_precision_loss, reason = "a rate to print")]
    let rate = sent as f64 / secs;
    println!("sent={sent} failed={failed} rate={rate:.0}");
    Ok(ExitCode::SUCCESS)
}
