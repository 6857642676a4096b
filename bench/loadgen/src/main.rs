//! ferroloop-loadgen: a loopback-only load generator for ferroloop's network benchmarks, and
//! the pure-Rust "ceiling" server measured under the same load.
//!
//! Only ever connects to (or listens on) 127.0.0.0/8, ::1 or a Unix socket path; every run is
//! bounded in time and stops by itself.

mod client;
mod hist;
mod json;
mod server;
mod sys;

use std::process::ExitCode;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use client::{ClientConfig, Mode, Stats};
use server::ServerConfig;
use sys::Target;

const USAGE: &str = "\
ferroloop-loadgen: loopback-only echo / HTTP load generator, and a minimal epoll server

USAGE:
  ferroloop-loadgen [client] (--tcp HOST:PORT | --unix PATH) [OPTIONS]
  ferroloop-loadgen serve    (--tcp HOST:PORT | --unix PATH) [SERVE OPTIONS]

CLIENT: N connections, each with one request in flight: send a SIZE-byte message and wait for
the full echo (checked byte for byte), or in http mode send a keep-alive GET and read one
HTTP/1.1 response (by Content-Length), or in ws mode open a WebSocket (GET --path with
Upgrade: websocket, expecting 101) and then send one SIZE-byte binary message and wait for the
same message echoed back as one frame. Runs --warmup seconds, then measures for --duration
seconds, then prints one JSON object on stdout (round trips/s, bytes/s, latency percentiles,
errors). Exit status 0 when the run had round trips and no errors, 1 otherwise, 2 on bad usage.

  --tcp HOST:PORT        127.0.0.1:PORT, [::1]:PORT or localhost:PORT (loopback only)
  --unix PATH            a Unix stream socket
  --mode echo|http|ws    default echo
  --conns N              concurrent connections (default 32)
  --size BYTES           echo message size (default 1024; suffixes k/K = KiB, m/M = MiB)
  --warmup SECONDS       not measured (default 1)
  --duration SECONDS     measured (default 5)
  --threads N            client threads, each with its own epoll (default 1)
  --path PATH            http request / ws handshake path (default /)
  --connect-timeout S    default 5

SERVE: a single-threaded epoll server: echo, or http answering every GET with a fixed
200 response (Hello, World!). Prints {\"listening\": \"ADDR\"} on stdout once bound (port 0
picks a free port), then serves until --max-time or, with --stop-on-stdin-eof, until stdin closes.

  --mode echo|http       default echo
  --max-time SECONDS     default 600
  --stop-on-stdin-eof    exit when stdin reaches end of file (the parent went away)
  --http-body BYTES      http response body size (default: the 13-byte Hello, World!)
";

struct Args {
    items: Vec<String>,
    pos: usize,
}

impl Args {
    /// `--key value` or `--key=value`: returns (key, Some(inline value) | None).
    fn next_flag(&mut self) -> Option<(String, Option<String>)> {
        let a = self.items.get(self.pos)?.clone();
        self.pos += 1;
        match a.split_once('=') {
            Some((k, v)) if k.starts_with("--") => Some((k.to_string(), Some(v.to_string()))),
            _ => Some((a, None)),
        }
    }

    fn value(&mut self, key: &str, inline: Option<String>) -> Result<String, String> {
        if let Some(v) = inline {
            return Ok(v);
        }
        let v = self
            .items
            .get(self.pos)
            .cloned()
            .ok_or_else(|| format!("{key} needs a value"))?;
        self.pos += 1;
        Ok(v)
    }
}

fn parse_seconds(key: &str, v: &str, max: f64) -> Result<Duration, String> {
    let x: f64 = v
        .parse()
        .map_err(|_| format!("{key}: {v:?} is not a number of seconds"))?;
    if !(0.0..=max).contains(&x) {
        return Err(format!("{key}: {x} is out of range (0 to {max} seconds)"));
    }
    Ok(Duration::from_secs_f64(x))
}

fn parse_count(key: &str, v: &str, min: usize, max: usize) -> Result<usize, String> {
    let (num, mult) = match v.char_indices().last() {
        Some((i, 'k' | 'K')) => (&v[..i], 1024),
        Some((i, 'm' | 'M')) => (&v[..i], 1024 * 1024),
        _ => (v, 1),
    };
    let n = num
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{key}: {v:?} is not a whole number"))?;
    if n < min || n > max {
        return Err(format!("{key}: {n} is out of range ({min} to {max})"));
    }
    Ok(n)
}

