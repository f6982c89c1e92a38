//! Memory of `petri-tool disk serve-nbd` under hostile clients: the server
//! runs as a real process under `/usr/bin/time -v` (Debian package `time`)
//! exporting a local file, and a raw-protocol client attacks it:
//!
//! - `writes N`: one connection pipelines N writes of 256 bytes at
//!   unaligned offsets (each one a read-modify-write of a sector) while
//!   another thread takes the replies;
//! - `unread reads K`: K connections each send 16 reads of the largest
//!   advertised size and never read a reply (aligned, or one byte off so
//!   every read is widened by a sector).
//!
//! For each it prints the server's peak resident set (`time -v`'s
//! "Maximum resident set size"), its resident set while the attack holds
//! (the unread reads) and after the client left.
//!
//! Run: `cargo bench -p petri_tool --bench nbd_memory` (release).
//! `BENCH_FILTER` keeps only the cases whose name contains it;
//! `BENCH_PETRI_TOOL` runs another build's `petri-tool` (to compare two
//! versions with the same client). Without
//! `/usr/bin/time` it prints why and exits successfully, except under
//! `CI=true`, where it fails.

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use disk_nbd::protocol::CMD_DISC;
use disk_nbd::protocol::CMD_READ;
use disk_nbd::protocol::CMD_WRITE;
use disk_nbd::protocol::FLAG_C_FIXED_NEWSTYLE;
use disk_nbd::protocol::FLAG_C_NO_ZEROES;
use disk_nbd::protocol::IHAVEOPT;
use disk_nbd::protocol::INFO_BLOCK_SIZE;
use disk_nbd::protocol::OPT_GO;
use disk_nbd::protocol::REP_ACK;
use disk_nbd::protocol::REP_INFO;
use disk_nbd::protocol::RequestHeader;
use disk_nbd::protocol::SIMPLE_REPLY_LEN;
use std::io::BufRead;
use std::io::BufReader;
use std::io::Read;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

/// This build's `petri-tool`.
const TOOL: &str = env!("CARGO_BIN_EXE_petri-tool");
const TIME: &str = "/usr/bin/time";
/// Size of the exported (sparse) file.
const DISK_BYTES: u64 = 256 << 20;
/// Read requests each connection of the unread-reads attack sends.
const UNREAD_READS_PER_CONNECTION: u64 = 16;

#[derive(Clone, Copy)]
enum Attack {
    PipelinedWrites { count: u64 },
    UnreadReads { connections: usize, unaligned: bool },
}

impl Attack {
    fn name(&self) -> String {
        match self {
            Attack::PipelinedWrites { count } => {
                format!(
                    "{}k pipelined 256-byte unaligned writes, 1 connection",
                    count >> 10
                )
            }
            Attack::UnreadReads {
                connections,
                unaligned,
            } => format!(
                "{connections} connections x {UNREAD_READS_PER_CONNECTION} {} max-size reads, replies never read",
                if *unaligned { "unaligned" } else { "aligned" }
            ),
        }
    }
}

/// One measured run.
struct Figures {
    peak_kib: u64,
    holding_kib: Option<u64>,
    after_kib: u64,
    seconds: f64,
}

fn main() -> Result<()> {
    if !Path::new(TIME).exists() {
        if ci_env::in_ci() {
            bail!("{TIME} is required under CI=true (Debian package `time`)");
        }
        eprintln!("skipping the NBD memory benchmark: {TIME} not found (apt-get install time)");
        return Ok(());
    }
    let filter = std::env::var("BENCH_FILTER").unwrap_or_default();
    let attacks = [
        Attack::PipelinedWrites { count: 16 << 10 },
        Attack::PipelinedWrites { count: 32 << 10 },
        Attack::UnreadReads {
            connections: 4,
            unaligned: false,
        },
        Attack::UnreadReads {
            connections: 8,
            unaligned: false,
        },
        Attack::UnreadReads {
            connections: 8,
            unaligned: true,
        },
    ];
    let dir = tempfile::tempdir()?;
    let image = dir.path().join("disk.raw");
    std::fs::File::create(&image)?.set_len(DISK_BYTES)?;

    println!("| attack | peak RSS | RSS while held | RSS after the client left | seconds |");
    println!("|---|---:|---:|---:|---:|");
    for attack in attacks {
        let name = attack.name();
        if !name.contains(&filter) {
            continue;
        }
        let f = run(&image, &dir.path().join("nbd.sock"), attack)
            .with_context(|| format!("attack: {name}"))?;
        println!(
            "| {name} | {} MiB | {} | {} MiB | {:.1} |",
            f.peak_kib >> 10,
            f.holding_kib
                .map(|k| format!("{} MiB", k >> 10))
                .unwrap_or_else(|| "-".into()),
            f.after_kib >> 10,
            f.seconds,
        );
    }
    Ok(())
}

/// The server under `time -v`, and the server's own pid.
struct Server {
    time: Child,
    pid: u32,
}

