//! Thousands of concurrent TCP connections, one thread per side (tokio, current-thread
//! runtime): `serve-many` echoes on every connection it accepts and keeps them all, `hold`
//! opens N connections, keeps them all open at once, then checks that each one still carries
//! data both ways.
//!
//! ```text
//! netprobe serve-many tcp --listen IP:PORT
//! netprobe hold tcp IP:PORT --count N [--until-file PATH] [--seconds S] [--timeout-ms MS]
//! ```
//!
//! `hold` prints `connected=C failed=F ms=T` once every connection attempt has finished, waits
//! until PATH exists (at most S seconds; without `--until-file` it goes straight on), sends each
//! connection its own short line and reads the echo, prints `echoed=E ms=T`, and closes them
//! all. It succeeds only if all N connected and echoed (and the release came in time). Both
//! raise their own RLIMIT_NOFILE as far as they need.

use std::{
    io::{self, Write as _},
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use tokio::{
    net::{TcpSocket, TcpStream},
    task::JoinSet,
};

/// Connection attempts in flight at once: well below the server's accept backlog, so a burst of
/// SYNs never overflows it (an overflow costs a 1 s SYN retransmission, not a failure).
const CONNECT_WINDOW: usize = 256;
/// Echo exchanges in flight at once.
const ECHO_WINDOW: usize = 1024;
/// The server's accept backlog (the kernel caps it at `net.core.somaxconn`, 4096 by default).
const BACKLOG: u32 = 4096;
/// File descriptors needed beyond the connections (stdio, the runtime, the listener).
const SPARE_FDS: u64 = 64;
/// Connections `serve-many` can hold at once.
const SERVER_FDS: u64 = 65_536;
/// Most connections `hold` opens.
pub const MAX_COUNT: u64 = 60_000;
/// How often `hold` looks for its release file.
const RELEASE_POLL: Duration = Duration::from_millis(10);
/// Connection errors reported one by one on stderr; the rest are only counted.
const REPORTED: usize = 5;

/// What `hold` does.
pub struct Hold {
    pub addr: SocketAddr,
    pub count: u64,
    /// Keep the connections until this file exists...
    pub until_file: Option<PathBuf>,
    /// ...but at most this long.
    pub max_hold: Duration,
    /// Bound on each connect and on each echo exchange.
    pub timeout: Duration,
}

/// Raises the soft RLIMIT_NOFILE towards `want`: to `want` where the hard limit allows it (or
/// can be raised, which takes CAP_SYS_RESOURCE), else to the hard limit. Returns the new soft
/// limit.
pub fn raise_nofile(want: u64) -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for getrlimit to fill in.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur >= want {
        return Ok(limit.rlim_cur);
    }
    let raised = libc::rlimit {
        rlim_cur: want,
        rlim_max: limit.rlim_max.max(want),
    };
    // SAFETY: `raised` is a valid rlimit; setrlimit only reads it.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) } == 0 {
        return Ok(want);
    }
    let capped = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const capped) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit.rlim_max)
}

fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

fn print_flushed(line: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}

