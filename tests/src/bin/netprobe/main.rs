//! netprobe: the integration tests' small TCP/UDP/HTTP client and server (std only).
//!
//! ```text
//! netprobe serve tcp|udp --listen IP:PORT [--count N] [--echo]
//! netprobe http --listen IP:PORT [--count N]
//! netprobe connect tcp|udp IP:PORT [--timeout-ms 2000] [--payload TEXT] [--source-port P]
//!                 [--show-peer] [--unconnected]
//! netprobe http-get IP:PORT [--path /] [--timeout-ms 2000]
//! netprobe churn tcp IP:PORT --count N [--timeout-ms 2000]
//! netprobe stream tcp IP:PORT --seconds S [--timeout-ms 2000] [--line-bytes N] [--stop-file F]
//! netprobe rr tcp IP:PORT --seconds S [--timeout-ms 2000]
//! netprobe crr tcp IP:PORT --seconds S [--timeout-ms 2000] [--interval-ms MS] [--stop-file F]
//! netprobe urr udp IP:PORT --seconds S [--timeout-ms 2000]
//! netprobe serve-many tcp --listen IP:PORT
//! netprobe hold tcp IP:PORT --count N [--until-file PATH] [--seconds S] [--timeout-ms 2000]
//! ```
//!
//! Servers print `listening <addr>` once bound. The one-shot TCP server reads one line (or up
//! to EOF, at most 64 KiB) per connection and answers `peer=IP:PORT local=IP:PORT bytes=N`
//! (N = bytes received, newline included); `--echo` instead echoes every line until EOF. The
//! UDP server answers every datagram the same way (`local=` is the bound address, so bind a
//! specific IP). Exit status: 0 success, 1 failure, 2 usage error.
//!
//! `connect --show-peer` appends ` sockpeer=IP:PORT`, what `getpeername()` says the client's
//! socket is connected to (or, with `udp --unconnected`, which sends with `sendto()` on an
//! unconnected socket, where `recvfrom()` says the reply came from).
//!
//! `stream` keeps one connection to `serve tcp --echo` for S seconds, sending a line every 50 ms
//! and checking that exactly that line comes back before sending the next; `--line-bytes N`
//! pads every line to N bytes with a pattern that differs per line, so any lost, reordered or
//! corrupted byte is caught. It prints `sent=N echoed=N bytes=B max_ms=M` (B: bytes echoed and
//! checked; M: the slowest echo) and fails unless every line came back.
//!
//! `rr` measures request/response transactions per second over one connection (against
//! `serve tcp --echo`); `crr` measures whole connections per second (against `serve tcp`):
//! connect, one request, its reply, the server's close, close, in a loop for S seconds (one
//! connection every `--interval-ms` at most, when given), and prints
//! `ok=N failed=M rate=R p50_us=A p99_us=B max_ms=X connect_p50_us=C connect_p99_us=D` (R =
//! successful connections per second; A, B the median and 99th percentile connection lifetime;
//! X the slowest; C, D the median and 99th percentile time `connect` took, the SYN's round
//! trip). A failed connection is counted and the loop goes on; each connection is bounded by
//! the timeout.
//!
//! `urr` is a DNS-like UDP request/response rate against `serve udp`: per request a new
//! unconnected socket (a new source port, as a resolver picks one per query) sends one
//! datagram with `sendto` and takes the reply with `recvfrom`, which must come from the address
//! the request went to; for S seconds, one request at a time. It prints
//! `ok=N failed=M rate=R p50_us=A p99_us=B` (A, B: request to reply); a request without a
//! proper reply within the timeout is counted as failed and the loop goes on.
//!
//! With `--stop-file F`, `stream` and `crr` end early once the file F exists (S stays the upper
//! bound), so a test can keep load running for exactly as long as something else takes.
//!
//! `serve-many` and `hold` are for thousands of concurrent connections (see [`many`]).

mod many;

