//! The load generator: N connections, one request in flight on each, driven by one epoll
//! thread (or a few, each with its own epoll and share of the connections).

use std::io;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use crate::hist::Histogram;
use crate::sys::{is_would_block, Epoll, Stream, Target, EV_ET, EV_IN, EV_OUT, EV_RDHUP};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Echo,
    Http,
    /// WebSocket: an HTTP/1.1 upgrade per connection, then one binary message per round trip,
    /// echoed back by the server as one unmasked frame.
    Ws,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Echo => "echo",
            Mode::Http => "http",
            Mode::Ws => "ws",
        }
    }
}

pub struct ClientConfig {
    pub target: Target,
    pub mode: Mode,
    pub conns: usize,
    pub size: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub threads: usize,
    pub path: String,
    pub connect_timeout: Duration,
}

/// What one thread (and, merged, the whole run) measured.
#[derive(Default)]
pub struct Stats {
    pub hist: Histogram,
    pub round_trips: u64,
    /// Round trips completed from the start, warm-up included (for per-round-trip costs
    /// measured over the whole run, e.g. the server's CPU time).
    pub round_trips_total: u64,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    /// Connections (re)established after the initial ones, because the server closed one.
    pub reconnects: u64,
    pub connect_errors: u64,
    pub io_errors: u64,
    pub eof_errors: u64,
    pub protocol_errors: u64,
    pub first_error: Option<String>,
}

impl Stats {
    pub fn errors(&self) -> u64 {
        self.connect_errors + self.io_errors + self.eof_errors + self.protocol_errors
    }

    pub fn merge(&mut self, o: &Stats) {
        self.hist.merge(&o.hist);
        self.round_trips += o.round_trips;
        self.round_trips_total += o.round_trips_total;
        self.tx_bytes += o.tx_bytes;
        self.rx_bytes += o.rx_bytes;
        self.reconnects += o.reconnects;
        self.connect_errors += o.connect_errors;
        self.io_errors += o.io_errors;
        self.eof_errors += o.eof_errors;
        self.protocol_errors += o.protocol_errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&o.first_error);
        }
    }

    fn note(&mut self, msg: String) {
        if self.first_error.is_none() {
            self.first_error = Some(msg);
        }
    }
}

/// The bytes of one echo message: a fixed, non-trivial pattern so that echoes can be checked.
pub fn echo_message(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i.wrapping_mul(31) + 7) as u8).collect()
}

