//! Test support: writable in-memory `DiskIo` implementations (read-only
//! test disks and seeded bytes come from `disk_test_support`), a raw NBD
//! client that speaks the protocol byte by byte, and the external-tool
//! check.

#![allow(dead_code)]

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use disk_backend::Disk;
use disk_backend::DiskError;
use disk_backend::DiskIo;
use disk_backend::check_io_range;
use disk_backend::check_sector_range;
use disk_nbd::protocol::*;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

/// An in-memory disk whose bytes the test can inspect directly.
pub struct VecDisk {
    pub data: Arc<parking_lot::Mutex<Vec<u8>>>,
    pub read_only: bool,
    pub sector_size: u32,
    pub flushes: Arc<std::sync::atomic::AtomicU64>,
}

impl VecDisk {
    /// A disk holding `bytes` (a multiple of 512), plus a handle to them.
    pub fn create(bytes: Vec<u8>, read_only: bool) -> (Disk, Arc<parking_lot::Mutex<Vec<u8>>>) {
        Self::with_sector_size(bytes, read_only, 512)
    }

    /// Like [`VecDisk::create`], also returning the count of flushes.
    pub fn create_counting(
        bytes: Vec<u8>,
    ) -> (
        Disk,
        Arc<parking_lot::Mutex<Vec<u8>>>,
        Arc<std::sync::atomic::AtomicU64>,
    ) {
        let data = Arc::new(parking_lot::Mutex::new(bytes));
        let flushes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let disk = Disk::new(VecDisk {
            data: data.clone(),
            read_only: false,
            sector_size: 512,
            flushes: flushes.clone(),
        })
        .unwrap();
        (disk, data, flushes)
    }

    /// Like [`VecDisk::create`] with another sector size.
    pub fn with_sector_size(
        bytes: Vec<u8>,
        read_only: bool,
        sector_size: u32,
    ) -> (Disk, Arc<parking_lot::Mutex<Vec<u8>>>) {
        assert!(bytes.len().is_multiple_of(sector_size as usize));
        let data = Arc::new(parking_lot::Mutex::new(bytes));
        let disk = Disk::new(VecDisk {
            data: data.clone(),
            read_only,
            sector_size,
            flushes: Default::default(),
        })
        .unwrap();
        (disk, data)
    }
}

impl DiskIo for VecDisk {
    fn disk_type(&self) -> &str {
        "vec"
    }
    fn sector_count(&self) -> u64 {
        self.data.lock().len() as u64 / u64::from(self.sector_size)
    }
    fn sector_size(&self) -> u32 {
        self.sector_size
    }
    fn is_read_only(&self) -> bool {
        self.read_only
    }
    async fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        check_io_range(sector, buf.len(), self.sector_size, self.sector_count())?;
        let off = sector as usize * self.sector_size as usize;
        buf.copy_from_slice(&self.data.lock()[off..off + buf.len()]);
        Ok(())
    }
    async fn write(&self, sector: u64, buf: &[u8], _fua: bool) -> Result<(), DiskError> {
        check_io_range(sector, buf.len(), self.sector_size, self.sector_count())?;
        let off = sector as usize * self.sector_size as usize;
        self.data.lock()[off..off + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    async fn sync_cache(&self) -> Result<(), DiskError> {
        self.flushes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
    async fn unmap(&self, sector: u64, count: u64) -> Result<(), DiskError> {
        check_sector_range(sector, count, self.sector_count())?;
        let ss = self.sector_size as usize;
        let off = sector as usize * ss;
        self.data.lock()[off..off + count as usize * ss].fill(0);
        Ok(())
    }
}

/// Which operations of a [`GatedDisk`] wait at its gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gated {
    Reads,
    Writes,
}

/// An I/O that reached a [`GatedDisk`]: (is a read, first sector, bytes).
pub type GatedIo = (bool, u64, usize);

/// An in-memory disk whose reads or writes each report themselves on a
/// channel as they start and then wait until the test opens the gate for
/// them ([`Gate::open`]), so a test can hold requests inside the disk and
/// release them when it chooses, with no timing involved.
pub struct GatedDisk {
    inner: VecDisk,
    gated: Gated,
    started: tokio::sync::mpsc::UnboundedSender<GatedIo>,
    gate: Arc<tokio::sync::Semaphore>,
}

/// The test's side of a [`GatedDisk`].
pub struct Gate {
    /// Every gated I/O as it starts, before it waits.
    pub started: tokio::sync::mpsc::UnboundedReceiver<GatedIo>,
    gate: Arc<tokio::sync::Semaphore>,
    pub data: Arc<parking_lot::Mutex<Vec<u8>>>,
}

impl Gate {
    /// Lets `n` more gated I/Os through.
    pub fn open(&self, n: usize) {
        self.gate.add_permits(n);
    }
}

impl GatedDisk {
    pub fn create(bytes: Vec<u8>, gated: Gated) -> (Disk, Gate) {
        let (inner, data) = {
            let data = Arc::new(parking_lot::Mutex::new(bytes));
            let disk = VecDisk {
                data: data.clone(),
                read_only: false,
                sector_size: 512,
                flushes: Default::default(),
            };
            (disk, data)
        };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let disk = Disk::new(GatedDisk {
            inner,
            gated,
            started: tx,
            gate: gate.clone(),
        })
        .unwrap();
        (
            disk,
            Gate {
                started: rx,
                gate,
                data,
            },
        )
    }

    async fn pass(&self, read: bool, sector: u64, len: usize) {
        let _ = self.started.send((read, sector, len));
        // Each I/O uses up one opening of the gate.
        self.gate.acquire().await.unwrap().forget();
    }
}

impl DiskIo for GatedDisk {
    fn disk_type(&self) -> &str {
        "gated"
    }
    fn sector_count(&self) -> u64 {
        self.inner.sector_count()
    }
    fn sector_size(&self) -> u32 {
        self.inner.sector_size()
    }
    fn is_read_only(&self) -> bool {
        false
    }
    async fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        if self.gated == Gated::Reads {
            self.pass(true, sector, buf.len()).await;
        }
        self.inner.read(sector, buf).await
    }
    async fn write(&self, sector: u64, buf: &[u8], fua: bool) -> Result<(), DiskError> {
        if self.gated == Gated::Writes {
            self.pass(false, sector, buf.len()).await;
        }
        self.inner.write(sector, buf, fua).await
    }
    async fn sync_cache(&self) -> Result<(), DiskError> {
        self.inner.sync_cache().await
    }
    async fn unmap(&self, sector: u64, count: u64) -> Result<(), DiskError> {
        self.inner.unmap(sector, count).await
    }
}