use std::{
    collections::HashMap,
    io::{self, BufRead, BufReader, ErrorKind, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    process::ExitCode,
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

/// Largest request/line a server reads.
const MAX_LINE: usize = 64 * 1024;
/// How long a server waits for a client that has gone quiet.
const SERVER_IDLE: Duration = Duration::from_secs(10);
/// At most this many connection threads at once; the accept loop waits beyond that.
const MAX_THREADS: usize = 256;
const DEFAULT_TIMEOUT_MS: u64 = 2000;

const USAGE: &str = "usage:
  netprobe serve tcp|udp --listen IP:PORT [--count N] [--echo]
  netprobe http --listen IP:PORT [--count N]
  netprobe connect tcp|udp IP:PORT [--timeout-ms MS] [--payload TEXT] [--source-port P (udp)]
  netprobe http-get IP:PORT [--path PATH] [--timeout-ms MS]
  netprobe churn tcp IP:PORT --count N [--timeout-ms MS]
  netprobe stream tcp IP:PORT --seconds S [--timeout-ms MS] [--line-bytes N] [--stop-file F]
  netprobe rr tcp IP:PORT --seconds S [--timeout-ms MS]
  netprobe crr tcp IP:PORT --seconds S [--timeout-ms MS] [--interval-ms MS] [--stop-file F]
  netprobe urr udp IP:PORT --seconds S [--timeout-ms MS]
  netprobe serve-many tcp --listen IP:PORT
  netprobe hold tcp IP:PORT --count N [--until-file PATH] [--seconds S] [--timeout-ms MS]";

enum Failure {
    Usage(String),
    Failed(String),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Self::Failed(e.to_string())
    }
}

fn usage(msg: impl Into<String>) -> Failure {
    Failure::Usage(msg.into())
}

fn failed(msg: impl Into<String>) -> Failure {
    Failure::Failed(msg.into())
}

type Result<T> = std::result::Result<T, Failure>;

/// Positional arguments and `--flag value` / `--switch` options.
struct Args {
    positional: Vec<String>,
    flags: HashMap<String, String>,
    switches: Vec<String>,
}

const SWITCHES: &[&str] = &["--echo", "--show-peer", "--unconnected"];
const FLAGS: &[&str] = &[
    "--listen",
    "--count",
    "--timeout-ms",
    "--payload",
    "--source-port",
    "--seconds",
    "--path",
    "--until-file",
    "--line-bytes",
    "--stop-file",
    "--interval-ms",
];

impl Args {
    fn parse(raw: impl Iterator<Item = String>) -> Result<Self> {
        let mut args = Self {
            positional: Vec::new(),
            flags: HashMap::new(),
            switches: Vec::new(),
        };
        let mut raw = raw.peekable();
        while let Some(arg) = raw.next() {
            if SWITCHES.contains(&arg.as_str()) {
                args.switches.push(arg);
            } else if FLAGS.contains(&arg.as_str()) {
                let value = raw
                    .next()
                    .ok_or_else(|| usage(format!("{arg} needs a value")))?;
                args.flags.insert(arg, value);
            } else if arg.starts_with("--") {
                return Err(usage(format!("unknown option {arg}")));
            } else {
                args.positional.push(arg);
            }
        }
        Ok(args)
    }

    fn pos(&self, i: usize, what: &str) -> Result<&str> {
        self.positional
            .get(i)
            .map(String::as_str)
            .ok_or_else(|| usage(format!("missing {what}")))
    }

    fn flag<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>> {
        self.flags
            .get(name)
            .map(|v| {
                v.parse()
                    .map_err(|_| usage(format!("bad value for {name}: {v}")))
            })
            .transpose()
    }

    fn switch(&self, name: &str) -> bool {
        self.switches.iter().any(|s| s == name)
    }

    fn addr(&self, i: usize) -> Result<SocketAddr> {
        let raw = self.pos(i, "IP:PORT")?;
        raw.parse()
            .map_err(|_| usage(format!("bad address {raw} (want IP:PORT)")))
    }

    fn listen(&self) -> Result<SocketAddr> {
        self.flag("--listen")?
            .ok_or_else(|| usage("--listen IP:PORT is required"))
    }

    /// The required `--seconds S` flag, at most `max`.
    fn seconds(&self, max: f64) -> Result<f64> {
        let seconds: f64 = self
            .flag("--seconds")?
            .ok_or_else(|| usage("--seconds S is required"))?;
        if !(0.0..=max).contains(&seconds) {
            return Err(usage(format!("--seconds must be between 0 and {max}")));
        }
        Ok(seconds)
    }

    fn timeout(&self) -> Result<Duration> {
        let ms = self.flag("--timeout-ms")?.unwrap_or(DEFAULT_TIMEOUT_MS);
        if ms == 0 {
            return Err(usage("--timeout-ms must be positive"));
        }
        Ok(Duration::from_millis(ms))
    }

    /// When to end early: once `--stop-file`, if given, exists.
    fn stop(&self) -> Result<Stop> {
        Ok(Stop {
            file: self.flag::<String>("--stop-file")?.map(PathBuf::from),
        })
    }

    fn proto(&self) -> Result<Proto> {
        match self.pos(1, "protocol (tcp|udp)")? {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            other => Err(usage(format!("unknown protocol {other}"))),
        }
    }
}

/// A load generator's early end: a file that, once it exists, says stop.
struct Stop {
    file: Option<PathBuf>,
}

impl Stop {
    fn requested(&self) -> bool {
        self.file.as_ref().is_some_and(|f| f.exists())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
}

fn main() -> ExitCode {
    match Args::parse(std::env::args().skip(1)).and_then(|args| run(&args)) {
        Ok(code) => code,
        Err(Failure::Usage(msg)) => {
            eprintln!("netprobe: {msg}\n{USAGE}");
            ExitCode::from(2)
        }
        Err(Failure::Failed(msg)) => {
            eprintln!("netprobe: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<ExitCode> {
    match args.pos(0, "subcommand")? {
        "serve" => {
            let listen = args.listen()?;
            let count = args.flag("--count")?;
            match args.proto()? {
                Proto::Tcp if args.switch("--echo") => serve_tcp(listen, count, Handler::Echo),
                Proto::Tcp => serve_tcp(listen, count, Handler::Reply),
                Proto::Udp => serve_udp(listen, count),
            }
        }
        "http" => serve_tcp(args.listen()?, args.flag("--count")?, Handler::Http),
        "connect" => {
            let addr = args.addr(2)?;
            let payload: String = args.flag("--payload")?.unwrap_or_else(|| "hello".into());
            if payload.contains('\n') {
                return Err(usage("--payload must be a single line"));
            }
            let show_peer = args.switch("--show-peer");
            let (reply, peer) = match args.proto()? {
                Proto::Tcp => tcp_request(addr, &payload, args.timeout()?)?,
                Proto::Udp => udp_request(
                    addr,
                    &payload,
                    args.timeout()?,
                    args.flag("--source-port")?.unwrap_or(0),
                    args.switch("--unconnected"),
                )?,
            };
            let reply = if show_peer {
                format!("{reply} sockpeer={peer}")
            } else {
                reply
            };
            println!("{reply}");
            Ok(ExitCode::SUCCESS)
        }
        "http-get" => {
            let path: String = args.flag("--path")?.unwrap_or_else(|| "/".into());
            let body = http_get(args.addr(1)?, &path, args.timeout()?)?;
            print!("{body}");
            Ok(ExitCode::SUCCESS)
        }
        "churn" => {
            tcp_only(args)?;
            let count: u64 = args
                .flag("--count")?
                .ok_or_else(|| usage("--count N is required"))?;
            churn(args.addr(2)?, count, args.timeout()?)
        }
        "stream" => {
            tcp_only(args)?;
            let seconds = args.seconds(3600.0)?;
            let line_bytes: Option<usize> = args.flag("--line-bytes")?;
            if line_bytes.is_some_and(|n| !(MIN_LINE_BYTES..MAX_LINE).contains(&n)) {
                return Err(usage(format!(
                    "--line-bytes must be between {MIN_LINE_BYTES} and {}",
                    MAX_LINE - 1
                )));
            }
            stream(
                args.addr(2)?,
                Duration::from_secs_f64(seconds),
                args.timeout()?,
                line_bytes,
                &args.stop()?,
            )
        }
        "rr" => {
            tcp_only(args)?;
            let seconds = args.seconds(600.0)?;
            request_response(
                args.addr(2)?,
                Duration::from_secs_f64(seconds),
                args.timeout()?,
            )
        }
        "crr" => {
            tcp_only(args)?;
            let seconds = args.seconds(600.0)?;
            let interval = Duration::from_millis(args.flag("--interval-ms")?.unwrap_or(0));
            connect_request_response(
                args.addr(2)?,
                Duration::from_secs_f64(seconds),
                args.timeout()?,
                interval,
                &args.stop()?,
            )
        }
        "urr" => {
            if args.proto()? != Proto::Udp {
                return Err(usage("urr is udp only"));
            }
            let seconds = args.seconds(600.0)?;
            udp_request_response(
                args.addr(2)?,
                Duration::from_secs_f64(seconds),
                args.timeout()?,
            )
        }
        "serve-many" => {
            tcp_only(args)?;
            many::serve_many(args.listen()?)?;
            Ok(ExitCode::SUCCESS)
        }
        "hold" => {
            tcp_only(args)?;
            let count: u64 = args
                .flag("--count")?
                .ok_or_else(|| usage("--count N is required"))?;
            if !(1..=many::MAX_COUNT).contains(&count) {
                return Err(usage(format!(
                    "--count must be between 1 and {}",
                    many::MAX_COUNT
                )));
            }
            let until_file = args.flag("--until-file")?;
            let max_hold = if until_file.is_some() {
                args.seconds(3600.0)?
            } else {
                0.0
            };
            let all_held = many::hold(&many::Hold {
                addr: args.addr(2)?,
                count,
                until_file,
                max_hold: Duration::from_secs_f64(max_hold),
                timeout: args.timeout()?,
            })?;
            Ok(if all_held {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        other => Err(usage(format!("unknown subcommand {other}"))),
    }
}

fn tcp_only(args: &Args) -> Result<()> {
    match args.proto()? {
        Proto::Tcp => Ok(()),
        Proto::Udp => Err(usage("only tcp is supported here")),
    }
}

fn announce(addr: SocketAddr) -> Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "listening {addr}")?;
    out.flush()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Servers

#[derive(Clone, Copy)]
enum Handler {
    /// One line in, one `peer=.. local=.. bytes=..` line out, close.
    Reply,
    /// Echo every line until EOF.
    Echo,
    /// Minimal HTTP/1.0.
    Http,
}

fn serve_tcp(listen: SocketAddr, count: Option<u64>, handler: Handler) -> Result<ExitCode> {
    let listener = TcpListener::bind(listen).map_err(|e| failed(format!("bind {listen}: {e}")))?;
    announce(listener.local_addr()?)?;
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    let mut accepted = 0u64;
    while count.is_none_or(|n| accepted < n) {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) => {
                eprintln!("netprobe: accept: {e}");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        accepted += 1;
        threads.retain(|t| !t.is_finished());
        if threads.len() >= MAX_THREADS {
            let oldest = threads.remove(0);
            let _ = oldest.join();
        }
        threads.push(thread::spawn(move || {
            if let Err(e) = handle(&stream, handler) {
                eprintln!("netprobe: connection: {e}");
            }
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(ExitCode::SUCCESS)
}

fn handle(stream: &TcpStream, handler: Handler) -> io::Result<()> {
    stream.set_read_timeout(Some(SERVER_IDLE))?;
    stream.set_write_timeout(Some(SERVER_IDLE))?;
    let peer = stream.peer_addr()?;
    let local = stream.local_addr()?;
    match handler {
        Handler::Reply => {
            let line = read_line(&mut BufReader::new(stream))?;
            let mut out = stream;
            writeln!(out, "peer={peer} local={local} bytes={}", line.len())?;
        }
        Handler::Echo => {
            let mut reader = BufReader::new(stream);
            loop {
                let line = read_line(&mut reader)?;
                if line.is_empty() {
                    break;
                }
                let mut out = stream;
                out.write_all(&line)?;
            }
        }
        Handler::Http => {
            read_http_head(stream)?;
            let mut out = stream;
            write!(
                out,
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello from {} to {}:{}\n",
                local.ip(),
                peer.ip(),
                peer.port()
            )?;
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
    Ok(())
}

/// Reads up to and including a newline, or to EOF, at most [`MAX_LINE`] bytes.
fn read_line(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    reader
        .take(u64::try_from(MAX_LINE).unwrap_or(u64::MAX))
        .read_until(b'\n', &mut line)?;
    Ok(line)
}

/// Reads an HTTP request head (up to the blank line, EOF, or [`MAX_LINE`] bytes).
fn read_http_head(mut stream: &TcpStream) -> io::Result<()> {
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    while head.len() < MAX_LINE {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break;
        }
    }
    Ok(())
}

fn serve_udp(listen: SocketAddr, count: Option<u64>) -> Result<ExitCode> {
    let socket = UdpSocket::bind(listen).map_err(|e| failed(format!("bind {listen}: {e}")))?;
    let local = socket.local_addr()?;
    announce(local)?;
    let mut buf = vec![0u8; 65536];
    let mut answered = 0u64;
    while count.is_none_or(|n| answered < n) {
        let (n, peer) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e) => {
                eprintln!("netprobe: recv: {e}");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let reply = format!("peer={peer} local={local} bytes={n}\n");
        if let Err(e) = socket.send_to(reply.as_bytes(), peer) {
            eprintln!("netprobe: send to {peer}: {e}");
        }
        answered += 1;
    }
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------
// Clients

fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| failed(format!("connect {addr}: {e}")))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

/// Reads one line (without the newline) before `deadline`.
fn read_reply(
    reader: &mut BufReader<&TcpStream>,
    deadline: Instant,
    addr: SocketAddr,
) -> Result<String> {
    let mut line = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(failed(format!("timed out waiting for a reply from {addr}")));
        }
        reader.get_ref().set_read_timeout(Some(left))?;
        let mut limited = (&mut *reader).take(u64::try_from(MAX_LINE - line.len()).unwrap_or(0));
        match limited.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) if line.ends_with(b"\n") || line.len() >= MAX_LINE => break,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(failed(format!("timed out waiting for a reply from {addr}")));
            }
            Err(e) => return Err(failed(format!("reading from {addr}: {e}"))),
        }
    }
    if line.is_empty() {
        return Err(failed(format!(
            "{addr} closed the connection without a reply"
        )));
    }
    let text = String::from_utf8_lossy(&line);
    Ok(text.trim_end_matches(['\r', '\n']).to_owned())
}

/// The reply line and the socket's peer (`getpeername()`).
fn tcp_request(addr: SocketAddr, payload: &str, timeout: Duration) -> Result<(String, SocketAddr)> {
    let deadline = Instant::now() + timeout;
    let stream = connect(addr, timeout)?;
    let peer = stream.peer_addr()?;
    let mut out = &stream;
    out.write_all(format!("{payload}\n").as_bytes())
        .map_err(|e| failed(format!("sending to {addr}: {e}")))?;
    Ok((
        read_reply(&mut BufReader::new(&stream), deadline, addr)?,
        peer,
    ))
}

/// The reply and where it came from: the connected socket's peer, or with `unconnected`
/// (`sendto`/`recvfrom` on an unconnected socket) the reply's source.
fn udp_request(
    addr: SocketAddr,
    payload: &str,
    timeout: Duration,
    source_port: u16,
    unconnected: bool,
) -> Result<(String, SocketAddr)> {
    let any: SocketAddr = if addr.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], source_port))
    } else {
        SocketAddr::from(([0u16; 8], source_port))
    };
    let socket = UdpSocket::bind(any)?;
    socket.set_read_timeout(Some(timeout))?;
    let message = format!("{payload}\n");
    let sent = if unconnected {
        socket.send_to(message.as_bytes(), addr)
    } else {
        socket.connect(addr)?;
        socket.send(message.as_bytes())
    };
    sent.map_err(|e| failed(format!("sending to {addr}: {e}")))?;
    let mut buf = vec![0u8; 65536];
    let received = if unconnected {
        socket.recv_from(&mut buf)
    } else {
        socket
            .recv(&mut buf)
            .and_then(|n| Ok((n, socket.peer_addr()?)))
    };
    let (n, from) = received.map_err(|e| match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => {
            failed(format!("timed out waiting for a UDP reply from {addr}"))
        }
        _ => failed(format!("receiving from {addr}: {e}")),
    })?;
    let text = String::from_utf8_lossy(&buf[..n]);
    Ok((text.trim_end_matches(['\r', '\n']).to_owned(), from))
}

fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    let stream = connect(addr, timeout)?;
    let mut out = &stream;
    // One write: a server that reads the request once (the agent's /metrics) must get all of
    // it, or it answers and closes while the rest is still being sent (EPIPE here).
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    out.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut input = &stream;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(failed(format!(
                "timed out reading the response from {addr}"
            )));
        }
        stream.set_read_timeout(Some(left))?;
        match input.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) if response.len() + n > 1024 * 1024 => {
                return Err(failed("response larger than 1 MiB"));
            }
            Ok(n) => response.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(failed(format!(
                    "timed out reading the response from {addr}"
                )));
            }
            Err(e) => return Err(failed(format!("reading from {addr}: {e}"))),
        }
    }
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| failed(format!("malformed HTTP response: {text:?}")))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(failed(format!("HTTP status: {status}")));
    }
    Ok(body.to_owned())
}