pub fn http_request(path: &str, host: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ferroloop-loadgen\r\nAccept: */*\r\n\r\n")
        .into_bytes()
}

/// The WebSocket opening handshake (RFC 6455; the key is the RFC's example nonce).
pub fn ws_upgrade(path: &str, host: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ferroloop-loadgen\r\n\
         Upgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

fn ws_header(out: &mut Vec<u8>, len: usize, masked: bool) {
    out.push(0x82); // FIN + binary
    let m = if masked { 0x80 } else { 0 };
    if len < 126 {
        out.push(m | len as u8);
    } else if len <= 0xffff {
        out.push(m | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// A client frame carrying `payload` (clients must mask; the mask is fixed).
pub fn ws_client_frame(payload: &[u8]) -> Vec<u8> {
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = Vec::with_capacity(payload.len() + 14);
    ws_header(&mut out, payload.len(), true);
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    out
}

/// The frame a server sends back when it echoes `payload`: unmasked, same opcode.
pub fn ws_server_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    ws_header(&mut out, payload.len(), false);
    out.extend_from_slice(payload);
    out
}

enum Fail {
    Io(io::Error),
    Eof,
    Protocol(String),
}

struct Conn {
    stream: Stream,
    wpos: usize,
    /// Response bytes received so far (echo: payload; http: headers + body).
    rpos: usize,
    /// Total response length once known (http: after the headers), else `usize::MAX`.
    expect: usize,
    /// http: header bytes gathered until the blank line.
    hdr: Vec<u8>,
    close_after: bool,
    /// ws: the opening handshake is done.
    upgraded: bool,
    started: Instant,
}

impl Conn {
    fn new(stream: Stream, mode: Mode, size: usize) -> Conn {
        Conn {
            stream,
            wpos: 0,
            rpos: 0,
            expect: if mode == Mode::Echo { size } else { usize::MAX },
            hdr: Vec::new(),
            close_after: false,
            upgraded: false,
            started: Instant::now(),
        }
    }

    fn restart(&mut self, mode: Mode, size: usize, now: Instant) {
        self.wpos = 0;
        self.rpos = 0;
        self.expect = match mode {
            Mode::Echo => size,
            Mode::Ws if self.upgraded => size,
            _ => usize::MAX,
        };
        self.hdr.clear();
        self.close_after = false;
        self.started = now;
    }
}

/// The measurement window shared by every connection of a thread.
struct Window {
    warm_end: Instant,
    end: Instant,
}

enum Next {
    /// Everything drained; wait for the next event.
    Idle,
    /// The server asked to close (HTTP `Connection: close`): reconnect.
    Reconnect,
}

struct Ctx<'a> {
    mode: Mode,
    /// echo: the message size; ws: the size of the echoed frame (header included).
    size: usize,
    request: &'a [u8],
    message: &'a [u8],
    /// ws: the opening handshake, sent once per connection before the first message.
    upgrade: &'a [u8],
    window: Window,
}

impl<'a> Ctx<'a> {
    /// What `conn` sends next: the handshake until it is done, then the request.
    fn request_for(&self, conn: &Conn) -> &'a [u8] {
        if self.mode == Mode::Ws && !conn.upgraded {
            self.upgrade
        } else {
            self.request
        }
    }
}

fn find_blank_line(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    buf.get(start..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| start + p + 4)
}

/// Parses an HTTP/1.x response head; returns (content length, close after this response).
fn parse_head(head: &[u8]) -> Result<(usize, bool), String> {
    let text = std::str::from_utf8(head).map_err(|_| "response head is not UTF-8".to_string())?;
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let mut parts = status.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("bad status line {status:?}"));
    }
    if code != "200" {
        return Err(format!("HTTP status {code} (expected 200)"));
    }
    let mut length = None;
    let mut close = version == "HTTP/1.0";
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("bad Content-Length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.contains("close") {
                close = true;
            } else if v.contains("keep-alive") {
                close = false;
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(format!(
                "Transfer-Encoding {value:?} is not supported: send Content-Length"
            ));
        }
    }
    let length = length.ok_or_else(|| "response without Content-Length".to_string())?;
    Ok((length, close))
}

/// Checks a WebSocket handshake response head: status 101.
fn check_upgrade(head: &[u8]) -> Result<(), String> {
    let status = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let status = String::from_utf8_lossy(status);
    let mut parts = status.splitn(3, ' ');
    let _version = parts.next();
    match parts.next() {
        Some("101") => Ok(()),
        _ => Err(format!("websocket upgrade refused: {status:?}")),
    }
}

/// Handles the bytes just read; returns whether the response is now complete.
fn take_bytes(conn: &mut Conn, ctx: &Ctx, data: &[u8]) -> Result<bool, Fail> {
    match ctx.mode {
        Mode::Ws if !conn.upgraded => {
            let from = conn.hdr.len();
            conn.hdr.extend_from_slice(data);
            match find_blank_line(&conn.hdr, from) {
                Some(head_len) => {
                    check_upgrade(&conn.hdr[..head_len]).map_err(Fail::Protocol)?;
                    if conn.hdr.len() > head_len {
                        return Err(Fail::Protocol(
                            "bytes after the handshake before any message was sent".into(),
                        ));
                    }
                    conn.rpos = head_len;
                    conn.expect = head_len;
                }
                None if conn.hdr.len() > 64 * 1024 => {
                    return Err(Fail::Protocol("handshake head larger than 64 KiB".into()))
                }
                None => return Ok(false),
            }
        }
        Mode::Echo | Mode::Ws => {
            let end = conn.rpos + data.len();
            if end > ctx.size {
                return Err(Fail::Protocol(
                    "server sent more bytes than the echoed message".into(),
                ));
            }
            if data != &ctx.message[conn.rpos..end] {
                return Err(Fail::Protocol(
                    "echoed bytes differ from the message".into(),
                ));
            }
            conn.rpos = end;
        }
        Mode::Http => {
            if conn.expect == usize::MAX {
                let from = conn.hdr.len();
                conn.hdr.extend_from_slice(data);
                match find_blank_line(&conn.hdr, from) {
                    Some(head_len) => {
                        let (body, close) =
                            parse_head(&conn.hdr[..head_len]).map_err(Fail::Protocol)?;
                        conn.expect = head_len + body;
                        conn.close_after = close;
                        conn.rpos = conn.hdr.len();
                    }
                    None if conn.hdr.len() > 64 * 1024 => {
                        return Err(Fail::Protocol("response head larger than 64 KiB".into()))
                    }
                    None => return Ok(false),
                }
            } else {
                conn.rpos += data.len();
            }
            if conn.rpos > conn.expect {
                return Err(Fail::Protocol(
                    "bytes after the response (no request was pipelined)".into(),
                ));
            }
        }
    }
    Ok(conn.rpos == conn.expect)
}

/// Writes what it can, reads until EAGAIN, completes responses and starts the next request.
fn pump(conn: &mut Conn, ctx: &Ctx, scratch: &mut [u8], stats: &mut Stats) -> Result<Next, Fail> {
    loop {
        let request = ctx.request_for(conn);
        while conn.wpos < request.len() {
            match conn.stream.write(&request[conn.wpos..]) {
                Ok(n) => conn.wpos += n,
                Err(e) if is_would_block(&e) => break,
                Err(e) => return Err(Fail::Io(e)),
            }
        }
        let n = match conn.stream.read(scratch) {
            Ok(0) => return Err(Fail::Eof),
            Ok(n) => n,
            Err(e) if is_would_block(&e) => return Ok(Next::Idle),
            Err(e) => return Err(Fail::Io(e)),
        };
        if take_bytes(conn, ctx, &scratch[..n])? {
            if conn.wpos < request.len() {
                return Err(Fail::Protocol(
                    "complete response before the request was sent".into(),
                ));
            }
            let now = Instant::now();
            if ctx.mode == Mode::Ws && !conn.upgraded {
                // The handshake is not a round trip: start the first message.
                conn.upgraded = true;
                conn.restart(ctx.mode, ctx.size, now);
                continue;
            }
            if now < ctx.window.end {
                stats.round_trips_total += 1;
            }
            if now >= ctx.window.warm_end && now < ctx.window.end {
                let ns = now.duration_since(conn.started).as_nanos();
                stats.hist.record(u64::try_from(ns).unwrap_or(u64::MAX));
                stats.round_trips += 1;
                stats.tx_bytes += ctx.request.len() as u64;
                stats.rx_bytes += conn.rpos as u64;
            }
            if conn.close_after {
                return Ok(Next::Reconnect);
            }
            conn.restart(ctx.mode, ctx.size, now);
            // Send the next request and stop: with one request in flight nothing else can be
            // waiting to be read, and (edge-triggered) the answer raises a new event. This
            // saves a read() that would only return EAGAIN on every round trip.
            while conn.wpos < ctx.request.len() {
                match conn.stream.write(&ctx.request[conn.wpos..]) {
                    Ok(n) => conn.wpos += n,
                    Err(e) if is_would_block(&e) => break,
                    Err(e) => return Err(Fail::Io(e)),
                }
            }
            return Ok(Next::Idle);
        }
    }
}

const EVENTS: u32 = EV_IN | EV_OUT | EV_RDHUP | EV_ET;
const RECONNECT_DELAY: Duration = Duration::from_millis(20);

/// Runs `nconns` connections until the window ends. Connects first, then waits on `barrier`
/// so that every thread starts its clock together.
pub fn run_thread(
    cfg: &ClientConfig,
    nconns: usize,
    request: &[u8],
    message: &[u8],
    upgrade: &[u8],
    barrier: &Barrier,
) -> Result<Stats, String> {
    let connected: Result<Vec<Stream>, String> = (0..nconns)
        .map(|i| {
            Stream::connect(&cfg.target, cfg.connect_timeout)
                .map_err(|e| format!("connect #{i} to {}: {e}", cfg.target))
        })
        .collect();
    barrier.wait();
    let streams = connected?;
    let mut epoll = Epoll::new(nconns).map_err(|e| format!("epoll: {e}"))?;
    let mut conns: Vec<Option<Conn>> = Vec::with_capacity(nconns);
    for (i, s) in streams.into_iter().enumerate() {
        epoll
            .add(s.fd(), EVENTS, i as u64)
            .map_err(|e| format!("epoll_ctl: {e}"))?;
        conns.push(Some(Conn::new(s, cfg.mode, cfg.size)));
    }

    let t0 = Instant::now();
    let warm_end = t0 + cfg.warmup;
    let ctx = Ctx {
        mode: cfg.mode,
        size: if cfg.mode == Mode::Ws {
            message.len()
        } else {
            cfg.size
        },
        request,
        message,
        upgrade,
        window: Window {
            warm_end,
            end: warm_end + cfg.duration,
        },
    };
    let mut stats = Stats::default();
    let mut scratch = vec![0u8; 256 * 1024];
    let mut events = Vec::with_capacity(nconns);
    // (connection index, when to try again)
    let mut reconnect: Vec<(usize, Instant)> = Vec::new();

    let start_all = Instant::now();
    for (idx, slot) in conns.iter_mut().enumerate() {
        if let Some(c) = slot.as_mut() {
            c.restart(ctx.mode, ctx.size, start_all);
            let r = pump(c, &ctx, &mut scratch, &mut stats);
            if !settle(idx, r, &mut stats, &mut reconnect) {
                *slot = None; // closes the socket, which also leaves the epoll set
            }
        }
    }

    loop {
        let now = Instant::now();
        if now >= ctx.window.end {
            break;
        }
        // Reconnect the connections that are due.
        let mut i = 0;
        while i < reconnect.len() {
            let (idx, at) = reconnect[i];
            if at > now {
                i += 1;
                continue;
            }
            reconnect.swap_remove(i);
            let attempt = Stream::connect(&cfg.target, cfg.connect_timeout).and_then(|s| {
                epoll.add(s.fd(), EVENTS, idx as u64)?;
                Ok(s)
            });
            match attempt {
                Ok(s) => {
                    let mut c = Conn::new(s, ctx.mode, ctx.size);
                    let r = pump(&mut c, &ctx, &mut scratch, &mut stats);
                    if settle(idx, r, &mut stats, &mut reconnect) {
                        conns[idx] = Some(c);
                    }
                }
                Err(e) => {
                    stats.connect_errors += 1;
                    stats.note(format!("reconnect #{idx} to {}: {e}", cfg.target));
                    reconnect.push((idx, now + RECONNECT_DELAY));
                }
            }
        }
        let mut wake = ctx.window.end;
        for &(_, at) in &reconnect {
            wake = wake.min(at);
        }
        let timeout = wake
            .saturating_duration_since(now)
            .as_millis()
            .clamp(1, 100) as i32;
        epoll
            .wait(timeout, &mut events)
            .map_err(|e| format!("epoll_wait: {e}"))?;
        for &(token, _) in &events {
            let idx = token as usize;
            let Some(c) = conns.get_mut(idx).and_then(Option::as_mut) else {
                continue; // a stale event for a connection that was just closed
            };
            let r = pump(c, &ctx, &mut scratch, &mut stats);
            if !settle(idx, r, &mut stats, &mut reconnect) {
                conns[idx] = None;
            }
        }
    }
    Ok(stats)
}

/// Books the outcome of `pump` for connection `idx`; returns whether to keep the connection
/// (otherwise the caller drops it and a reconnect is scheduled here).
fn settle(
    idx: usize,
    r: Result<Next, Fail>,
    stats: &mut Stats,
    reconnect: &mut Vec<(usize, Instant)>,
) -> bool {
    let f = match r {
        Ok(Next::Idle) => return true,
        Ok(Next::Reconnect) => {
            stats.reconnects += 1;
            reconnect.push((idx, Instant::now()));
            return false;
        }
        Err(f) => f,
    };
    let msg = match f {
        Fail::Io(e) => {
            stats.io_errors += 1;
            format!("connection #{idx}: {e}")
        }
        Fail::Eof => {
            stats.eof_errors += 1;
            format!("connection #{idx}: closed by the server mid-request")
        }
        Fail::Protocol(m) => {
            stats.protocol_errors += 1;
            format!("connection #{idx}: {m}")
        }
    };
    stats.note(msg);
    reconnect.push((idx, Instant::now() + RECONNECT_DELAY));
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_parsing() {
        let h = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\n";
        assert_eq!(parse_head(h).ok(), Some((13, false)));
        let h = b"HTTP/1.1 200 OK\r\ncontent-length:0\r\nConnection: close\r\n\r\n";
        assert_eq!(parse_head(h).ok(), Some((0, true)));
        assert!(parse_head(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
    }

    #[test]
    fn blank_line_across_reads() {
        let buf = b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nbody";
        assert_eq!(find_blank_line(buf, 0), Some(buf.len() - 4));
        assert_eq!(find_blank_line(buf, 23), Some(buf.len() - 4));
        assert_eq!(find_blank_line(b"abc\r\n\r", 0), None);
    }

    #[test]
    fn ws_frames() {
        assert_eq!(ws_server_frame(b"hi"), b"\x82\x02hi");
        let f = ws_client_frame(&[0u8; 200]);
        assert_eq!(&f[..4], &[0x82, 0x80 | 126, 0, 200]);
        assert_eq!(&f[4..8], &f[8..12]); // zeros masked = the mask
        assert_eq!(f.len(), 8 + 200);
        assert_eq!(&ws_server_frame(&[0u8; 70000])[..2], &[0x82, 127]);
        assert!(check_upgrade(b"HTTP/1.1 101 Switching Protocols\r\n\r\n").is_ok());
        assert!(check_upgrade(b"HTTP/1.1 403 Forbidden\r\n\r\n").is_err());
    }
}