/// A disk exported on a Unix socket in a temporary directory.
pub struct Served {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub listener: disk_nbd::NbdListener,
    /// The export's NBD URI, for external clients.
    pub uri: String,
}

/// Exports `disk` with `options` on `nbd.sock` in a new temporary directory.
pub async fn serve(disk: Disk, options: disk_nbd::NbdServerOptions) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nbd.sock");
    let listener = disk_nbd::serve_unix(&socket, disk, options).await.unwrap();
    let uri = listener.nbd_uri();
    Served {
        dir,
        socket,
        listener,
        uri,
    }
}

/// Waits (up to 30 s) until the server's counters satisfy `done`, polling
/// them; panics naming `what` and the last counters if they never do.
pub async fn wait_for_stats(
    server: &disk_nbd::NbdServer,
    what: &str,
    done: impl Fn(&disk_nbd::NbdStats) -> bool,
) -> disk_nbd::NbdStats {
    let wait = async {
        loop {
            let stats = server.stats();
            if done(&stats) {
                return stats;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    };
    match tokio::time::timeout(std::time::Duration::from_secs(30), wait).await {
        Ok(stats) => stats,
        Err(_) => panic!(
            "timed out waiting for {what}; counters: {:?}",
            server.stats()
        ),
    }
}

/// Finds an external program. Missing: a failure under `CI=true`,
/// otherwise `None` after printing why the test is skipped.
pub fn require_tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        if ci_env::in_ci() {
            panic!("{name} is required under CI=true (Debian package qemu-utils)");
        }
        eprintln!("skipping: {name} not found (install the Debian package qemu-utils)");
    }
    found
}

/// A byte-level NBD client for protocol tests.
pub struct RawClient {
    pub stream: UnixStream,
}

/// One option reply.
#[derive(Debug)]
pub struct OptReply {
    pub option: u32,
    pub reply: u32,
    pub data: Vec<u8>,
}

impl RawClient {
    /// Connects and checks the greeting; does not send client flags.
    pub async fn connect_raw(path: &Path) -> (RawClient, u16) {
        let mut stream = UnixStream::connect(path).await.unwrap();
        assert_eq!(stream.read_u64().await.unwrap(), NBDMAGIC);
        assert_eq!(stream.read_u64().await.unwrap(), IHAVEOPT);
        let flags = stream.read_u16().await.unwrap();
        (RawClient { stream }, flags)
    }

