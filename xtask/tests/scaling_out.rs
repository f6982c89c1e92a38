//! Scaling out: the Guide's nginx caching-proxy config, started for real in
//! front of an origin nginx. A second client with a cold local cache is
//! served by the proxy alone (the origin sees no new request) and gets
//! byte-identical data.
//!
//! The proxy runs the exact file the Guide ships
//! (`Guide/src/examples/image-proxy.conf`), with only the listen address,
//! the cache path and the upstream replaced for the test.

mod common;

use blob_test_servers::NginxServer;
use common::*;
use std::net::TcpStream;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

const GUIDE_CONFIG: &str = "Guide/src/examples/image-proxy.conf";

/// The Guide's proxy, running under nginx in a temp dir.
struct GuideProxy {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for GuideProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
        .to_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The Guide's config with the test's port, cache dir and origin.
fn render_guide_config(port: u16, cache: &Path, origin: &str) -> String {
    let text = std::fs::read_to_string(workspace_root().join(GUIDE_CONFIG)).expect("Guide config");
    let replace = |text: String, from: &str, to: &str| {
        assert!(
            text.contains(from),
            "the Guide config no longer has {from:?}"
        );
        text.replace(from, to)
    };
    let text = replace(text, "listen 8080;", &format!("listen 127.0.0.1:{port};"));
    let text = replace(
        text,
        "/var/cache/nginx/vmm-images",
        &cache.display().to_string(),
    );
    replace(
        text,
        "proxy_pass https://hvlitetestvhds.blob.core.windows.net;",
        &format!("proxy_pass {origin};"),
    )
}

fn start_guide_proxy(nginx: &Path, origin: &str) -> GuideProxy {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let snippet = dir.path().join("image-proxy.conf");
    std::fs::write(
        &snippet,
        render_guide_config(port, &dir.path().join("cache"), origin),
    )
    .unwrap();
    let d = |name: &str| dir.path().join(name).display().to_string();
    let mut conf = String::from("daemon off;\nmaster_process off;\nworker_processes 1;\n");
    if is_root() {
        conf.push_str("user root;\n");
    }
    conf.push_str(&format!(
        "pid {};\nerror_log {} notice;\nevents {{ worker_connections 256; }}\nhttp {{\n  access_log {};\n  client_body_temp_path {};\n  proxy_temp_path {};\n  fastcgi_temp_path {};\n  uwsgi_temp_path {};\n  scgi_temp_path {};\n  include {};\n}}\n",
        d("nginx.pid"),
        d("error.log"),
        d("access.log"),
        d("client_body"),
        d("proxy_temp"),
        d("fastcgi_temp"),
        d("uwsgi_temp"),
        d("scgi_temp"),
        snippet.display()
    ));
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = Command::new(nginx)
        .arg("-e")
        .arg(d("stderr.log"))
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting nginx");
    let mut proxy = GuideProxy { child, port, dir };
    // Readiness: a bounded poll-connect loop.
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = proxy.child.try_wait() {
            panic!(
                "the Guide's nginx config failed to start ({status}):\n{}\n{}",
                std::fs::read_to_string(proxy.dir.path().join("stderr.log")).unwrap_or_default(),
                std::fs::read_to_string(proxy.dir.path().join("error.log")).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "nginx did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
    proxy.port = port;
    proxy
}

#[test]
fn a_second_cold_client_is_served_by_the_caching_proxy_alone() {
    let Some(nginx) = blob_test_servers::require_tool("nginx") else {
        return;
    };
    // 20 MiB and a bit: three 8 MiB slices, the last one partial.
    let len = (20 << 20) + 4321;
    let data = image(42, len);
    let store = tempfile::tempdir().unwrap();
    std::fs::create_dir(store.path().join("vhds")).unwrap();
    std::fs::write(store.path().join("vhds").join(FILE), &data).unwrap();
    let origin = NginxServer::serve_dir(store.path()).unwrap();
    let proxy = start_guide_proxy(&nginx, &origin.base_url());
    let base = format!("http://127.0.0.1:{}/vhds", proxy.port);

    // Client 1 warms the proxy.
    let out1 = tempfile::tempdir().unwrap();
    let r = download(&base, out1.path(), &[]);
    assert!(r.ok, "{}", r.text);
    assert_eq!(sha(&out1.path().join(FILE)), sha_bytes(&data));
    let origin_requests = origin.request_count().unwrap();
    assert!(origin_requests > 0);
    // The store was asked for each slice at most once (plus nothing else).
    assert!(
        origin_requests <= (len as u64).div_ceil(8 << 20),
        "{origin_requests} origin requests"
    );

    // Client 2: another machine, cold local cache, other request sizes.
    let out2 = tempfile::tempdir().unwrap();
    let mut cmd = download_cmd();
    cmd.args([
        "--base-url",
        &base,
        "--output-folder",
        &out2.path().display().to_string(),
        "--no-catalog-size-check",
        "--piece-size",
        &(3 << 20).to_string(),
        "--jobs",
        "3",
        "--artifacts",
        NAME,
    ]);
    let r = run(&mut cmd);
    assert!(r.ok, "{}", r.text);
    assert_eq!(origin.request_count().unwrap(), origin_requests);
    assert_eq!(
        std::fs::read(out2.path().join(FILE)).unwrap(),
        data,
        "client 2 got different bytes"
    );
}

#[test]
fn the_guide_config_is_the_one_tested() {
    // The page includes the file rather than a copy of it.
    let page = std::fs::read_to_string(workspace_root().join("Guide/src/scaling-out.md")).unwrap();
    assert!(
        page.contains("{{#include examples/image-proxy.conf}}"),
        "scaling-out.md must include examples/image-proxy.conf"
    );
}
