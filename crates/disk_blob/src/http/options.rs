//! [`HttpBlobOptions`] and the client they build: connection pool, TCP
//! settings and the rustls configuration with its trusted roots.

use crate::BlobError;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use hyper_util::rt::TokioTimer;
use std::sync::Arc;
use std::time::Duration;

/// Tuning and trust settings of an [`HttpBlob`](super::HttpBlob).
/// `Default` gives sane values; nothing is read from the environment.
#[derive(Debug, Clone)]
pub struct HttpBlobOptions {
    /// Most requests in flight at once (and most idle pooled connections
    /// kept). Default 16: a prefetch (`disk_layered`) keeps at most 12 in
    /// flight, which leaves 4 for the guest's own reads. Zero is treated as
    /// one.
    pub max_connections: usize,
    /// Largest range one GET asks for; longer reads are split into pieces
    /// aligned to this size and fetched in parallel. Default 1 MiB; zero
    /// means the default.
    pub max_request_size: usize,
    /// Most bytes fetched ahead of a sequential reader (one whose read
    /// starts where its previous read ended), in aligned pieces of
    /// `max_request_size`, in parallel. The window starts at two pieces and
    /// doubles with each further sequential read. Zero turns readahead off.
    /// Default 4 MiB.
    pub readahead: usize,
    /// How many times a transient failure is retried. Default 5.
    pub max_retries: u32,
    /// First backoff delay; doubled on each retry. Default 100 ms.
    pub initial_backoff: Duration,
    /// Largest backoff delay. Default 5 s.
    pub max_backoff: Duration,
    /// Largest `Retry-After` delay that is honoured; longer ones are cut to
    /// this. Default 30 s.
    pub max_retry_after: Duration,
    /// Longest wait for response headers, and for each piece of a body.
    /// Default 60 s.
    pub request_timeout: Duration,
    /// Longest wait for a TCP connection. Default 10 s.
    pub connect_timeout: Duration,
    /// Most redirect hops followed per request. Default 5.
    pub max_redirects: u32,
    /// Trust the Mozilla root set compiled in (webpki-roots). Default true.
    pub webpki_roots: bool,
    /// Trust the platform's root store (on Linux this honours
    /// `SSL_CERT_FILE` and `SSL_CERT_DIR`; read once per open). Default
    /// false.
    pub native_roots: bool,
    /// Extra trusted root certificates, each PEM (one or more
    /// certificates) or DER. Default none.
    pub extra_root_certificates: Vec<Vec<u8>>,
    /// How long an idle pooled connection is kept. Default 90 s.
    pub pool_idle_timeout: Duration,
    /// The `User-Agent` header. Default `disk_blob/<version>`.
    pub user_agent: String,
}

impl Default for HttpBlobOptions {
    fn default() -> Self {
        HttpBlobOptions {
            max_connections: 16,
            max_request_size: 1 << 20,
            readahead: 4 << 20,
            max_retries: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            max_redirects: 5,
            webpki_roots: true,
            native_roots: false,
            extra_root_certificates: Vec::new(),
            pool_idle_timeout: Duration::from_secs(90),
            user_agent: concat!("disk_blob/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

impl HttpBlobOptions {
    /// Adds a trusted root certificate (PEM or DER).
    pub fn with_root_certificate(mut self, cert: impl Into<Vec<u8>>) -> Self {
        self.extra_root_certificates.push(cert.into());
        self
    }
}

pub(super) type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Builds the pooled client: TCP with nodelay and a connect timeout, TLS by
/// rustls (ring) with the configured roots, HTTP/1.1 keep-alive.
pub(super) async fn build_client(opts: &HttpBlobOptions) -> Result<HttpClient, BlobError> {
    let tls = tls_config(opts).await?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(opts.connect_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(opts.max_connections.max(1))
        .pool_idle_timeout(opts.pool_idle_timeout)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(https))
}

async fn tls_config(opts: &HttpBlobOptions) -> Result<rustls::ClientConfig, BlobError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    if opts.webpki_roots {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if opts.native_roots {
        let native = tokio::task::spawn_blocking(rustls_native_certs::load_native_certs)
            .await
            .map_err(|e| BlobError::TlsConfig(format!("loading native roots: {e}")))?;
        for e in &native.errors {
            tracing::debug!(error = %e, "skipping a native root certificate source");
        }
        let (added, ignored) = roots.add_parsable_certificates(native.certs);
        tracing::debug!(added, ignored, "loaded native root certificates");
    }
    for (i, cert) in opts.extra_root_certificates.iter().enumerate() {
        let is_pem = cert
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .is_some_and(|p| cert[p..].starts_with(b"-----BEGIN"));
        let ders: Vec<CertificateDer<'static>> = if is_pem {
            CertificateDer::pem_slice_iter(cert)
                .collect::<Result<_, _>>()
                .map_err(|e| BlobError::TlsConfig(format!("root certificate #{i}: bad PEM: {e}")))?
        } else {
            vec![CertificateDer::from(cert.clone())]
        };
        if ders.is_empty() {
            return Err(BlobError::TlsConfig(format!(
                "root certificate #{i}: no certificate in PEM"
            )));
        }
        for der in ders {
            roots
                .add(der)
                .map_err(|e| BlobError::TlsConfig(format!("root certificate #{i}: {e}")))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| BlobError::TlsConfig(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_options_are_sane() {
        let o = HttpBlobOptions::default();
        assert!((4..=16).contains(&o.max_connections));
        assert_eq!(o.max_redirects, 5);
        assert!(o.webpki_roots && !o.native_roots);
    }

    #[tokio::test]
    async fn native_roots_load_without_webpki() {
        let opts = HttpBlobOptions {
            webpki_roots: false,
            native_roots: true,
            ..Default::default()
        };
        tls_config(&opts).await.unwrap();
    }

    #[tokio::test]
    async fn bad_custom_root_is_tls_config_error() {
        let opts = HttpBlobOptions::default().with_root_certificate(
            b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".to_vec(),
        );
        assert!(matches!(
            tls_config(&opts).await,
            Err(BlobError::TlsConfig(_))
        ));
        let opts = HttpBlobOptions::default().with_root_certificate(vec![1, 2, 3]);
        assert!(matches!(
            tls_config(&opts).await,
            Err(BlobError::TlsConfig(_))
        ));
    }
}
