//! A real nginx, started and stopped by the test, serving a directory or
//! acting as a caching reverse proxy.

use std::fmt::Write as _;
use std::io::Read as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::net::TcpStream;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context as _;
use anyhow::bail;

use crate::tools::find_tool;

/// How long to wait for nginx to accept connections.
const START_DEADLINE: Duration = Duration::from_secs(20);
/// Attempts with a new port if nginx loses the race for its port.
const START_ATTEMPTS: u32 = 5;
/// The location that exposes `stub_status` (excluded from request counts).
const STATUS_PATH: &str = "/__blob_test_servers_status";

/// What the nginx server does at `location /`.
#[derive(Debug, Clone)]
enum Mode {
    Static { root: PathBuf },
    Proxy { origin: String, slice: Option<u64> },
}

/// Configuration of an [`NginxServer`].
#[derive(Debug, Clone)]
pub struct NginxConfig {
    mode: Mode,
    nginx: Option<PathBuf>,
    http_extra: String,
    server_extra: String,
    location_extra: String,
    cache_max_size: String,
}

impl NginxConfig {
    /// Serve the files under `root` (static files: nginx answers Range,
    /// HEAD, ETag, Last-Modified and If-Match/If-Range itself).
    pub fn static_dir(root: impl Into<PathBuf>) -> Self {
        Self::new(Mode::Static { root: root.into() })
    }

    /// A caching reverse proxy in front of `origin` (a base URL such as
    /// `http://127.0.0.1:8080`, no path). If the installed nginx has the
    /// `slice` module, ranges are fetched from the origin and cached in
    /// slices of `slice_size` bytes (1 MiB by default, see
    /// [`NginxConfig::slice_size`]); otherwise nginx caches whole responses.
    pub fn caching_proxy(origin: impl Into<String>) -> Self {
        Self::new(Mode::Proxy {
            origin: origin.into().trim_end_matches('/').to_string(),
            slice: Some(1 << 20),
        })
    }

    fn new(mode: Mode) -> Self {
        Self {
            mode,
            nginx: None,
            http_extra: String::new(),
            server_extra: String::new(),
            location_extra: String::new(),
            cache_max_size: "10g".to_string(),
        }
    }

    /// Slice size for the caching proxy; `None` disables slicing.
    pub fn slice_size(mut self, size: Option<u64>) -> Self {
        if let Mode::Proxy { slice, .. } = &mut self.mode {
            *slice = size;
        }
        self
    }

    /// Use this nginx binary instead of searching `PATH` and `/usr/sbin`.
    pub fn nginx_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.nginx = Some(path.into());
        self
    }

    /// Raw directives added inside `http { }`.
    pub fn http_extra(mut self, text: impl Into<String>) -> Self {
        self.http_extra = text.into();
        self
    }

    /// Raw directives added inside `server { }`.
    pub fn server_extra(mut self, text: impl Into<String>) -> Self {
        self.server_extra = text.into();
        self
    }

    /// Raw directives added inside `location / { }`.
    pub fn location_extra(mut self, text: impl Into<String>) -> Self {
        self.location_extra = text.into();
        self
    }

    /// `max_size` of the proxy cache (nginx syntax, default `10g`).
    pub fn cache_max_size(mut self, size: impl Into<String>) -> Self {
        self.cache_max_size = size.into();
        self
    }
}

/// One line of the access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NginxLogEntry {
    /// Request method.
    pub method: String,
    /// Request URI including the query.
    pub uri: String,
    /// Response status.
    pub status: u16,
    /// Body bytes sent.
    pub body_bytes: u64,
    /// The request's `Range` header, if any.
    pub range: Option<String>,
    /// `$upstream_cache_status` (`HIT`, `MISS`, ...) for the caching proxy.
    pub cache_status: Option<String>,
}

/// `nginx -V` output of a binary, to detect modules.
fn nginx_build_info(nginx: &Path) -> anyhow::Result<String> {
    let out = Command::new(nginx)
        .arg("-V")
        .output()
        .with_context(|| format!("running {} -V", nginx.display()))?;
    // nginx prints -V to stderr.
    let mut s = String::from_utf8_lossy(&out.stderr).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stdout));
    Ok(s)
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    })
}

