//! `edge-agent top`: a live view of a running agent in a terminal (like `vector top`),
//! read from the agent's Prometheus `/metrics` endpoint over plain HTTP.
//!
//! Every `interval` the endpoint is scraped, and a compact plain-text panel (at most 80
//! columns, no colours, usable over SSH) is redrawn: message, queue and sync rates from the
//! last two scrapes, the backlog with the time it takes to drain or to fill the queue, the
//! upstream and source broker state, drops, invalid messages and filtered readings by
//! reason, inference and the running model's digest, and the upstream's last error while
//! it is down. Only what the agent exports is shown (`telemetry.rs` names it). `--once`
//! scrapes twice and prints one frame, for scripts and bug reports.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::runtime::telemetry::SYNC_OUTCOMES;

/// The endpoint `top` reads by default: `/metrics` of an agent run with the default
/// `--listen`.
pub const DEFAULT_URL: &str = "http://127.0.0.1:9464/metrics";

/// Longest a scrape may take (connecting included).
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response read from the endpoint (an agent's is a few tens of KiB).
const MAX_RESPONSE: usize = 16 * 1024 * 1024;
/// Width of the panel.
const WIDTH: usize = 80;
/// Width of the label column.
const LABEL: usize = 20;
/// What a figure that needs two scrapes shows on the first frame.
const NO_RATE: &str = "—";
/// The ANSI sequence that moves the cursor home and clears the screen.
const CLEAR: &str = "\x1b[H\x1b[2J";

/// What `edge-agent top` was asked to do.
#[derive(Clone, Debug)]
pub struct TopOptions {
    /// The agent's `/metrics` URL (`http://` only).
    pub url: String,
    /// Time between two scrapes.
    pub interval: Duration,
    /// Scrape twice, print one frame without clearing the screen, and exit.
    pub once: bool,
}

/// Runs `edge-agent top`: exit 0 after `--once` or on Ctrl-C; exit 1 with a one-line
/// error on stderr for a bad URL, or in `--once` for an endpoint that cannot be scraped.
pub fn run(options: TopOptions) -> anyhow::Result<ExitCode> {
    let endpoint = match Endpoint::parse(&options.url) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("edge-agent top: {e:#}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if options.interval.is_zero() {
        eprintln!("edge-agent top: --interval must be more than 0");
        return Ok(ExitCode::FAILURE);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        if options.once {
            once(&endpoint, options.interval).await
        } else {
            live(&endpoint, options.interval).await
        }
    })
}

/// `--once`: two scrapes `interval` apart, one frame.
async fn once(endpoint: &Endpoint, interval: Duration) -> anyhow::Result<ExitCode> {
    let unreachable = |e: anyhow::Error| {
        eprintln!(
            "edge-agent top: agent unreachable at {}: {e:#}",
            endpoint.url
        );
        ExitCode::FAILURE
    };
    let first = match scrape(endpoint).await {
        Ok(s) => s,
        Err(e) => return Ok(unreachable(e)),
    };
    let first_at = Instant::now();
    tokio::time::sleep(interval).await;
    let second = match scrape(endpoint).await {
        Ok(s) => s,
        Err(e) => return Ok(unreachable(e)),
    };
    let view = View {
        url: &endpoint.url,
        interval,
        current: &second,
        previous: Some((&first, first_at.elapsed())),
    };
    let mut out = std::io::stdout().lock();
    for line in render(&view) {
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The live view: a frame every `interval` until Ctrl-C.
async fn live(endpoint: &Endpoint, interval: Duration) -> anyhow::Result<ExitCode> {
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        // Without a handler Ctrl-C would still end the process, only not with exit 0.
        if tokio::signal::ctrl_c().await.is_ok() {
            on_signal.cancel();
        }
    });
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut previous: Option<(Snapshot, Instant)> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let scraped = tokio::select! {
            _ = stop.cancelled() => break,
            s = scrape(endpoint) => s,
        };
        let lines = match scraped {
            Ok(current) => {
                let now = Instant::now();
                let lines = render(&View {
                    url: &endpoint.url,
                    interval,
                    current: &current,
                    previous: previous.as_ref().map(|(s, at)| (s, now - *at)),
                });
                previous = Some((current, now));
                lines
            }
            Err(e) => {
                // After an outage the agent may have restarted: rates start afresh.
                previous = None;
                let mut lines = vec!["edge-agent top".to_string(), String::new()];
                lines.extend(wrap(
                    &format!("agent unreachable at {}: {e:#}", endpoint.url),
                    WIDTH,
                ));
                lines.push(format!(
                    "retrying every {}",
                    duration(interval.as_secs_f64())
                ));
                lines
            }
        };
        let mut frame = String::from(CLEAR);
        for line in lines {
            frame.push_str(&line);
            frame.push('\n');
        }
        let mut out = std::io::stdout().lock();
        out.write_all(frame.as_bytes())?;
        out.flush()?;
    }
    println!();
    Ok(ExitCode::SUCCESS)
}

/// An `http://host[:port][/path]` URL, split for a plain HTTP/1.1 GET.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The URL as given.
    pub url: String,
    /// Host name or address (an IPv6 address without its brackets).
    pub host: String,
    /// Port (80 when the URL names none).
    pub port: u16,
    /// Path and query (`/metrics` when the URL has no path).
    pub path: String,
    /// The `Host` header: host and port as the URL writes them.
    host_header: String,
}

impl Endpoint {
    /// Parses `url`; anything but `http://` is refused with a clear error.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let Some(rest) = url.strip_prefix("http://") else {
            match url.split_once("://") {
                Some((scheme, _)) => bail!(
                    "{url}: only http:// URLs are supported, not {scheme}:// (the agent serves /metrics over plain HTTP)"
                ),
                None => bail!("{url}: not a URL (expected http://HOST:PORT/metrics)"),
            }
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/metrics".to_string()),
        };
        if authority.contains('@') {
            bail!("{url}: user info in the URL is not supported");
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .with_context(|| format!("{url}: unclosed '[' in the host"))?;
            match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None if after.is_empty() => (host, None),
                None => bail!("{url}: unexpected {after:?} after the host"),
            }
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            bail!("{url}: no host");
        }
        let port = match port {
            None => 80,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .with_context(|| format!("{url}: invalid port {p:?}"))?,
        };
        Ok(Self {
            url: url.to_string(),
            host: host.to_string(),
            port,
            path,
            host_header: authority.to_string(),
        })
    }

    /// The GET request for the endpoint.
    fn request(&self) -> String {
        format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/plain\r\nUser-Agent: edge-agent-top/{}\r\nConnection: close\r\n\r\n",
            self.path,
            self.host_header,
            env!("CARGO_PKG_VERSION")
        )
    }
}