fn churn(addr: SocketAddr, count: u64, timeout: Duration) -> Result<ExitCode> {
    let (mut ok, mut bad) = (0u64, 0u64);
    for i in 0..count {
        match tcp_request(addr, &format!("churn {i}"), timeout) {
            Ok((reply, _)) if reply.starts_with("peer=") => ok += 1,
            Ok((reply, _)) => {
                bad += 1;
                eprintln!("netprobe: connection {i}: unexpected reply {reply:?}");
            }
            Err(Failure::Failed(e) | Failure::Usage(e)) => {
                bad += 1;
                eprintln!("netprobe: connection {i}: {e}");
            }
        }
    }
    println!("ok={ok} failed={bad}");
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The shortest `--line-bytes`: room for `seq=N ` of any N.
const MIN_LINE_BYTES: usize = 32;

/// Line `seq` of a stream: `seq=N`, padded to `bytes` (without the newline) with letters that
/// shift with every line, so a line can only be mistaken for itself.
fn stream_line(seq: u64, bytes: Option<usize>) -> String {
    let mut line = format!("seq={seq}");
    if let Some(bytes) = bytes {
        line.push(' ');
        let start = usize::try_from(seq % 26).unwrap_or(0);
        let pad = bytes.saturating_sub(line.len());
        line.extend(
            (0..pad).map(|i| char::from(b'a' + u8::try_from((start + i) % 26).unwrap_or(0))),
        );
    }
    line
}

fn stream(
    addr: SocketAddr,
    duration: Duration,
    timeout: Duration,
    line_bytes: Option<usize>,
    stop: &Stop,
) -> Result<ExitCode> {
    const TICK: Duration = Duration::from_millis(50);
    let stream = connect(addr, timeout)?;
    let mut reader = BufReader::new(&stream);
    let mut out = &stream;
    let start = Instant::now();
    let (mut sent, mut echoed, mut bytes) = (0u64, 0u64, 0u64);
    let mut slowest = Duration::ZERO;
    while sent == 0 || (start.elapsed() < duration && !stop.requested()) {
        let line = stream_line(sent, line_bytes);
        let sent_at = Instant::now();
        if let Err(e) = out.write_all(format!("{line}\n").as_bytes()) {
            eprintln!("netprobe: sending line {sent}: {e}");
            break;
        }
        sent += 1;
        match read_reply(&mut reader, Instant::now() + timeout, addr) {
            Ok(reply) if reply == line => {
                echoed += 1;
                bytes += u64::try_from(line.len() + 1).unwrap_or(u64::MAX);
                slowest = slowest.max(sent_at.elapsed());
            }
            Ok(reply) => {
                let show = |s: &str| s.chars().take(40).collect::<String>();
                eprintln!(
                    "netprobe: sent line {} ({} bytes) {:?}..., got {} bytes {:?}...",
                    sent - 1,
                    line.len(),
                    show(&line),
                    reply.len(),
                    show(&reply)
                );
                break;
            }
            Err(Failure::Failed(e) | Failure::Usage(e)) => {
                eprintln!("netprobe: waiting for the echo of line {}: {e}", sent - 1);
                break;
            }
        }
        let next = start + TICK * u32::try_from(sent).unwrap_or(u32::MAX);
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    println!(
        "sent={sent} echoed={echoed} bytes={bytes} max_ms={}",
        slowest.as_millis()
    );
    Ok(if sent > 0 && sent == echoed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// TCP request/response rate against `serve tcp --echo`: one 2-byte request in flight at a
/// time, for `duration`; prints `transactions=N rate=R` (per second).
fn request_response(addr: SocketAddr, duration: Duration, timeout: Duration) -> Result<ExitCode> {
    let stream = connect(addr, timeout)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut reader = &stream;
    let mut writer = &stream;
    let mut reply = [0u8; 2];
    let start = Instant::now();
    let mut transactions = 0u64;
    while start.elapsed() < duration {
        writer.write_all(b"x\n")?;
        reader.read_exact(&mut reply)?;
        transactions += 1;
    }
    let rate = transactions as f64 / start.elapsed().as_secs_f64();
    println!("transactions={transactions} rate={rate:.0}");
    Ok(ExitCode::SUCCESS)
}

/// Connection rate against `serve tcp`: connect, send one line, read the reply, wait for the
/// server to close (so the server, not this client, holds TIME_WAIT and the client's ephemeral
/// ports never run out), close; one connection at a time for `duration`. A failed connection
/// is counted and the loop goes on. Prints `ok=N failed=M rate=R p50_us=A p99_us=B max_ms=X`
/// (successful connections per second; the 50th and 99th percentile and the longest of a
/// connection's lifetime, from connect to close); fails if any connection did.
fn connect_request_response(
    addr: SocketAddr,
    duration: Duration,
    timeout: Duration,
    interval: Duration,
    stop: &Stop,
) -> Result<ExitCode> {
    /// Failures reported one by one on stderr; the rest are only counted.
    const REPORTED: u64 = 5;
    let start = Instant::now();
    let (mut ok, mut bad) = (0u64, 0u64);
    // Each successful connection's time from connect to close, and the time its connect took,
    // for the latency percentiles.
    let mut micros: Vec<u64> = Vec::new();
    let mut connect_micros: Vec<u64> = Vec::new();
    while start.elapsed() < duration && !stop.requested() {
        let began = Instant::now();
        match crr_once(addr, ok + bad, timeout) {
            Ok(connected) => {
                ok += 1;
                micros.push(micros_of(began.elapsed()));
                connect_micros.push(micros_of(connected));
            }
            Err(Failure::Failed(e) | Failure::Usage(e)) => {
                bad += 1;
                if bad <= REPORTED {
                    eprintln!("netprobe: connection {}: {e}", ok + bad - 1);
                }
            }
        }
        thread::sleep(interval.saturating_sub(began.elapsed()));
    }
    if bad > REPORTED {
        eprintln!("netprobe: {} more failed connection(s)", bad - REPORTED);
    }
    let rate = ok as f64 / start.elapsed().as_secs_f64();
    micros.sort_unstable();
    connect_micros.sort_unstable();
    println!(
        "ok={ok} failed={bad} rate={rate:.0} p50_us={} p99_us={} max_ms={} connect_p50_us={} \
         connect_p99_us={}",
        percentile(&micros, 50),
        percentile(&micros, 99),
        micros.last().copied().unwrap_or(0) / 1000,
        percentile(&connect_micros, 50),
        percentile(&connect_micros, 99),
    );
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Microseconds of `d`, saturating.
fn micros_of(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Nearest-rank percentile `p` (0-100) of sorted `v`; 0 when empty.
fn percentile(v: &[u64], p: usize) -> u64 {
    v.get((p * v.len()).div_ceil(100).max(1) - 1)
        .copied()
        .unwrap_or(0)
}

/// One `crr` connection, bounded by `timeout` from its start; returns how long its connect
/// took.
fn crr_once(addr: SocketAddr, i: u64, timeout: Duration) -> Result<Duration> {
    let began = Instant::now();
    let deadline = began + timeout;
    let stream = connect(addr, timeout)?;
    let connected = began.elapsed();
    let mut out = &stream;
    out.write_all(format!("crr {i}\n").as_bytes())
        .map_err(|e| failed(format!("sending to {addr}: {e}")))?;
    let mut reader = BufReader::new(&stream);
    let reply = read_reply(&mut reader, deadline, addr)?;
    if !reply.starts_with("peer=") {
        return Err(failed(format!("unexpected reply {reply:?}")));
    }
    let mut rest = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(failed(format!("timed out waiting for {addr} to close")));
        }
        stream.set_read_timeout(Some(left))?;
        match reader.read(&mut rest) {
            Ok(0) => return Ok(connected),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(failed(format!("timed out waiting for {addr} to close")));
            }
            Err(e) => return Err(failed(format!("reading from {addr}: {e}"))),
        }
    }
}

/// DNS-like UDP request/response rate: see the module documentation (`urr`).
fn udp_request_response(
    addr: SocketAddr,
    duration: Duration,
    timeout: Duration,
) -> Result<ExitCode> {
    /// Failures reported one by one on stderr; the rest are only counted.
    const REPORTED: u64 = 5;
    let any: SocketAddr = if addr.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let start = Instant::now();
    let (mut ok, mut bad) = (0u64, 0u64);
    let mut micros: Vec<u64> = Vec::new();
    let mut buf = [0u8; 512];
    while start.elapsed() < duration {
        let began = Instant::now();
        let outcome = (|| -> Result<()> {
            let socket = UdpSocket::bind(any)?;
            socket.set_read_timeout(Some(timeout))?;
            socket
                .send_to(format!("q{}\n", ok + bad).as_bytes(), addr)
                .map_err(|e| failed(format!("sendto {addr}: {e}")))?;
            let deadline = began + timeout;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(failed(format!("no reply from {addr}")));
                }
                socket.set_read_timeout(Some(left))?;
                match socket.recv_from(&mut buf) {
                    Ok((_, from)) if from == addr => return Ok(()),
                    Ok((_, from)) => {
                        return Err(failed(format!("reply from {from}, not from {addr}")));
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        return Err(failed(format!("no reply from {addr}")));
                    }
                    Err(e) => return Err(failed(format!("recvfrom: {e}"))),
                }
            }
        })();
        match outcome {
            Ok(()) => {
                ok += 1;
                micros.push(micros_of(began.elapsed()));
            }
            Err(Failure::Failed(e) | Failure::Usage(e)) => {
                bad += 1;
                if bad <= REPORTED {
                    eprintln!("netprobe: request {}: {e}", ok + bad - 1);
                }
            }
        }
    }
    if bad > REPORTED {
        eprintln!("netprobe: {} more failed request(s)", bad - REPORTED);
    }
    let rate = ok as f64 / start.elapsed().as_secs_f64();
    micros.sort_unstable();
    println!(
        "ok={ok} failed={bad} rate={rate:.0} p50_us={} p99_us={}",
        percentile(&micros, 50),
        percentile(&micros, 99)
    );
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
