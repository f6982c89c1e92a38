//! Listening sockets: Unix and loopback TCP listeners, their accept loop
//! and the [`NbdListener`] handle.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use disk_backend::Disk;
use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::task::JoinHandle;
use tokio::task::JoinSet;

use crate::options::NbdServerOptions;
use crate::server::NbdError;
use crate::server::NbdServer;
use crate::server::shutdown_signalled;

/// Send buffer asked for on accepted sockets: a 256 KiB read reply then
/// fits in one system call instead of waiting for the client to drain the
/// default ~200 KiB buffer mid-reply.
const SOCKET_SEND_BUF: usize = 4 << 20;

impl NbdServer {
    /// Listens on a Unix socket at `path` and serves every client that
    /// connects, each on its own task, until shut down.
    ///
    /// A stale socket file left by a dead server is replaced; a socket with
    /// a live server behind it, or any other file, is an error.
    pub async fn listen_unix(&self, path: impl AsRef<Path>) -> Result<NbdListener, NbdError> {
        if self.is_shut_down() {
            return Err(NbdError::ShutDown);
        }
        let path = path.as_ref().to_path_buf();
        let err = |source| NbdError::Listen {
            endpoint: path.display().to_string(),
            source,
        };
        remove_stale_socket(&path).map_err(err)?;
        let listener = tokio::net::UnixListener::bind(&path).map_err(err)?;
        let task = tokio::spawn(accept_loop(self.clone(), listener));
        Ok(NbdListener {
            server: self.clone(),
            endpoint: Endpoint::Unix(path),
            task: Some(task),
        })
    }

    /// Listens on a TCP address, which must be a loopback address (the
    /// protocol has no authentication here), e.g. `127.0.0.1:0` for any
    /// free port.
    pub async fn listen_tcp(&self, addr: SocketAddr) -> Result<NbdListener, NbdError> {
        if !addr.ip().is_loopback() {
            return Err(NbdError::InvalidOptions(format!(
                "refusing to serve NBD on {addr}: only loopback addresses are allowed"
            )));
        }
        if self.is_shut_down() {
            return Err(NbdError::ShutDown);
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| NbdError::Listen {
                endpoint: addr.to_string(),
                source,
            })?;
        let local = listener.local_addr().map_err(|source| NbdError::Listen {
            endpoint: addr.to_string(),
            source,
        })?;
        let task = tokio::spawn(accept_loop(self.clone(), listener));
        Ok(NbdListener {
            server: self.clone(),
            endpoint: Endpoint::Tcp(local),
            task: Some(task),
        })
    }
}

/// Exports `disk` on a Unix socket at `path`: [`NbdServer::new`] followed
/// by [`NbdServer::listen_unix`].
pub async fn serve_unix(
    path: impl AsRef<Path>,
    disk: Disk,
    options: NbdServerOptions,
) -> Result<NbdListener, NbdError> {
    NbdServer::new(disk, options)?.listen_unix(path).await
}

fn remove_stale_socket(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the path exists and is not a socket",
        ));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another server is listening on this socket",
        )),
        Err(_) => std::fs::remove_file(path),
    }
}

/// Where a listener listens.
#[derive(Debug, Clone)]
enum Endpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

/// A running listener. Dropping it shuts the server down without waiting;
/// call [`NbdListener::shutdown`] to wait for every connection to finish.
#[derive(Debug)]
pub struct NbdListener {
    server: NbdServer,
    endpoint: Endpoint,
    task: Option<JoinHandle<()>>,
}

impl NbdListener {
    /// The server behind this listener.
    pub fn server(&self) -> &NbdServer {
        &self.server
    }

    /// The Unix socket path, for a Unix listener.
    pub fn socket_path(&self) -> Option<&Path> {
        match &self.endpoint {
            Endpoint::Unix(p) => Some(p),
            Endpoint::Tcp(_) => None,
        }
    }