    /// Connects and sends client flags `FIXED_NEWSTYLE | NO_ZEROES`.
    pub async fn connect(path: &Path) -> RawClient {
        let (mut c, flags) = Self::connect_raw(path).await;
        assert_eq!(flags, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        c.stream
            .write_u32(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)
            .await
            .unwrap();
        c
    }

    pub async fn send_option(&mut self, option: u32, data: &[u8]) {
        let mut b = Vec::new();
        b.extend_from_slice(&IHAVEOPT.to_be_bytes());
        b.extend_from_slice(&option.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.stream.write_all(&b).await.unwrap();
    }

    pub async fn read_option_reply(&mut self) -> OptReply {
        assert_eq!(self.stream.read_u64().await.unwrap(), OPTION_REPLY_MAGIC);
        let option = self.stream.read_u32().await.unwrap();
        let reply = self.stream.read_u32().await.unwrap();
        let len = self.stream.read_u32().await.unwrap();
        let mut data = vec![0; len as usize];
        self.stream.read_exact(&mut data).await.unwrap();
        OptReply {
            option,
            reply,
            data,
        }
    }

    /// Builds the data of `NBD_OPT_INFO`/`NBD_OPT_GO`.
    pub fn info_data(name: &str, infos: &[u16]) -> Vec<u8> {
        let mut d = Vec::new();
        d.extend_from_slice(&(name.len() as u32).to_be_bytes());
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
        for i in infos {
            d.extend_from_slice(&i.to_be_bytes());
        }
        d
    }

    /// Sends `NBD_OPT_INFO` or `NBD_OPT_GO` and collects the replies up to
    /// the final one.
    pub async fn info_or_go(&mut self, option: u32, name: &str, infos: &[u16]) -> Vec<OptReply> {
        self.send_option(option, &Self::info_data(name, infos))
            .await;
        let mut replies = Vec::new();
        loop {
            let r = self.read_option_reply().await;
            assert_eq!(r.option, option);
            let done = r.reply != REP_INFO;
            replies.push(r);
            if done {
                return replies;
            }
        }
    }

    /// `NBD_OPT_GO` on the default export; returns (size, flags).
    pub async fn go(&mut self) -> (u64, u16) {
        let replies = self.info_or_go(OPT_GO, "", &[INFO_BLOCK_SIZE]).await;
        assert_eq!(replies.last().unwrap().reply, REP_ACK, "{replies:?}");
        let export = replies
            .iter()
            .find(|r| r.reply == REP_INFO && r.data[..2] == INFO_EXPORT.to_be_bytes())
            .expect("NBD_INFO_EXPORT");
        let size = u64::from_be_bytes(export.data[2..10].try_into().unwrap());
        let flags = u16::from_be_bytes(export.data[10..12].try_into().unwrap());
        (size, flags)
    }

    /// Connects and enters transmission.
    pub async fn connect_go(path: &Path) -> (RawClient, u64, u16) {
        let mut c = Self::connect(path).await;
        let (size, flags) = c.go().await;
        (c, size, flags)
    }

    pub async fn send_request(
        &mut self,
        command: u16,
        flags: u16,
        cookie: u64,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) {
        let h = RequestHeader {
            flags,
            command,
            cookie,
            offset,
            length,
        };
        let mut b = h.encode().to_vec();
        b.extend_from_slice(payload);
        self.stream.write_all(&b).await.unwrap();
    }

    /// Reads a simple reply; `data_len` is how many data bytes follow a
    /// successful reply for this cookie.
    pub async fn read_reply(&mut self, data_len: impl Fn(u64) -> usize) -> (u32, u64, Vec<u8>) {
        assert_eq!(self.stream.read_u32().await.unwrap(), SIMPLE_REPLY_MAGIC);
        let error = self.stream.read_u32().await.unwrap();
        let cookie = self.stream.read_u64().await.unwrap();
        let mut data = Vec::new();
        if error == 0 {
            data.resize(data_len(cookie), 0);
            self.stream.read_exact(&mut data).await.unwrap();
        }
        (error, cookie, data)
    }

    /// One read request and its reply: (error, data).
    pub async fn read(&mut self, offset: u64, len: u32) -> (u32, Vec<u8>) {
        self.send_request(CMD_READ, 0, 7, offset, len, &[]).await;
        let (error, cookie, data) = self.read_reply(|_| len as usize).await;
        assert_eq!(cookie, 7);
        (error, data)
    }

    /// One command without data in the reply: the error.
    pub async fn command(
        &mut self,
        command: u16,
        flags: u16,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> u32 {
        self.send_request(command, flags, 9, offset, len, payload)
            .await;
        let (error, cookie, _) = self.read_reply(|_| 0).await;
        assert_eq!(cookie, 9);
        error
    }

    /// Whether the server closed the connection (reads EOF).
    pub async fn closed_by_server(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.stream.read(&mut b).await, Ok(0) | Err(_))
    }
}