/// Scrapes the endpoint once: its metrics, or why not.
pub async fn scrape(endpoint: &Endpoint) -> anyhow::Result<Snapshot> {
    let raw = tokio::time::timeout(SCRAPE_TIMEOUT, fetch(endpoint))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {SCRAPE_TIMEOUT:?}"))??;
    let body = parse_response(&raw)?;
    let snapshot = Snapshot::parse(&body).context("reading the metrics")?;
    if snapshot.sum("edge_agent_build_info").is_none() {
        bail!("no edge_agent_build_info: not the /metrics of an edge-agent");
    }
    Ok(snapshot)
}

/// One HTTP/1.1 GET: the whole response, as sent.
async fn fetch(endpoint: &Endpoint) -> anyhow::Result<Vec<u8>> {
    let mut stream = tokio::net::TcpStream::connect((endpoint.host.as_str(), endpoint.port))
        .await
        .with_context(|| format!("connecting to {}", endpoint.host_header))?;
    stream
        .write_all(endpoint.request().as_bytes())
        .await
        .context("sending the request")?;
    let mut raw = Vec::new();
    (&mut stream)
        .take(MAX_RESPONSE as u64 + 1)
        .read_to_end(&mut raw)
        .await
        .context("reading the response")?;
    if raw.len() > MAX_RESPONSE {
        bail!("the response is larger than {}", bytes(MAX_RESPONSE as f64));
    }
    Ok(raw)
}

/// The body of an HTTP/1.x response read to its end, if its status is 200.
pub fn parse_response(raw: &[u8]) -> anyhow::Result<String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("the connection closed before the response headers ended")?;
    let head = std::str::from_utf8(&raw[..end]).context("the response headers are not text")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next().unwrap_or_default().starts_with("HTTP/1.") {
        bail!("not an HTTP/1 response: {:?}", clip(status_line, 40));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {:?}", clip(status_line, 40)))?;
    if status != 200 {
        bail!("HTTP {status} {}", parts.next().unwrap_or_default().trim());
    }
    let (mut chunked, mut length) = (false, None);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .with_context(|| format!("bad Content-Length {value:?}"))?,
            );
        }
    }
    let body = &raw[end + 4..];
    let body = if chunked {
        dechunk(body)?
    } else if let Some(n) = length {
        if body.len() < n {
            bail!(
                "the connection closed after {} of {n} body bytes",
                body.len()
            );
        }
        body[..n].to_vec()
    } else {
        body.to_vec()
    };
    String::from_utf8(body).context("the metrics are not UTF-8")
}

/// Decodes a `Transfer-Encoding: chunked` body.
fn dechunk(mut body: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("a chunk size line is cut short")?;
        let line = std::str::from_utf8(&body[..eol]).context("a chunk size is not text")?;
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16)
            .with_context(|| format!("bad chunk size {:?}", clip(size, 20)))?;
        body = &body[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size + 2 || &body[size..size + 2] != b"\r\n" {
            bail!("a chunk is cut short");
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

/// One series of the text format: `name{labels} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Metric name (with `_bucket`, `_sum`, `_count` for a histogram's series).
    pub name: String,
    /// Labels in the order written.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// The value of label `name`.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The metrics of one scrape.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Every series, in the order exported.
    pub samples: Vec<Sample>,
}

impl Snapshot {
    /// Parses the Prometheus text exposition format: `# ` lines and blank lines are
    /// skipped, every other line must be `name[{label="value",...}] value [timestamp]`.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let samples = text
            .lines()
            .enumerate()
            .map(|(i, line)| (i, line.trim()))
            .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
            .map(|(i, line)| {
                parse_sample(line).with_context(|| format!("line {}: {:?}", i + 1, clip(line, 60)))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { samples })
    }

    fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// The sum of every series of `name`; `None` when there is none.
    pub fn sum(&self, name: &str) -> Option<f64> {
        self.named(name)
            .map(|s| s.value)
            .fold(None, |acc, v| Some(acc.unwrap_or(0.0) + v))
    }

    /// The sum of the series of `name` whose `label` is `value`.
    pub fn sum_where(&self, name: &str, label: &str, value: &str) -> Option<f64> {
        self.named(name)
            .filter(|s| s.label(label) == Some(value))
            .map(|s| s.value)
            .fold(None, |acc, v| Some(acc.unwrap_or(0.0) + v))
    }

    /// The values of `label` on the series of `name`, each with its series' sum, in the
    /// order first exported.
    pub fn by_label(&self, name: &str, label: &str) -> Vec<(String, f64)> {
        let mut out: Vec<(String, f64)> = Vec::new();
        for s in self.named(name) {
            let Some(v) = s.label(label) else { continue };
            match out.iter_mut().find(|(k, _)| k == v) {
                Some((_, sum)) => *sum += s.value,
                None => out.push((v.to_string(), s.value)),
            }
        }
        out
    }

    /// The first value of `label` on a series of `name`.
    pub fn label(&self, name: &str, label: &str) -> Option<&str> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .find_map(|s| s.label(label))
    }

    /// The distinct `pipeline` labels of the agent's series.
    pub fn pipelines(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for s in &self.samples {
            if let Some(p) = s.label("pipeline")
                && s.name.starts_with("edge_agent_")
                && !out.contains(&p)
            {
                out.push(p);
            }
        }
        out
    }

    /// The cumulative buckets of histogram `name` (`name_bucket{le}`), by upper bound.
    pub fn buckets(&self, name: &str) -> Vec<(f64, f64)> {
        let mut out: Vec<(f64, f64)> = self
            .by_label(&format!("{name}_bucket"), "le")
            .into_iter()
            .filter_map(|(le, n)| Some((parse_value(&le)?, n)))
            .collect();
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }
}