fn parse_mode(v: &str) -> Result<Mode, String> {
    match v {
        "echo" => Ok(Mode::Echo),
        "http" => Ok(Mode::Http),
        "ws" => Ok(Mode::Ws),
        _ => Err(format!("--mode: {v:?} is not one of echo, http, ws")),
    }
}

fn parse_target(key: &str, v: String) -> Result<Target, String> {
    if key == "--tcp" {
        Ok(Target::Tcp(sys::parse_loopback(&v)?))
    } else if v.is_empty() {
        Err("--unix needs a path".into())
    } else {
        Ok(Target::Unix(v.into()))
    }
}

enum Command {
    Client(ClientConfig),
    Serve(ServerConfig),
    Help,
}

fn parse(argv: Vec<String>) -> Result<Command, String> {
    let mut args = Args {
        items: argv,
        pos: 0,
    };
    let serve = match args.items.first().map(String::as_str) {
        Some("serve") => {
            args.pos = 1;
            true
        }
        Some("client") => {
            args.pos = 1;
            false
        }
        _ => false,
    };
    let mut target = None;
    let mut mode = Mode::Echo;
    let mut conns = 32;
    let mut size = 1024;
    let mut warmup = Duration::from_secs(1);
    let mut duration = Duration::from_secs(5);
    let mut threads = 1;
    let mut path = "/".to_string();
    let mut connect_timeout = Duration::from_secs(5);
    let mut max_time = Duration::from_secs(600);
    let mut watch_stdin = false;
    let mut body = 0;
    while let Some((key, inline)) = args.next_flag() {
        match key.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--tcp" | "--unix" => target = Some(parse_target(&key, args.value(&key, inline)?)?),
            "--mode" => mode = parse_mode(&args.value(&key, inline)?)?,
            "--conns" => conns = parse_count(&key, &args.value(&key, inline)?, 1, 10_000)?,
            "--size" => size = parse_count(&key, &args.value(&key, inline)?, 1, 64 << 20)?,
            "--warmup" => warmup = parse_seconds(&key, &args.value(&key, inline)?, 600.0)?,
            "--duration" => duration = parse_seconds(&key, &args.value(&key, inline)?, 3600.0)?,
            "--threads" => threads = parse_count(&key, &args.value(&key, inline)?, 1, 64)?,
            "--path" => {
                path = args.value(&key, inline)?;
                if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
                    return Err(format!(
                        "--path: {path:?} must start with / and have no spaces"
                    ));
                }
            }
            "--connect-timeout" => {
                connect_timeout = parse_seconds(&key, &args.value(&key, inline)?, 60.0)?
            }
            "--max-time" if serve => {
                max_time = parse_seconds(&key, &args.value(&key, inline)?, 86_400.0)?
            }
            "--stop-on-stdin-eof" if serve => watch_stdin = true,
            "--http-body" if serve => {
                body = parse_count(&key, &args.value(&key, inline)?, 0, 64 << 20)?
            }
            _ => return Err(format!("unknown argument {key:?} (see --help)")),
        }
    }
    let target = target.ok_or("one of --tcp HOST:PORT or --unix PATH is required")?;
    if serve {
        if mode == Mode::Ws {
            return Err("serve: --mode ws is client-only".into());
        }
        return Ok(Command::Serve(ServerConfig {
            target,
            mode,
            max_time,
            watch_stdin,
            body,
        }));
    }
    if duration.is_zero() {
        return Err("--duration must be more than 0".into());
    }
    if connect_timeout.is_zero() {
        connect_timeout = Duration::from_millis(1);
    }
    Ok(Command::Client(ClientConfig {
        target,
        mode,
        conns,
        size,
        warmup,
        duration,
        threads: threads.min(conns),
        path,
        connect_timeout,
    }))
}