fn start_server(image: &Path, socket: &Path) -> Result<Server> {
    let tool = std::env::var_os("BENCH_PETRI_TOOL").unwrap_or_else(|| TOOL.into());
    let mut time = Command::new(TIME)
        .arg("-v")
        .arg(tool)
        .args(["disk", "serve-nbd"])
        .arg(image)
        .arg("--socket")
        .arg(socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting petri-tool under /usr/bin/time")?;
    let mut stdout = BufReader::new(time.stdout.take().context("no stdout")?);
    loop {
        let mut line = String::new();
        if stdout.read_line(&mut line)? == 0 {
            bail!("petri-tool exited before serving");
        }
        if line.starts_with("petri-tool: serving ") {
            break;
        }
    }
    // Keep draining stdout so the server never blocks on it.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", time.id()))
        .context("finding the server process under time")?;
    let pid = children
        .split_whitespace()
        .next()
        .context("time has no child")?
        .parse()?;
    Ok(Server { time, pid })
}

impl Server {
    fn rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .context("no VmRSS")?
            .parse()
            .context("VmRSS")
    }

    /// Stops the server with SIGINT and returns `time`'s peak RSS.
    fn stop(mut self) -> Result<u64> {
        let status = Command::new("kill")
            .args(["-INT", &self.pid.to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -INT {} failed", self.pid);
        }
        let mut report = String::new();
        self.time
            .stderr
            .take()
            .context("no stderr")?
            .read_to_string(&mut report)?;
        self.time.wait()?;
        report
            .lines()
            .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"))
            .context("no peak RSS in time's report")?
            .trim()
            .parse()
            .context("peak RSS")
    }
}

/// Waits until the server's RSS has not grown for a second (or 30 s
/// passed) and returns it.
fn settled_rss(server: &Server) -> Result<u64> {
    let start = Instant::now();
    let mut last = server.rss_kib()?;
    let mut stable_since = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
        let now = server.rss_kib()?;
        if now > last + 1024 {
            stable_since = Instant::now();
        }
        last = last.max(now);
        if stable_since.elapsed() >= Duration::from_secs(1) {
            break;
        }
    }
    server.rss_kib()
}

fn run(image: &Path, socket: &Path, attack: Attack) -> Result<Figures> {
    let server = start_server(image, socket)?;
    let start = Instant::now();
    let mut holding_kib = None;
    match attack {
        Attack::PipelinedWrites { count } => pipelined_writes(socket, count)?,
        Attack::UnreadReads {
            connections,
            unaligned,
        } => {
            let mut clients = Vec::new();
            for _ in 0..connections {
                let (mut c, max_block) = connect(socket)?;
                let len = u64::from(max_block);
                for i in 0..UNREAD_READS_PER_CONNECTION {
                    let offset = (i * len) % (DISK_BYTES - len) + u64::from(unaligned);
                    send_request(&mut c, CMD_READ, i, offset, max_block)?;
                }
                clients.push(c);
            }
            holding_kib = Some(settled_rss(&server)?);
            drop(clients);
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    // Give the server a moment to finish the connections.
    std::thread::sleep(Duration::from_secs(1));
    let after_kib = server.rss_kib()?;
    let peak_kib = server.stop()?;
    Ok(Figures {
        peak_kib,
        holding_kib,
        after_kib,
        seconds,
    })
}

/// Handshake with `NBD_OPT_GO`; returns the stream in transmission and the
/// advertised maximum block size.
fn connect(socket: &Path) -> Result<(UnixStream, u32)> {
    let mut s = UnixStream::connect(socket)?;
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello)?;
    s.write_all(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes())?;
    let mut option = Vec::new();
    option.extend_from_slice(&IHAVEOPT.to_be_bytes());
    option.extend_from_slice(&OPT_GO.to_be_bytes());
    option.extend_from_slice(&8u32.to_be_bytes());
    option.extend_from_slice(&0u32.to_be_bytes()); // empty name
    option.extend_from_slice(&1u16.to_be_bytes());
    option.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    s.write_all(&option)?;
    let mut max_block = 0;
    loop {
        let mut head = [0u8; 20];
        s.read_exact(&mut head)?;
        let reply = u32::from_be_bytes(head[12..16].try_into()?);
        let len = u32::from_be_bytes(head[16..20].try_into()?);
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data)?;
        match reply {
            REP_ACK => break,
            REP_INFO if data.len() == 14 && data[..2] == INFO_BLOCK_SIZE.to_be_bytes() => {
                max_block = u32::from_be_bytes(data[10..14].try_into()?);
            }
            REP_INFO => {}
            other => bail!("NBD_OPT_GO refused: reply {other:#x}"),
        }
    }
    if max_block == 0 {
        bail!("the server sent no block sizes");
    }
    Ok((s, max_block))
}

fn send_request(
    s: &mut UnixStream,
    command: u16,
    cookie: u64,
    offset: u64,
    len: u32,
) -> Result<()> {
    let header = RequestHeader {
        flags: 0,
        command,
        cookie,
        offset,
        length: len,
    };
    s.write_all(&header.encode())?;
    Ok(())
}

/// Sends `count` 256-byte writes at unaligned offsets back to back while
/// another thread reads the replies; returns when every reply arrived.
fn pipelined_writes(socket: &Path, count: u64) -> Result<()> {
    let (mut c, _) = connect(socket)?;
    let mut replies = c.try_clone()?;
    let reader = std::thread::spawn(move || -> Result<()> {
        let mut r = BufReader::with_capacity(1 << 16, &mut replies);
        let mut head = [0u8; SIMPLE_REPLY_LEN];
        for _ in 0..count {
            r.read_exact(&mut head)?;
            let error = u32::from_be_bytes(head[4..8].try_into()?);
            if error != 0 {
                bail!("a write failed with error {error}");
            }
        }
        Ok(())
    });
    let payload = [0x5au8; 256];
    let mut out = std::io::BufWriter::with_capacity(1 << 16, &mut c);
    for i in 0..count {
        let header = RequestHeader {
            flags: 0,
            command: CMD_WRITE,
            cookie: i,
            offset: 100 + i * 256,
            length: 256,
        };
        out.write_all(&header.encode())?;
        out.write_all(&payload)?;
    }
    out.flush()?;
    drop(out);
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("reply reader panicked"))??;
    let disc = RequestHeader {
        flags: 0,
        command: CMD_DISC,
        cookie: 0,
        offset: 0,
        length: 0,
    };
    c.write_all(&disc.encode())?;
    Ok(())
}