fn parse_sample(line: &str) -> anyhow::Result<Sample> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_ascii_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    let valid = |c: char, first: bool| {
        c.is_ascii_alphabetic() || c == '_' || c == ':' || (!first && c.is_ascii_digit())
    };
    if name.is_empty() || !name.chars().enumerate().all(|(i, c)| valid(c, i == 0)) {
        bail!("invalid metric name {:?}", clip(name, 40));
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = inner;
        loop {
            rest = rest.trim_start();
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = rest.split_once('=').context("a label has no '='")?;
            let key = key.trim();
            if key.is_empty() || !key.chars().enumerate().all(|(i, c)| valid(c, i == 0)) {
                bail!("invalid label name {:?}", clip(key, 40));
            }
            let after = after
                .trim_start()
                .strip_prefix('"')
                .with_context(|| format!("the value of label {key} is not quoted"))?;
            let (value, after) = label_value(after)
                .with_context(|| format!("the value of label {key} is not closed"))?;
            labels.push((key.to_string(), value));
            rest = after.trim_start();
            if let Some(after) = rest.strip_prefix(',') {
                rest = after;
            } else if !rest.starts_with('}') {
                bail!("expected ',' or '}}' after label {key}");
            }
        }
    }
    let mut fields = rest.split_ascii_whitespace();
    let value = fields.next().context("no value")?;
    let value = parse_value(value).with_context(|| format!("invalid value {value:?}"))?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .with_context(|| format!("invalid timestamp {ts:?}"))?;
    }
    if fields.next().is_some() {
        bail!("unexpected text after the value");
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// A quoted label value (after its opening quote), unescaped, and the text after it.
fn label_value(text: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((value, &text[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => value.push('\n'),
                other => value.push(other),
            },
            c => value.push(c),
        }
    }
    None
}

/// A sample value: a float, `+Inf`, `-Inf` or `NaN`.
fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

/// The change per second of a counter between two scrapes `secs` apart: `None` without an
/// earlier scrape, or when the counter went down (the agent restarted in between).
pub fn per_second(previous: Option<f64>, current: Option<f64>, secs: f64) -> Option<f64> {
    let (p, c) = (previous?, current?);
    (secs > 0.0 && c >= p).then(|| (c - p) / secs)
}

/// Where the backlog is heading.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Outlook {
    /// Not known yet (one scrape only).
    Unknown,
    /// Nothing queued.
    Empty,
    /// Records leave faster than they come: empty in about this many seconds.
    Drains(f64),
    /// Records come faster than they leave: the queue is full in about this many seconds.
    FullIn(f64),
    /// Records come faster than they leave and there is no room left.
    Full,
    /// Records come faster than they leave; the queue's bytes do not grow (yet).
    Growing,
    /// Records queued, none leaving and none coming.
    NotDraining,
}

impl Outlook {
    /// Time to drain (backlog / (synced rate - queued rate)) when the backlog shrinks,
    /// time to full (room / growth of the queue's bytes) when it grows. `room` is what
    /// is left of the capacity, `None` when the capacity is not known.
    pub fn of(
        backlog_records: f64,
        queued_per_s: Option<f64>,
        synced_per_s: Option<f64>,
        room_bytes: Option<f64>,
        bytes_per_s: Option<f64>,
    ) -> Self {
        let (Some(queued), Some(synced)) = (queued_per_s, synced_per_s) else {
            return Self::Unknown;
        };
        if backlog_records <= 0.0 {
            return Self::Empty;
        }
        let net = synced - queued;
        if net > 0.0 {
            return Self::Drains(backlog_records / net);
        }
        if net == 0.0 {
            return Self::NotDraining;
        }
        match (room_bytes, bytes_per_s) {
            (Some(room), _) if room <= 0.0 => Self::Full,
            (Some(room), Some(rate)) if rate > 0.0 => Self::FullIn(room / rate),
            _ => Self::Growing,
        }
    }
}

impl std::fmt::Display for Outlook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unknown => f.write_str(NO_RATE),
            Self::Empty => f.write_str("empty"),
            Self::Drains(s) => write!(f, "drains in {}", duration(*s)),
            Self::FullIn(s) => write!(f, "growing, full in {}", duration(*s)),
            Self::Full => f.write_str("full"),
            Self::Growing => f.write_str("growing"),
            Self::NotDraining => f.write_str("not draining (nothing synced)"),
        }
    }
}

/// A duration for a person: `0.4s`, `42s`, `3m 05s`, `2h 10m`, `3d 04h`.
pub fn duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return NO_RATE.to_string();
    }
    if secs < 10.0 {
        if secs.fract() == 0.0 {
            return format!("{secs:.0}s");
        }
        return format!("{secs:.1}s");
    }
    let s = secs.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// A byte count: `512 B`, `1.5 KiB`, `256.0 MiB`.
pub fn bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n;
    let mut unit = 0;
    while value.abs() >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A rate: `12.5/s`, `1520/s`, or `—` when unknown.
pub fn rate(per_s: Option<f64>) -> String {
    match per_s {
        None => NO_RATE.to_string(),
        Some(r) if r >= 1000.0 => format!("{r:.0}/s"),
        Some(r) => format!("{r:.1}/s"),
    }
}

/// A latency: `850 µs`, `12.5 ms`, `1.20 s`.
pub fn latency(secs: f64) -> String {
    if secs < 0.001 {
        format!("{:.0} µs", secs * 1e6)
    } else if secs < 1.0 {
        format!("{:.1} ms", secs * 1e3)
    } else {
        format!("{secs:.2} s")
    }
}

/// The upper bound of the bucket holding quantile `q` of the observations counted by
/// cumulative `buckets` (`(le, count)`, sorted): the smallest `le` with at least `q` of
/// the count. `None` without observations.
pub fn quantile_bound(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    buckets
        .iter()
        .find(|(_, n)| *n >= q * total)
        .map(|(le, _)| *le)
}