    /// The bound address, for a TCP listener.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &self.endpoint {
            Endpoint::Unix(_) => None,
            Endpoint::Tcp(a) => Some(*a),
        }
    }

    /// The export as an NBD URI that QEMU and libnbd understand:
    /// `nbd+unix:///NAME?socket=PATH` or `nbd://ADDR/NAME`.
    ///
    /// The name and path are percent-encoded where URI syntax needs it.
    pub fn nbd_uri(&self) -> String {
        let name = uri_escape(self.server.export.name.as_deref().unwrap_or("").as_bytes());
        match &self.endpoint {
            Endpoint::Unix(p) => {
                use std::os::unix::ffi::OsStrExt;
                let path = uri_escape(p.as_os_str().as_bytes());
                format!("nbd+unix:///{name}?socket={path}")
            }
            Endpoint::Tcp(a) => format!("nbd://{a}/{name}"),
        }
    }

    /// Resolves once the server has been asked to shut down (by
    /// [`NbdServer::shutdown`] on any clone). Use it to serve "until
    /// stopped", then call [`NbdListener::shutdown`] to wait for the
    /// connections.
    pub async fn closed(&self) {
        let mut rx = self.server.export.shutdown.subscribe();
        shutdown_signalled(&mut rx).await;
    }

    /// Shuts the server down (see [`NbdServer::shutdown`]), waits until
    /// the listener and all its connections have finished, and removes the
    /// socket file.
    pub async fn shutdown(mut self) -> Result<(), NbdError> {
        self.server.shutdown();
        let result = match self.task.take() {
            Some(task) => task.await.map_err(|e| NbdError::TaskFailed(e.to_string())),
            None => Ok(()),
        };
        self.remove_socket();
        result
    }

    fn remove_socket(&self) {
        if let Endpoint::Unix(p) = &self.endpoint {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Percent-encodes everything but unreserved URI characters and `/`.
fn uri_escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Drop for NbdListener {
    fn drop(&mut self) {
        if self.task.is_some() {
            self.server.shutdown();
            self.remove_socket();
        }
    }
}

/// A listening socket the accept loop can take connections from.
trait Acceptor: Send + 'static {
    type Read: AsyncRead + Unpin + Send + 'static;
    type Write: AsyncWrite + Unpin + Send + 'static;
    fn accept_split(&self) -> impl Future<Output = io::Result<(Self::Read, Self::Write)>> + Send;
}

impl Acceptor for tokio::net::UnixListener {
    type Read = tokio::net::unix::OwnedReadHalf;
    type Write = tokio::net::unix::OwnedWriteHalf;
    async fn accept_split(&self) -> io::Result<(Self::Read, Self::Write)> {
        let (s, _) = self.accept().await?;
        grow_send_buffer(&s);
        Ok(s.into_split())
    }
}

/// Asks the kernel for a send buffer of [`SOCKET_SEND_BUF`] bytes (it caps
/// the request at `net.core.wmem_max`). Best effort: a failure only costs
/// speed.
fn grow_send_buffer<S: std::os::fd::AsFd>(s: &S) {
    if let Err(e) = socket2::SockRef::from(s).set_send_buffer_size(SOCKET_SEND_BUF) {
        tracing::debug!(
            error = &e as &dyn std::error::Error,
            "could not grow the NBD socket's send buffer"
        );
    }
}

impl Acceptor for tokio::net::TcpListener {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = tokio::net::tcp::OwnedWriteHalf;
    async fn accept_split(&self) -> io::Result<(Self::Read, Self::Write)> {
        let (s, _) = self.accept().await?;
        s.set_nodelay(true)?;
        grow_send_buffer(&s);
        Ok(s.into_split())
    }
}

async fn accept_loop<A: Acceptor>(server: NbdServer, listener: A) {
    let mut shutdown = server.export.shutdown.subscribe();
    let mut connections = JoinSet::new();
    let mut next_id = 0u64;
    loop {
        while connections.try_join_next().is_some() {}
        let accepted = tokio::select! {
            biased;
            _ = shutdown_signalled(&mut shutdown) => break,
            r = listener.accept_split() => r,
        };
        match accepted {
            Ok((r, w)) => {
                next_id += 1;
                let id = next_id;
                let server = server.clone();
                connections.spawn(async move {
                    match server.serve_connection(r, w).await {
                        Ok(()) => tracing::debug!(connection = id, "NBD client disconnected"),
                        Err(e) => tracing::info!(
                            connection = id,
                            error = &e as &dyn std::error::Error,
                            "NBD connection ended with an error"
                        ),
                    }
                });
            }
            Err(e) => {
                // Typically EMFILE; back off briefly instead of spinning.
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    "accepting an NBD client failed"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_escape_keeps_paths_readable() {
        assert_eq!(uri_escape(b"/tmp/a-b_c.sock"), "/tmp/a-b_c.sock");
        assert_eq!(
            uri_escape(b"/tmp/my disk#1?.sock"),
            "/tmp/my%20disk%231%3F.sock"
        );
        assert_eq!(uri_escape("é".as_bytes()), "%C3%A9");
    }
}
