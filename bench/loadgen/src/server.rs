//! The "ceiling": a minimal single-threaded epoll server in plain Rust, echo or HTTP/1.1
//! keep-alive with a fixed response. No event-loop machinery, no Python: the fastest a server
//! on this machine can answer the load generator.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use crate::client::Mode;
use crate::sys::{is_would_block, Epoll, Listener, Stream, Target, EV_ET, EV_IN, EV_OUT, EV_RDHUP};

pub struct ServerConfig {
    pub target: Target,
    pub mode: Mode,
    pub max_time: Duration,
    pub watch_stdin: bool,
    pub body: usize,
}

/// The fixed HTTP response: `Hello, World!` unless a body size is given.
pub fn http_response(body: usize) -> Vec<u8> {
    let payload: Vec<u8> = if body == 0 {
        b"Hello, World!".to_vec()
    } else {
        (0..body).map(|i| b'a' + (i % 26) as u8).collect()
    };
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        payload.len()
    )
    .into_bytes();
    r.extend_from_slice(&payload);
    r
}

struct SConn {
    stream: Stream,
    out: Vec<u8>,
    out_pos: usize,
    inbuf: Vec<u8>,
}

const LISTENER: u64 = 0;
const STDIN: u64 = 1;
const FIRST_CONN: u64 = 2;

/// Drains the socket: flush pending output, read, answer; until a read or write would block.
fn pump(c: &mut SConn, mode: Mode, scratch: &mut [u8], response: &[u8]) -> io::Result<bool> {
    loop {
        while c.out_pos < c.out.len() {
            match c.stream.write(&c.out[c.out_pos..]) {
                Ok(n) => c.out_pos += n,
                Err(e) if is_would_block(&e) => return Ok(true),
                Err(e) => return Err(e),
            }
        }
        c.out.clear();
        c.out_pos = 0;
        let n = match c.stream.read(scratch) {
            Ok(0) => return Ok(false),
            Ok(n) => n,
            Err(e) if is_would_block(&e) => return Ok(true),
            Err(e) => return Err(e),
        };
        match mode {
            Mode::Echo => {
                // Write straight from the read buffer; keep only what the socket refused.
                let mut pos = 0;
                while pos < n {
                    match c.stream.write(&scratch[pos..n]) {
                        Ok(w) => pos += w,
                        Err(e) if is_would_block(&e) => break,
                        Err(e) => return Err(e),
                    }
                }
                if pos < n {
                    c.out.extend_from_slice(&scratch[pos..n]);
                    return Ok(true); // wait for EPOLLOUT before reading more
                }
            }
            Mode::Ws => unreachable!("ws is client-only (checked by the parser)"),
            Mode::Http => {
                // Requests without a body (GET): each ends at a blank line.
                c.inbuf.extend_from_slice(&scratch[..n]);
                let mut start = 0;
                while let Some(p) = c.inbuf[start..].windows(4).position(|w| w == b"\r\n\r\n") {
                    c.out.extend_from_slice(response);
                    start += p + 4;
                }
                c.inbuf.drain(..start);
                if c.inbuf.len() > 64 * 1024 {
                    return Ok(false); // not HTTP we understand: drop the connection
                }
            }
        }
        // A short read drained the socket (stream sockets); with edge triggering, later data
        // raises a new event, so skip the read() that would only return EAGAIN (libuv and the
        // Python loops stop after a short read too). Pending output is flushed first.
        if n < scratch.len() {
            while c.out_pos < c.out.len() {
                match c.stream.write(&c.out[c.out_pos..]) {
                    Ok(w) => c.out_pos += w,
                    Err(e) if is_would_block(&e) => return Ok(true),
                    Err(e) => return Err(e),
                }
            }
            c.out.clear();
            c.out_pos = 0;
            return Ok(true);
        }
    }
}

pub fn serve(cfg: &ServerConfig) -> Result<(), String> {
    let listener = Listener::bind(&cfg.target).map_err(|e| format!("bind {}: {e}", cfg.target))?;
    let bound = listener
        .local_target(&cfg.target)
        .map_err(|e| format!("getsockname: {e}"))?;
    let mut epoll = Epoll::new(256).map_err(|e| format!("epoll: {e}"))?;
    epoll
        .add(listener.fd(), EV_IN, LISTENER)
        .map_err(|e| format!("epoll_ctl: {e}"))?;
    if cfg.watch_stdin {
        // A regular file or /dev/null cannot be polled (EPERM): then only --max-time applies.
        if let Err(e) = epoll.add(0, EV_IN | EV_RDHUP, STDIN) {
            eprintln!("ferroloop-loadgen serve: cannot watch stdin ({e}); relying on --max-time");
        }
    }
    {
        let mut out = io::stdout().lock();
        let line = crate::json::object(&[("listening", crate::json::string(&bound.to_string()))]);
        writeln!(out, "{line}")
            .and_then(|_| out.flush())
            .map_err(|e| format!("stdout: {e}"))?;
    }

    let response = http_response(cfg.body);
    let mut scratch = vec![0u8; 256 * 1024]; // what asyncio reads at once (max_size)
    let mut conns: Vec<Option<SConn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut events = Vec::new();
    let deadline = Instant::now() + cfg.max_time;
    loop {
        let now = Instant::now();
        if now >= deadline {
            eprintln!("ferroloop-loadgen serve: --max-time reached, exiting");
            break;
        }
        let timeout = deadline.duration_since(now).as_millis().clamp(1, 1000) as i32;
        epoll
            .wait(timeout, &mut events)
            .map_err(|e| format!("epoll_wait: {e}"))?;
        for &(token, _) in &events {
            if token == LISTENER {
                loop {
                    let s = match listener.accept() {
                        Ok(Some(s)) => s,
                        Ok(None) => break,
                        Err(e) => return Err(format!("accept: {e}")),
                    };
                    let idx = free.pop().unwrap_or_else(|| {
                        conns.push(None);
                        conns.len() - 1
                    });
                    let ev = EV_IN | EV_OUT | EV_RDHUP | EV_ET;
                    if let Err(e) = epoll.add(s.fd(), ev, idx as u64 + FIRST_CONN) {
                        eprintln!("epoll_ctl: {e}");
                        free.push(idx);
                        continue;
                    }
                    let mut c = SConn {
                        stream: s,
                        out: Vec::new(),
                        out_pos: 0,
                        inbuf: Vec::new(),
                    };
                    // Data may already be waiting: with edge triggering, look now.
                    if matches!(pump(&mut c, cfg.mode, &mut scratch, &response), Ok(true)) {
                        conns[idx] = Some(c);
                    } else {
                        free.push(idx);
                    }
                }
            } else if token == STDIN {
                let mut buf = [0u8; 512];
                match io::stdin().read(&mut buf) {
                    Ok(0) | Err(_) => return Ok(()), // the parent went away: stop
                    Ok(_) => {}
                }
            } else {
                let idx = (token - FIRST_CONN) as usize;
                let Some(c) = conns.get_mut(idx).and_then(Option::as_mut) else {
                    continue;
                };
                if !matches!(pump(c, cfg.mode, &mut scratch, &response), Ok(true)) {
                    conns[idx] = None;
                    free.push(idx);
                }
            }
        }
    }
    Ok(())
}