/// What a frame is drawn from.
pub struct View<'a> {
    /// The URL scraped.
    pub url: &'a str,
    /// Time between scrapes.
    pub interval: Duration,
    /// The latest scrape.
    pub current: &'a Snapshot,
    /// The scrape before, and the time between the two; `None` on the first frame.
    pub previous: Option<(&'a Snapshot, Duration)>,
}

impl View<'_> {
    fn total(&self, name: &str) -> Option<f64> {
        self.current.sum(name)
    }

    fn rate(&self, name: &str) -> Option<f64> {
        let (prev, elapsed) = self.previous?;
        per_second(
            prev.sum(name),
            self.current.sum(name),
            elapsed.as_secs_f64(),
        )
    }

    fn rate_where(&self, name: &str, label: &str, value: &str) -> Option<f64> {
        let (prev, elapsed) = self.previous?;
        per_second(
            prev.sum_where(name, label, value),
            self.current.sum_where(name, label, value),
            elapsed.as_secs_f64(),
        )
    }

    /// Change per second of a gauge (either sign).
    fn gauge_rate(&self, name: &str) -> Option<f64> {
        let (prev, elapsed) = self.previous?;
        let secs = elapsed.as_secs_f64();
        let (p, c) = (prev.sum(name)?, self.current.sum(name)?);
        (secs > 0.0).then(|| (c - p) / secs)
    }

    /// Buckets of histogram `name` observed since the previous scrape (all of them on the
    /// first frame), with the change of its `_sum` and `_count`.
    fn histogram(&self, name: &str) -> Option<Observed> {
        let (sum, count) = (format!("{name}_sum"), format!("{name}_count"));
        let mut buckets = self.current.buckets(name);
        let (mut s, mut n) = (self.current.sum(&sum)?, self.current.sum(&count)?);
        if let Some((prev, _)) = self.previous {
            let before = prev.buckets(name);
            let (ps, pn) = (prev.sum(&sum)?, prev.sum(&count)?);
            if pn > n || before.len() != buckets.len() {
                return None;
            }
            for ((_, c), (_, p)) in buckets.iter_mut().zip(&before) {
                *c -= p;
            }
            s -= ps;
            n -= pn;
        }
        Some(Observed {
            buckets,
            sum: s,
            count: n,
        })
    }
}

/// Observations of a histogram over some time.
struct Observed {
    /// Cumulative `(le, count)`, by upper bound.
    buckets: Vec<(f64, f64)>,
    /// Sum of the observations.
    sum: f64,
    /// Number of observations.
    count: f64,
}

/// A `label  value` line.
fn line(label: &str, value: impl std::fmt::Display) -> String {
    format!("{label:<LABEL$}{value}")
}

/// A counter's line: its rate, then its total and any note.
fn counter_line(label: &str, per_s: Option<f64>, total: f64, note: &str) -> String {
    format!("{label:<LABEL$}{:>10}  {total:<10.0}{note}", rate(per_s))
        .trim_end()
        .to_string()
}