/// `serve-many`: accepts forever, echoing on every connection until its peer closes.
pub fn serve_many(listen: SocketAddr) -> io::Result<()> {
    // As many as the hard limit allows; every accepted connection takes one.
    raise_nofile(SERVER_FDS)?;
    runtime()?.block_on(async move {
        let socket = if listen.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket
            .bind(listen)
            .map_err(|e| io::Error::new(e.kind(), format!("bind {listen}: {e}")))?;
        let listener = socket.listen(BACKLOG)?;
        print_flushed(&format!("listening {}", listener.local_addr()?))?;
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(echo(stream));
                }
                Err(e) => {
                    eprintln!("netprobe: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    })
}

/// Reads some bytes into `buf` (0 at EOF).
async fn read_some(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        stream.readable().await?;
        match stream.try_read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            result => return result,
        }
    }
}

/// Writes all of `buf`.
async fn write_all(stream: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        stream.writable().await?;
        match stream.try_write(buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Fills `buf` completely.
async fn read_exact(stream: &TcpStream, buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        match read_some(stream, &mut buf[filled..]).await? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => filled += n,
        }
    }
    Ok(())
}

/// Echoes everything until EOF or an error.
async fn echo(stream: TcpStream) {
    let mut buf = [0u8; 512];
    loop {
        match read_some(&stream, &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if write_all(&stream, &buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Waits (bounded by `max`) until `path` exists.
async fn released(path: &Path, max: Duration) -> bool {
    let deadline = Instant::now() + max;
    loop {
        if path.exists() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(RELEASE_POLL).await;
    }
}

/// Reports the first few failures on stderr.
fn report(failures: &mut usize, what: &str, i: usize, e: &str) {
    *failures += 1;
    if *failures <= REPORTED {
        eprintln!("netprobe: {what} {i}: {e}");
    }
}

/// `hold`: true iff every connection connected and echoed (and the release came in time).
pub fn hold(args: &Hold) -> io::Result<bool> {
    let count = usize::try_from(args.count).unwrap_or(usize::MAX);
    let needed = args.count + SPARE_FDS;
    let allowed = raise_nofile(needed)?;
    if allowed < needed {
        return Err(io::Error::other(format!(
            "{} connections need {needed} file descriptors; RLIMIT_NOFILE allows {allowed}",
            args.count
        )));
    }
    runtime()?.block_on(async move {
        let Hold {
            addr,
            count: _,
            until_file,
            max_hold,
            timeout,
        } = args;
        let (addr, timeout) = (*addr, *timeout);

        let start = Instant::now();
        let mut streams: Vec<Option<TcpStream>> = (0..count).map(|_| None).collect();
        let mut connect_failures = 0;
        let mut pending = JoinSet::new();
        let mut next = 0;
        while next < count || !pending.is_empty() {
            while next < count && pending.len() < CONNECT_WINDOW {
                let i = next;
                pending.spawn(async move {
                    let result = tokio::time::timeout(timeout, TcpStream::connect(addr)).await;
                    (i, result)
                });
                next += 1;
            }
            let Some(done) = pending.join_next().await else {
                break;
            };
            match done.map_err(io::Error::other)? {
                (i, Ok(Ok(stream))) => streams[i] = Some(stream),
                (i, Ok(Err(e))) => report(&mut connect_failures, "connection", i, &e.to_string()),
                (i, Err(_)) => report(&mut connect_failures, "connection", i, "connect timed out"),
            }
        }
        let connected = streams.iter().flatten().count();
        print_flushed(&format!(
            "connected={connected} failed={connect_failures} ms={}",
            start.elapsed().as_millis()
        ))?;

        let released = match until_file {
            Some(path) => released(path, *max_hold).await,
            None => true,
        };
        if !released {
            eprintln!("netprobe: not released within {max_hold:?}; echoing anyway");
        }

        let start = Instant::now();
        let mut echoed = 0;
        let mut echo_failures = 0;
        let mut exchanges = JoinSet::new();
        let mut open = streams
            .into_iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i, s?)));
        let mut kept = Vec::with_capacity(connected);
        loop {
            while exchanges.len() < ECHO_WINDOW {
                let Some((i, stream)) = open.next() else {
                    break;
                };
                exchanges.spawn(async move {
                    let line = format!("{i}\n");
                    let exchange = async {
                        write_all(&stream, line.as_bytes()).await?;
                        let mut back = vec![0u8; line.len()];
                        read_exact(&stream, &mut back).await?;
                        if back == line.as_bytes() {
                            Ok(())
                        } else {
                            Err(io::Error::other(format!("sent {line:?}, got {back:?}")))
                        }
                    };
                    let result = match tokio::time::timeout(timeout, exchange).await {
                        Ok(result) => result,
                        Err(_) => Err(io::Error::other("timed out waiting for the echo")),
                    };
                    (i, stream, result)
                });
            }
            let Some(done) = exchanges.join_next().await else {
                break;
            };
            let (i, stream, result) = done.map_err(io::Error::other)?;
            match result {
                Ok(()) => echoed += 1,
                Err(e) => report(&mut echo_failures, "echo on connection", i, &e.to_string()),
            }
            // Every connection stays open until all have echoed.
            kept.push(stream);
        }
        print_flushed(&format!(
            "echoed={echoed} ms={}",
            start.elapsed().as_millis()
        ))?;
        for failures in [connect_failures, echo_failures] {
            if failures > REPORTED {
                eprintln!("netprobe: {} more failure(s)", failures - REPORTED);
            }
        }
        drop(kept);
        Ok(released && connected == count && echoed == count)
    })
}