/// A running nginx child process with its own config, logs, pid file, temp
/// and cache directories in a temp dir, listening on 127.0.0.1 on a free
/// port. Started as `daemon off; master_process off;` so the one process
/// is the server; killed and reaped on drop.
#[derive(Debug)]
pub struct NginxServer {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    has_stub_status: bool,
    has_slice: bool,
    status_queries: std::sync::atomic::AtomicU64,
    config_text: String,
}

impl NginxServer {
    /// Serves the files under `root`.
    pub fn serve_dir(root: &Path) -> anyhow::Result<Self> {
        Self::start(NginxConfig::static_dir(root))
    }

    /// A caching reverse proxy (with 1 MiB slices if available) in front
    /// of `origin`.
    pub fn caching_proxy(origin: &str) -> anyhow::Result<Self> {
        Self::start(NginxConfig::caching_proxy(origin))
    }

    /// Starts nginx with `config` and waits (bounded) until it accepts
    /// connections.
    pub fn start(config: NginxConfig) -> anyhow::Result<Self> {
        let nginx = match &config.nginx {
            Some(p) => p.clone(),
            None => find_tool("nginx").context(
                "nginx not found (apt-get install nginx-light); tests should call require_tool(\"nginx\") first",
            )?,
        };
        let info = nginx_build_info(&nginx)?;
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(&nginx, &info, &config) {
                Ok(s) => return Ok(s),
                Err(StartError::PortTaken(e)) => last_err = Some(e),
                Err(StartError::Other(e)) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("nginx did not start")))
    }

    fn try_start(nginx: &Path, info: &str, config: &NginxConfig) -> Result<Self, StartError> {
        let dir = tempfile::Builder::new()
            .prefix("nginx-fixture-")
            .tempdir()
            .context("creating nginx temp dir")?;
        let port = free_port().context("finding a free port")?;
        let has_stub_status = info.contains("http_stub_status_module");
        let has_slice = info.contains("http_slice_module");
        let config_text =
            render_config(config, dir.path(), port, info, has_stub_status, has_slice)?;
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, &config_text).context("writing nginx.conf")?;
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).context("stderr.log")?;
        let mut child = Command::new(nginx)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawning {}", nginx.display()))?;

        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = child.try_wait().context("waiting for nginx")? {
                let log = read_logs(dir.path());
                let e = anyhow::anyhow!("nginx exited during startup ({status}):\n{log}");
                return Err(if log.contains("Address already in use") {
                    StartError::PortTaken(e)
                } else {
                    StartError::Other(e)
                });
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(StartError::Other(anyhow::anyhow!(
                    "nginx did not accept connections on {addr} within {START_DEADLINE:?}:\n{}",
                    read_logs(dir.path())
                )));
            }
            // Poll interval of the bounded readiness loop.
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Self {
            child,
            dir,
            port,
            has_stub_status,
            has_slice,
            status_queries: std::sync::atomic::AtomicU64::new(0),
            config_text,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `base_url() + path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url(), path)
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether this nginx has the `slice` module (used by the caching proxy).
    pub fn has_slice_module(&self) -> bool {
        self.has_slice
    }

    /// The generated nginx.conf.
    pub fn config_text(&self) -> &str {
        &self.config_text
    }

    /// The directory holding the config, logs and cache.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The proxy cache directory (empty unless this is a caching proxy).
    pub fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// Number of client requests nginx has received (excluding this
    /// fixture's own status queries). Uses `stub_status`, which counts a
    /// request as soon as it is read, so a request whose response the test
    /// has seen is always counted; without that module, falls back to
    /// counting access log lines.
    pub fn request_count(&self) -> anyhow::Result<u64> {
        if !self.has_stub_status {
            return Ok(self.access_log()?.len() as u64);
        }
        let n = self
            .status_queries
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        let text = self.http_get_text(STATUS_PATH)?;
        // Format: "Active connections: N \nserver accepts handled requests\n A H R \n..."
        let requests = text
            .lines()
            .nth(2)
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|r| r.parse::<u64>().ok())
            .with_context(|| format!("unexpected stub_status output: {text:?}"))?;
        Ok(requests.saturating_sub(n))
    }

    /// The access log so far (requests nginx has finished; a request is
    /// logged just after its response, see [`NginxServer::wait_for_log`]).
    pub fn access_log(&self) -> anyhow::Result<Vec<NginxLogEntry>> {
        let text = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        let dash = |s: &str| (s != "-").then(|| s.to_string());
        text.lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                if f.len() < 6 {
                    bail!("unexpected access log line {l:?}");
                }
                Ok(NginxLogEntry {
                    method: f[0].to_string(),
                    uri: f[1].to_string(),
                    status: f[2].parse().context("status")?,
                    body_bytes: f[3].parse().context("body bytes")?,
                    range: dash(f[4]),
                    cache_status: dash(f[5]),
                })
            })
            .collect()
    }

    /// Waits (bounded by `timeout`) until the access log has at least `n`
    /// entries, and returns it.
    pub fn wait_for_log(&self, n: usize, timeout: Duration) -> anyhow::Result<Vec<NginxLogEntry>> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.access_log()?;
            if log.len() >= n {
                return Ok(log);
            }
            if Instant::now() >= deadline {
                bail!("access log has {} entries, expected {n}", log.len());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Total body bytes in the access log.
    pub fn bytes_sent(&self) -> anyhow::Result<u64> {
        Ok(self.access_log()?.iter().map(|e| e.body_bytes).sum())
    }

    /// The error log text (for diagnostics).
    pub fn error_log(&self) -> String {
        read_logs(self.dir.path())
    }

    /// A minimal blocking HTTP/1.0 GET against this server, returning the body.
    fn http_get_text(&self, path: &str) -> anyhow::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).context("connecting to nginx")?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        let (head, body) = resp
            .split_once("\r\n\r\n")
            .context("malformed HTTP response")?;
        if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
            bail!("GET {path}: {head}");
        }
        Ok(body.to_string())
    }
}

impl Drop for NginxServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

enum StartError {
    PortTaken(anyhow::Error),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for StartError {
    fn from(e: anyhow::Error) -> Self {
        StartError::Other(e)
    }
}

fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn read_logs(dir: &Path) -> String {
    let mut s = String::new();
    for name in ["error.log", "stderr.log"] {
        if let Ok(t) = std::fs::read_to_string(dir.join(name))
            && !t.is_empty()
        {
            let _ = writeln!(s, "--- {name} ---\n{t}");
        }
    }
    s
}

/// Quotes a path for nginx.conf.
fn q(p: &Path) -> String {
    let s = p.display().to_string();
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn render_config(
    config: &NginxConfig,
    dir: &Path,
    port: u16,
    info: &str,
    has_stub_status: bool,
    has_slice: bool,
) -> anyhow::Result<String> {
    let mut c = String::new();
    let w = &mut c;
    writeln!(w, "daemon off;\nmaster_process off;\nworker_processes 1;")?;
    if is_root() {
        writeln!(w, "user root;")?;
    }
    writeln!(w, "pid {};", q(&dir.join("nginx.pid")))?;
    writeln!(w, "error_log {} notice;", q(&dir.join("error.log")))?;
    writeln!(w, "events {{ worker_connections 1024; }}")?;
    writeln!(w, "http {{")?;
    writeln!(w, "  default_type application/octet-stream;")?;
    writeln!(w, "  sendfile on;\n  tcp_nodelay on;")?;
    writeln!(w, "  keepalive_timeout 65;\n  keepalive_requests 1000000;")?;
    writeln!(
        w,
        "  log_format blobtest \"$request_method\\t$request_uri\\t$status\\t$body_bytes_sent\\t$http_range\\t$upstream_cache_status\";"
    )?;
    writeln!(w, "  access_log {} blobtest;", q(&dir.join("access.log")))?;
    writeln!(
        w,
        "  client_body_temp_path {};",
        q(&dir.join("client_body"))
    )?;
    for (module, directive, sub) in [
        ("proxy", "proxy_temp_path", "proxy_temp"),
        ("fastcgi", "fastcgi_temp_path", "fastcgi_temp"),
        ("uwsgi", "uwsgi_temp_path", "uwsgi_temp"),
        ("scgi", "scgi_temp_path", "scgi_temp"),
    ] {
        if !info.contains(&format!("--without-http_{module}_module")) {
            writeln!(w, "  {directive} {};", q(&dir.join(sub)))?;
        }
    }
    let mut upstream = None;
    if let Mode::Proxy { origin, .. } = &config.mode {
        writeln!(
            w,
            "  proxy_cache_path {} levels=1:2 keys_zone=blobcache:16m max_size={} inactive=7d use_temp_path=off;",
            q(&dir.join("cache")),
            config.cache_max_size
        )?;
        // A plain http origin without a path gets an upstream block so that
        // connections to it are kept alive.
        if let Some(hostport) = origin.strip_prefix("http://")
            && !hostport.contains('/')
            && !hostport.is_empty()
        {
            writeln!(
                w,
                "  upstream blob_origin {{ server {hostport}; keepalive 32; }}"
            )?;
            upstream = Some("http://blob_origin".to_string());
        }
    }
    writeln!(w, "  {}", config.http_extra)?;
    writeln!(w, "  server {{")?;
    writeln!(
        w,
        "    listen 127.0.0.1:{port};\n    server_name localhost;"
    )?;
    if has_stub_status {
        writeln!(
            w,
            "    location = {STATUS_PATH} {{ stub_status; access_log off; }}"
        )?;
    }
    writeln!(w, "    {}", config.server_extra)?;
    writeln!(w, "    location / {{")?;
    match &config.mode {
        Mode::Static { root } => {
            writeln!(w, "      root {};", q(root))?;
        }
        Mode::Proxy { origin, slice } => {
            writeln!(
                w,
                "      proxy_pass {};",
                upstream.as_deref().unwrap_or(origin)
            )?;
            writeln!(w, "      proxy_http_version 1.1;")?;
            writeln!(w, "      proxy_set_header Connection \"\";")?;
            writeln!(w, "      proxy_cache blobcache;")?;
            writeln!(w, "      proxy_cache_valid 200 206 7d;")?;
            writeln!(w, "      proxy_cache_lock on;")?;
            writeln!(
                w,
                "      add_header X-Cache-Status $upstream_cache_status always;"
            )?;
            match slice.filter(|_| has_slice) {
                Some(size) => {
                    writeln!(w, "      slice {size};")?;
                    writeln!(
                        w,
                        "      proxy_cache_key $scheme$proxy_host$uri$is_args$args$slice_range;"
                    )?;
                    writeln!(w, "      proxy_set_header Range $slice_range;")?;
                }
                None => {
                    writeln!(
                        w,
                        "      proxy_cache_key $scheme$proxy_host$uri$is_args$args;"
                    )?;
                }
            }
        }
    }
    writeln!(w, "      {}", config.location_extra)?;
    writeln!(w, "    }}\n  }}\n}}")?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_config() {
        let c = render_config(
            &NginxConfig::static_dir("/srv/x").location_extra("etag on;"),
            Path::new("/tmp/n"),
            4321,
            "--with-http_stub_status_module --without-http_fastcgi_module",
            true,
            false,
        )
        .unwrap();
        assert!(c.contains("daemon off;"));
        assert!(c.contains("master_process off;"));
        assert!(c.contains("listen 127.0.0.1:4321;"));
        assert!(c.contains("root \"/srv/x\";"));
        assert!(c.contains("etag on;"));
        assert!(c.contains("access_log \"/tmp/n/access.log\" blobtest;"));
        assert!(c.contains("pid \"/tmp/n/nginx.pid\";"));
        assert!(c.contains(&format!("location = {STATUS_PATH}")));
        assert!(!c.contains("fastcgi_temp_path"));
        assert!(c.contains("uwsgi_temp_path"));
        assert!(!c.contains("proxy_cache"));
    }

    #[test]
    fn proxy_config_with_and_without_slice() {
        let cfg = NginxConfig::caching_proxy("http://127.0.0.1:9000/");
        let c = render_config(&cfg, Path::new("/tmp/n"), 1, "", false, true).unwrap();
        assert!(c.contains("upstream blob_origin { server 127.0.0.1:9000; keepalive 32; }"));
        assert!(c.contains("proxy_pass http://blob_origin;"));
        assert!(c.contains("slice 1048576;"));
        assert!(c.contains("proxy_set_header Range $slice_range;"));
        assert!(c.contains("$slice_range;"));
        assert!(!c.contains("stub_status"));

        // No slice module: whole-response caching.
        let c = render_config(&cfg, Path::new("/tmp/n"), 1, "", false, false).unwrap();
        assert!(!c.contains("slice "));
        assert!(c.contains("proxy_cache blobcache;"));

        // An origin with a path or https is passed through as is.
        let cfg = NginxConfig::caching_proxy("https://example.invalid/base").slice_size(None);
        let c = render_config(&cfg, Path::new("/tmp/n"), 1, "", false, true).unwrap();
        assert!(c.contains("proxy_pass https://example.invalid/base;"));
        assert!(!c.contains("upstream blob_origin"));
        assert!(!c.contains("slice "));
    }
}