/// The panel of one frame, each line at most 80 columns.
pub fn render(view: &View) -> Vec<String> {
    let cur = view.current;
    let mut out = Vec::new();
    let pipelines = cur.pipelines();
    let pipeline = if pipelines.is_empty() {
        "(no pipeline label)".to_string()
    } else {
        pipelines.join(", ")
    };
    let mut head = format!("edge-agent top  pipeline {pipeline}");
    if let Some(version) = cur.label("edge_agent_build_info", "version") {
        let _ = write!(head, "  agent {version}");
    }
    out.push(head);
    out.push(format!(
        "{}  every {}",
        view.url,
        duration(view.interval.as_secs_f64())
    ));
    out.push(String::new());
    out.push(format!("{:<LABEL$}{:>10}  total", "", "rate"));

    let counter = |out: &mut Vec<String>, label: &str, name: &str, note: &str| {
        if let Some(total) = view.total(name) {
            out.push(counter_line(label, view.rate(name), total, note));
        }
    };
    // Every label value with a count, one line each under its counter.
    let reasons = |out: &mut Vec<String>, name: &str, label: &str| {
        for (value, total) in cur.by_label(name, label) {
            if total > 0.0 {
                let per_s = view.rate_where(name, label, &value);
                out.push(counter_line(&format!("    {value}"), per_s, total, ""));
            }
        }
    };

    let received = view.total("edge_agent_messages_received_total");
    counter(
        &mut out,
        "messages in",
        "edge_agent_messages_received_total",
        "",
    );
    counter(
        &mut out,
        "  invalid",
        "edge_agent_messages_invalid_total",
        "",
    );
    reasons(&mut out, "edge_agent_messages_invalid_total", "reason");
    if let Some(filtered) = view.total("edge_agent_records_filtered_total") {
        let share = match received {
            Some(r) if r > 0.0 => format!("{:.1}% of messages", 100.0 * filtered / r),
            _ => String::new(),
        };
        counter(
            &mut out,
            "  filtered",
            "edge_agent_records_filtered_total",
            &share,
        );
        reasons(&mut out, "edge_agent_records_filtered_total", "processor");
    }
    counter(
        &mut out,
        "records queued",
        "edge_agent_records_enqueued_total",
        "",
    );
    counter(
        &mut out,
        "records synced",
        "edge_agent_records_synced_total",
        "",
    );
    counter(
        &mut out,
        "records dropped",
        "edge_agent_records_dropped_total",
        "",
    );
    reasons(&mut out, "edge_agent_records_dropped_total", "reason");
    counter(&mut out, "inferences", "edge_agent_inferences_total", "");
    counter(&mut out, "  anomalies", "edge_agent_anomalies_total", "");
    counter(
        &mut out,
        "  inference errors",
        "edge_agent_inference_errors_total",
        "",
    );
    reasons(&mut out, "edge_agent_inference_errors_total", "reason");
    out.push(String::new());

    if let Some(records) = view.total("edge_agent_queue_records") {
        let mut backlog = format!("{records:.0} records");
        if let Some(b) = view.total("edge_agent_queue_bytes") {
            let _ = write!(backlog, ", {}", bytes(b));
        }
        if let Some(age) = view.total("edge_agent_queue_oldest_age_seconds")
            && records > 0.0
        {
            let _ = write!(backlog, ", oldest {}", duration(age));
        }
        if let Some(eta) = view.total("edge_agent_queue_drain_seconds")
            && records > 0.0
            && eta.is_finite()
        {
            let _ = write!(backlog, ", drains in {}", duration(eta));
        }
        out.push(line("backlog", backlog));
        let capacity = view
            .total("edge_agent_queue_capacity_bytes")
            .filter(|c| *c > 0.0);
        let dead = view.total("edge_agent_dead_letter_bytes").unwrap_or(0.0);
        let used = view.total("edge_agent_queue_bytes").unwrap_or(0.0) + dead;
        if let Some(capacity) = capacity {
            out.push(line(
                "queue use",
                format!(
                    "{} of {} ({:.1}%)",
                    bytes(used),
                    bytes(capacity),
                    100.0 * used / capacity
                ),
            ));
        }
        let outlook = Outlook::of(
            records,
            view.rate("edge_agent_records_enqueued_total"),
            view.rate("edge_agent_records_synced_total"),
            capacity.map(|c| c - used),
            view.gauge_rate("edge_agent_queue_bytes"),
        );
        out.push(line("outlook", outlook));
    }
    if let Some(records) = view.total("edge_agent_dead_letter_records") {
        let b = view.total("edge_agent_dead_letter_bytes").unwrap_or(0.0);
        out.push(line(
            "dead letters",
            format!("{records:.0} records, {}", bytes(b)),
        ));
    }

    if let Some(up) = view.total("edge_agent_upstream_up") {
        let mut text = if up >= 1.0 { "up" } else { "DOWN" }.to_string();
        let mut outcomes = cur.by_label("edge_agent_sync_requests_total", "outcome");
        // The agent's order (success, retry, rejected), not the exporter's (by name).
        let rank = |o: &str| SYNC_OUTCOMES.iter().position(|k| *k == o);
        outcomes.sort_by_key(|(o, _)| rank(o).unwrap_or(SYNC_OUTCOMES.len()));
        if !outcomes.is_empty() {
            let list: Vec<String> = outcomes
                .iter()
                .map(|(o, n)| format!("{o} {n:.0}"))
                .collect();
            let _ = write!(text, "; requests {}", list.join(", "));
        }
        out.push(line("upstream", text));
        let mut more = Vec::new();
        if let Some(down) = view.total("edge_agent_upstream_down_seconds_total") {
            more.push(format!("down {} in all", duration(down)));
        }
        if let Some(auth) = view.total("edge_agent_upstream_auth_failures_total") {
            more.push(format!("{auth:.0} auth failures"));
        }
        if !more.is_empty() {
            out.push(line("", more.join(", ")));
        }
        if let Some(error) = cur.label("edge_agent_upstream_last_error_info", "error") {
            out.push(line("", format!("last error: {error}")));
        }
    }
    if let Some(connected) = view.total("edge_agent_mqtt_connected") {
        let mut text = if connected >= 1.0 {
            "connected"
        } else {
            "DISCONNECTED"
        }
        .to_string();
        if let Some(n) = view.total("edge_agent_mqtt_connections_total") {
            let _ = write!(text, "; connections made: {n:.0}");
        }
        out.push(line("source broker", text));
    }

    if let Some(Observed {
        buckets,
        sum,
        count,
    }) = view.histogram("edge_agent_inference_duration_seconds")
    {
        let text = if count > 0.0 {
            let mut t = format!("mean {}", latency(sum / count));
            match quantile_bound(&buckets, 0.99) {
                Some(b) if b.is_finite() => {
                    let _ = write!(t, ", p99 ≤ {}", latency(b));
                }
                Some(_) => {
                    let top = buckets.iter().rev().nth(1).map_or(0.0, |(le, _)| *le);
                    let _ = write!(t, ", p99 > {}", latency(top));
                }
                None => {}
            }
            let when = if view.previous.is_some() {
                "last interval"
            } else {
                "since start"
            };
            let _ = write!(t, " ({count:.0} calls, {when})");
            t
        } else {
            "no model calls".to_string()
        };
        out.push(line("inference latency", text));
    }
    let loads = cur.by_label("edge_agent_model_loads_total", "outcome");
    if !loads.is_empty() {
        let list: Vec<String> = loads
            .iter()
            .filter(|(_, n)| *n > 0.0)
            .map(|(o, n)| format!("{o} {n:.0}"))
            .collect();
        let text = if list.is_empty() {
            "none".to_string()
        } else {
            list.join(", ")
        };
        out.push(line("model loads", text));
    }
    if let Some(sha) = cur.label("edge_agent_model_info", "sha256") {
        out.push(line("model", format!("sha256 {sha}")));
    }
    out.into_iter().map(|l| clip(&l, WIDTH)).collect()
}

/// `text` in lines of at most `width` characters, broken at spaces where it can be.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split(' ') {
        let mut word: Vec<char> = word.chars().collect();
        let used = line.chars().count();
        if used > 0 && used + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        while word.len() > width {
            if !line.is_empty() {
                lines.push(std::mem::take(&mut line));
            }
            lines.push(word.drain(..width).collect());
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.extend(word);
    }
    if !line.is_empty() || lines.is_empty() {
        lines.push(line);
    }
    lines
}