fn report(cfg: &ClientConfig, stats: &Stats, error: Option<&str>, elapsed: f64) -> String {
    use json::{number, object, string};
    let secs = cfg.duration.as_secs_f64();
    let us = |ns: u64| number(ns as f64 / 1000.0);
    let h = &stats.hist;
    let latency = object(&[
        ("mean", number(h.mean() / 1000.0)),
        ("p50", us(h.quantile(0.50))),
        ("p90", us(h.quantile(0.90))),
        ("p99", us(h.quantile(0.99))),
        ("p999", us(h.quantile(0.999))),
        ("max", us(h.max)),
    ]);
    let detail = object(&[
        ("connect", stats.connect_errors.to_string()),
        ("io", stats.io_errors.to_string()),
        ("eof", stats.eof_errors.to_string()),
        ("protocol", stats.protocol_errors.to_string()),
    ]);
    let first = error
        .map(str::to_string)
        .or_else(|| stats.first_error.clone());
    object(&[
        ("mode", string(cfg.mode.name())),
        ("target", string(&cfg.target.to_string())),
        ("conns", cfg.conns.to_string()),
        ("size", cfg.size.to_string()),
        ("threads", cfg.threads.to_string()),
        ("warmup_s", number(cfg.warmup.as_secs_f64())),
        ("duration_s", number(secs)),
        ("elapsed_s", number(elapsed)),
        ("round_trips", stats.round_trips.to_string()),
        ("round_trips_total", stats.round_trips_total.to_string()),
        (
            "round_trips_per_sec",
            number(stats.round_trips as f64 / secs),
        ),
        (
            "bytes_per_sec",
            number((stats.tx_bytes + stats.rx_bytes) as f64 / secs),
        ),
        ("rx_bytes_per_sec", number(stats.rx_bytes as f64 / secs)),
        ("latency_us", latency),
        ("reconnects", stats.reconnects.to_string()),
        (
            "errors",
            (stats.errors() + error.is_some() as u64).to_string(),
        ),
        ("error_detail", detail),
        (
            "first_error",
            first.as_deref().map_or("null".into(), string),
        ),
    ])
}

fn run_client(cfg: &ClientConfig) -> ExitCode {
    let host = match &cfg.target {
        Target::Tcp(a) => a.to_string(),
        Target::Unix(_) => "localhost".to_string(),
    };
    let (request, message, upgrade) = match cfg.mode {
        Mode::Echo => {
            let m = client::echo_message(cfg.size);
            (m.clone(), m, Vec::new())
        }
        Mode::Http => (
            client::http_request(&cfg.path, &host),
            Vec::new(),
            Vec::new(),
        ),
        Mode::Ws => {
            let m = client::echo_message(cfg.size);
            (
                client::ws_client_frame(&m),
                client::ws_server_frame(&m),
                client::ws_upgrade(&cfg.path, &host),
            )
        }
    };
    // Watchdog: whatever happens (a server that stops accepting, a stuck connect), stop.
    let limit = cfg.warmup + cfg.duration + cfg.connect_timeout * 2 + Duration::from_secs(10);
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("ferroloop-loadgen: still running after {limit:?}; giving up");
        println!("{{\"errors\": 1, \"first_error\": \"watchdog: run did not finish\"}}");
        std::process::exit(1);
    });

    let t0 = Instant::now();
    let threads = cfg.threads.max(1);
    let barrier = Barrier::new(threads);
    let results: Vec<Result<Stats, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let n = cfg.conns / threads + usize::from(i < cfg.conns % threads);
                let (req, msg, up, bar) = (&request, &message, &upgrade, &barrier);
                s.spawn(move || client::run_thread(cfg, n, req, msg, up, bar))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("client thread panicked".to_string()))
            })
            .collect()
    });
    let mut total = Stats::default();
    let mut fatal = None;
    for r in results {
        match r {
            Ok(s) => total.merge(&s),
            Err(e) => {
                fatal.get_or_insert(e);
            }
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    println!("{}", report(cfg, &total, fatal.as_deref(), elapsed));
    if let Some(e) = &fatal {
        eprintln!("ferroloop-loadgen: {e}");
    }
    if fatal.is_none() && total.errors() == 0 && total.round_trips > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match parse(argv) {
        Ok(Command::Help) => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Command::Client(cfg)) => run_client(&cfg),
        Ok(Command::Serve(cfg)) => match server::serve(&cfg) {
            Ok(()) => {
                if let Target::Unix(p) = &cfg.target {
                    let _ = std::fs::remove_file(p);
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ferroloop-loadgen serve: {e}");
                ExitCode::from(1)
            }
        },
        Err(e) => {
            eprintln!("ferroloop-loadgen: {e} (see --help)");
            ExitCode::from(2)
        }
    }
}