/// `text` cut to `width` characters, with `…` when cut.
fn clip(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut out: String = text.chars().take(width - 1).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: &str = r#"# HELP edge_agent_build_info Always 1, labelled with the agent version.
# TYPE edge_agent_build_info gauge
edge_agent_build_info{pipeline="factory/line1",version="1.2.3"} 1
edge_agent_messages_received_total{pipeline="factory/line1"} 1000
edge_agent_messages_invalid_total{pipeline="factory/line1",reason="not_json"} 0
edge_agent_messages_invalid_total{pipeline="factory/line1",reason="missing_value"} 0
edge_agent_records_filtered_total{pipeline="factory/line1",processor="deadband"} 200
edge_agent_records_filtered_total{pipeline="factory/line1",processor="range"} 0
edge_agent_records_enqueued_total{kind="reading",pipeline="factory/line1"} 800
edge_agent_records_enqueued_total{kind="anomaly",pipeline="factory/line1"} 0
edge_agent_records_synced_total{pipeline="factory/line1"} 700
edge_agent_records_dropped_total{pipeline="factory/line1",reason="queue_full"} 0
edge_agent_records_dropped_total{pipeline="factory/line1",reason="max_age"} 0
edge_agent_queue_records{pipeline="factory/line1"} 100
edge_agent_queue_bytes{pipeline="factory/line1"} 10240
edge_agent_queue_oldest_age_seconds{pipeline="factory/line1"} 2.5
edge_agent_queue_drain_seconds{pipeline="factory/line1"} 90
edge_agent_queue_capacity_bytes{pipeline="factory/line1"} 1048576
edge_agent_dead_letter_records{pipeline="factory/line1"} 0
edge_agent_dead_letter_bytes{pipeline="factory/line1"} 0
edge_agent_upstream_up{pipeline="factory/line1"} 1
edge_agent_upstream_down_seconds_total{pipeline="factory/line1"} 0
edge_agent_sync_requests_total{outcome="rejected",pipeline="factory/line1"} 0
edge_agent_sync_requests_total{outcome="retry",pipeline="factory/line1"} 0
edge_agent_sync_requests_total{outcome="success",pipeline="factory/line1"} 14
edge_agent_mqtt_connected{pipeline="factory/line1"} 1
edge_agent_mqtt_connections_total{pipeline="factory/line1"} 1
edge_agent_inference_duration_seconds_bucket{pipeline="factory/line1",le="0.001"} 0
edge_agent_inference_duration_seconds_bucket{pipeline="factory/line1",le="0.01"} 0
edge_agent_inference_duration_seconds_bucket{pipeline="factory/line1",le="+Inf"} 0
edge_agent_inference_duration_seconds_sum{pipeline="factory/line1"} 0
edge_agent_inference_duration_seconds_count{pipeline="factory/line1"} 0
"#;

    /// FIRST two seconds later: 200 messages in, 150 queued, 200 synced, one drop.
    fn second() -> String {
        FIRST
            .replace(
                "received_total{pipeline=\"factory/line1\"} 1000",
                "received_total{pipeline=\"factory/line1\"} 1200",
            )
            .replace("deadband\"} 200", "deadband\"} 248")
            .replace(
                "reading\",pipeline=\"factory/line1\"} 800",
                "reading\",pipeline=\"factory/line1\"} 950",
            )
            .replace(
                "synced_total{pipeline=\"factory/line1\"} 700",
                "synced_total{pipeline=\"factory/line1\"} 900",
            )
            .replace("queue_full\"} 0", "queue_full\"} 2")
            .replace(
                "queue_records{pipeline=\"factory/line1\"} 100",
                "queue_records{pipeline=\"factory/line1\"} 50",
            )
            .replace("le=\"0.01\"} 0", "le=\"0.01\"} 4")
            .replace("le=\"+Inf\"} 0", "le=\"+Inf\"} 4")
            .replace(
                "seconds_sum{pipeline=\"factory/line1\"} 0",
                "seconds_sum{pipeline=\"factory/line1\"} 0.02",
            )
            .replace(
                "seconds_count{pipeline=\"factory/line1\"} 0",
                "seconds_count{pipeline=\"factory/line1\"} 4",
            )
    }

    #[test]
    fn the_parser_reads_names_labels_values_and_skips_comments() {
        let text = "# HELP a_total Help.\n# TYPE a_total counter\n\
                    a_total{pipeline=\"ns/p\",reason=\"x\"} 3\n\
                    \n\
                    b 1.5e3 1700000000000\n\
                    c{l=\"quote \\\" comma, brace } backslash \\\\ nl \\n\"} -2\n\
                    d_bucket{le=\"+Inf\",} +Inf\n\
                    e NaN\n";
        let s = Snapshot::parse(text).unwrap();
        assert_eq!(s.samples.len(), 5);
        assert_eq!(
            s.samples[0],
            Sample {
                name: "a_total".into(),
                labels: vec![
                    ("pipeline".into(), "ns/p".into()),
                    ("reason".into(), "x".into())
                ],
                value: 3.0
            }
        );
        assert_eq!(s.sum("b"), Some(1500.0));
        assert_eq!(
            s.label("c", "l"),
            Some("quote \" comma, brace } backslash \\ nl \n")
        );
        assert_eq!(s.sum("c"), Some(-2.0));
        assert_eq!(s.sum("d_bucket"), Some(f64::INFINITY));
        assert!(s.sum("e").unwrap().is_nan());
        assert_eq!(s.sum("missing"), None);
        assert_eq!(s.pipelines(), Vec::<&str>::new(), "only edge_agent_ series");
    }

    #[test]
    fn the_parser_refuses_what_is_not_the_text_format() {
        for (text, why) in [
            ("<html>", "invalid metric name"),
            ("ok", "no value"),
            ("a{l=\"x} 1", "not closed"),
            ("a{l=\"x\"", "expected ','"),
            ("a{l=x} 1", "not quoted"),
            ("a{l=\"x\" m=\"y\"} 1", "expected ','"),
            ("a 1 2 3", "unexpected text"),
            ("a one", "invalid value"),
            ("9a 1", "invalid metric name"),
        ] {
            let e = format!("{:#}", Snapshot::parse(text).unwrap_err());
            assert!(e.contains(why), "{text:?}: {e}");
            assert!(e.starts_with("line 1: "), "{e}");
        }
    }

    #[test]
    fn sums_and_labels_of_the_agent_s_series() {
        let s = Snapshot::parse(FIRST).unwrap();
        assert_eq!(s.pipelines(), vec!["factory/line1"]);
        assert_eq!(s.sum("edge_agent_records_enqueued_total"), Some(800.0));
        assert_eq!(
            s.sum_where("edge_agent_records_filtered_total", "processor", "deadband"),
            Some(200.0)
        );
        assert_eq!(
            s.by_label("edge_agent_records_dropped_total", "reason"),
            vec![
                ("queue_full".to_string(), 0.0),
                ("max_age".to_string(), 0.0)
            ]
        );
        assert_eq!(s.label("edge_agent_build_info", "version"), Some("1.2.3"));
        assert_eq!(
            s.buckets("edge_agent_inference_duration_seconds"),
            vec![(0.001, 0.0), (0.01, 0.0), (f64::INFINITY, 0.0)]
        );
    }

    #[test]
    fn rates_come_from_two_scrapes_and_a_reset_gives_none() {
        assert_eq!(per_second(Some(100.0), Some(300.0), 2.0), Some(100.0));
        assert_eq!(per_second(Some(5.0), Some(5.0), 1.0), Some(0.0));
        assert_eq!(per_second(None, Some(5.0), 1.0), None, "first frame");
        assert_eq!(per_second(Some(500.0), Some(3.0), 1.0), None, "restart");
        assert_eq!(per_second(Some(1.0), Some(3.0), 0.0), None);
        assert_eq!(rate(Some(12.345)), "12.3/s");
        assert_eq!(rate(Some(2500.4)), "2500/s");
        assert_eq!(rate(None), "—");
    }

    #[test]
    fn time_to_drain_and_time_to_full() {
        // 100 queued, 60/s leaving, 40/s coming: empty in 5 s.
        let o = Outlook::of(100.0, Some(40.0), Some(60.0), Some(1e6), Some(-10.0));
        assert_eq!(o, Outlook::Drains(5.0));
        assert_eq!(o.to_string(), "drains in 5s");
        // Growing by 1 KiB/s with 3600 KiB of room: full in an hour.
        let o = Outlook::of(
            10.0,
            Some(50.0),
            Some(0.0),
            Some(3600.0 * 1024.0),
            Some(1024.0),
        );
        assert_eq!(o, Outlook::FullIn(3600.0));
        assert_eq!(o.to_string(), "growing, full in 1h 00m");
        assert_eq!(
            Outlook::of(10.0, Some(5.0), Some(1.0), Some(0.0), Some(1.0)),
            Outlook::Full
        );
        assert_eq!(
            Outlook::of(10.0, Some(5.0), Some(1.0), None, Some(1.0)),
            Outlook::Growing
        );
        assert_eq!(
            Outlook::of(10.0, Some(0.0), Some(0.0), Some(1.0), Some(0.0)),
            Outlook::NotDraining
        );
        assert_eq!(
            Outlook::of(0.0, Some(5.0), Some(5.0), None, None),
            Outlook::Empty
        );
        assert_eq!(Outlook::of(10.0, None, None, None, None).to_string(), "—");
    }

    #[test]
    fn durations_bytes_and_latencies_read_well() {
        assert_eq!(duration(0.42), "0.4s");
        assert_eq!(duration(42.4), "42s");
        assert_eq!(duration(185.0), "3m 05s");
        assert_eq!(duration(7800.0), "2h 10m");
        assert_eq!(duration(3.0 * 86400.0 + 4.0 * 3600.0), "3d 04h");
        assert_eq!(duration(f64::INFINITY), "—");
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(1536.0), "1.5 KiB");
        assert_eq!(bytes(256.0 * 1024.0 * 1024.0), "256.0 MiB");
        assert_eq!(latency(0.00085), "850 µs");
        assert_eq!(latency(0.0125), "12.5 ms");
        assert_eq!(latency(1.2), "1.20 s");
        let buckets = [
            (0.001, 90.0),
            (0.01, 99.0),
            (0.1, 100.0),
            (f64::INFINITY, 100.0),
        ];
        assert_eq!(quantile_bound(&buckets, 0.5), Some(0.001));
        assert_eq!(quantile_bound(&buckets, 0.99), Some(0.01));
        assert_eq!(quantile_bound(&[(f64::INFINITY, 0.0)], 0.99), None);
    }

    #[test]
    fn the_first_frame_shows_totals_and_no_rates() {
        let first = Snapshot::parse(FIRST).unwrap();
        let lines = render(&View {
            url: "http://127.0.0.1:9464/metrics",
            interval: Duration::from_secs(1),
            current: &first,
            previous: None,
        });
        assert_eq!(
            lines[0],
            "edge-agent top  pipeline factory/line1  agent 1.2.3"
        );
        assert_eq!(lines[1], "http://127.0.0.1:9464/metrics  every 1s");
        let find = |label: &str| {
            lines
                .iter()
                .find(|l| l.starts_with(label))
                .unwrap_or_else(|| panic!("no {label:?} in\n{}", lines.join("\n")))
                .as_str()
        };
        assert_eq!(find("messages in"), "messages in                  —  1000");
        assert_eq!(
            find("records synced"),
            "records synced               —  700"
        );
        assert_eq!(
            find("  filtered"),
            "  filtered                   —  200       20.0% of messages"
        );
        assert_eq!(find("outlook"), "outlook             —");
        assert_eq!(
            find("backlog"),
            "backlog             100 records, 10.0 KiB, oldest 2.5s, drains in 1m 30s"
        );
        assert_eq!(
            find("inference latency"),
            "inference latency   no model calls"
        );
        assert!(
            !lines.iter().any(|l| l.contains("queue_full")),
            "zero reasons hidden"
        );
    }

    #[test]
    fn the_next_frame_shows_rates_over_the_time_between_scrapes() {
        let (first, second) = (
            Snapshot::parse(FIRST).unwrap(),
            Snapshot::parse(&second()).unwrap(),
        );
        let lines = render(&View {
            url: "http://127.0.0.1:9464/metrics",
            interval: Duration::from_secs(2),
            current: &second,
            previous: Some((&first, Duration::from_secs(2))),
        });
        let text = lines.join("\n");
        for expected in [
            "messages in            100.0/s  1200",
            "records queued          75.0/s  950",
            "records synced         100.0/s  900",
            "records dropped          1.0/s  2",
            "    queue_full           1.0/s  2",
            "  filtered              24.0/s  248       20.7% of messages",
            "    deadband            24.0/s  248",
            // 50 queued, 100/s leaving, 75/s coming.
            "outlook             drains in 2s",
            "queue use           10.0 KiB of 1.0 MiB (1.0%)",
            "upstream            up; requests success 14, retry 0, rejected 0",
            "                    down 0s in all",
            "source broker       connected; connections made: 1",
            "inference latency   mean 5.0 ms, p99 ≤ 10.0 ms (4 calls, last interval)",
        ] {
            assert!(
                lines.iter().any(|l| l == expected),
                "{expected:?} not in\n{text}"
            );
        }
        assert!(!text.contains("max_age"), "zero reasons are not listed");
        for l in &lines {
            assert!(l.chars().count() <= WIDTH, "{l:?} is wider than {WIDTH}");
        }
    }

    #[test]
    fn a_down_upstream_shows_its_last_error_and_the_model_its_digest() {
        let text = FIRST
            .replace(
                "edge_agent_upstream_up{pipeline=\"factory/line1\"} 1",
                "edge_agent_upstream_up{pipeline=\"factory/line1\"} 0\n\
                 edge_agent_upstream_last_error_info{error=\"HTTP 503\",pipeline=\"factory/line1\"} 1",
            )
            .replace(
                "edge_agent_mqtt_connected",
                "edge_agent_model_info{pipeline=\"factory/line1\",sha256=\"ab12\"} 1\n\
                 edge_agent_mqtt_connected",
            );
        let current = Snapshot::parse(&text).unwrap();
        let lines = render(&View {
            url: "http://127.0.0.1:9464/metrics",
            interval: Duration::from_secs(1),
            current: &current,
            previous: None,
        });
        for expected in [
            "upstream            DOWN; requests success 14, retry 0, rejected 0",
            "                    last error: HTTP 503",
            "model               sha256 ab12",
        ] {
            assert!(
                lines.iter().any(|l| l == expected),
                "{expected:?} not in\n{}",
                lines.join("\n")
            );
        }
    }

    #[test]
    fn long_lines_are_clipped_to_80_columns() {
        let first = Snapshot::parse(FIRST).unwrap();
        let url = format!("http://127.0.0.1:9464/{}", "x".repeat(100));
        let lines = render(&View {
            url: &url,
            interval: Duration::from_secs(1),
            current: &first,
            previous: None,
        });
        assert_eq!(lines[1].chars().count(), WIDTH);
        assert!(lines[1].ends_with('…'));
    }

    #[test]
    fn an_error_is_wrapped_at_spaces_within_the_width() {
        let text = "agent unreachable at http://127.0.0.1:1/metrics: connecting to 127.0.0.1:1: \
                    Connection refused (os error 111)";
        let lines = wrap(text, 80);
        assert_eq!(
            lines,
            [
                "agent unreachable at http://127.0.0.1:1/metrics: connecting to 127.0.0.1:1:",
                "Connection refused (os error 111)"
            ]
        );
        assert_eq!(lines.join(" "), text);
        assert_eq!(wrap("abcdefgh ij", 3), ["abc", "def", "gh", "ij"]);
        assert_eq!(wrap("", 80), [""]);
    }

    #[test]
    fn only_http_urls_are_accepted() {
        let e = Endpoint::parse("http://127.0.0.1:9464/metrics").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("127.0.0.1", 9464, "/metrics")
        );
        assert!(
            e.request()
                .starts_with("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9464\r\n")
        );
        let e = Endpoint::parse("http://[::1]:9100").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("::1", 9100, "/metrics")
        );
        let e = Endpoint::parse("http://agent.local?x=1").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("agent.local", 80, "/?x=1")
        );
        for (url, why) in [
            (
                "https://127.0.0.1:9464/metrics",
                "only http:// URLs are supported, not https://",
            ),
            ("127.0.0.1:9464", "not a URL"),
            ("http://:9464/metrics", "no host"),
            ("http://h:99999/metrics", "invalid port"),
            ("http://u:p@h/metrics", "user info"),
        ] {
            let e = Endpoint::parse(url).unwrap_err().to_string();
            assert!(e.contains(why), "{url}: {e}");
        }
    }

    #[test]
    fn responses_are_read_plain_or_chunked_and_other_statuses_refused() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\na 1\n\n";
        assert_eq!(parse_response(plain).unwrap(), "a 1\n\n");
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\na 1\n\r\n4;x=y\r\nb 2\n\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), "a 1\nb 2\n");
        let to_end = b"HTTP/1.0 200 OK\r\n\r\na 1\n";
        assert_eq!(parse_response(to_end).unwrap(), "a 1\n");
        for (raw, why) in [
            (
                &b"HTTP/1.1 503 Service Unavailable\r\n\r\nno"[..],
                "HTTP 503 Service Unavailable",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc",
                "after 3 of 10 body bytes",
            ),
            (b"HTTP/1.1 200 OK\r\n", "before the response headers ended"),
            (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP/1 response"),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n9\r\nab",
                "cut short",
            ),
        ] {
            let e = format!("{:#}", parse_response(raw).unwrap_err());
            assert!(e.contains(why), "{e}");
        }
    }

    #[tokio::test]
    async fn a_scrape_reads_a_real_socket_and_names_what_is_wrong() {
        use tokio::net::TcpListener;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let serve = |body: &'static str| {
            let listener = &listener;
            async move {
                let (mut conn, _) = listener.accept().await.unwrap();
                let mut request = vec![0; 1024];
                let n = conn.read(&mut request).await.unwrap();
                let request = String::from_utf8_lossy(&request[..n]).into_owned();
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                conn.write_all(response.as_bytes()).await.unwrap();
                request
            }
        };
        let endpoint = Endpoint::parse(&format!("http://127.0.0.1:{port}/metrics")).unwrap();
        let (request, scraped) = tokio::join!(serve(FIRST), scrape(&endpoint));
        assert!(
            request.starts_with("GET /metrics HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains("\r\nConnection: close\r\n"), "{request}");
        assert_eq!(scraped.unwrap(), Snapshot::parse(FIRST).unwrap());
        let (_, scraped) = tokio::join!(serve("up 1\n"), scrape(&endpoint));
        let e = format!("{:#}", scraped.unwrap_err());
        assert!(e.contains("not the /metrics of an edge-agent"), "{e}");
        drop(listener);
        let e = format!("{:#}", scrape(&endpoint).await.unwrap_err());
        assert!(
            e.contains(&format!("connecting to 127.0.0.1:{port}")),
            "{e}"
        );
    }
}
