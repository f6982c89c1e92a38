//! A small real HTTP(S) client for the server tests (hyper + hyper-rustls).

#![allow(dead_code)]

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use http_body_util::Empty;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// A response read to the end (or the body error).
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Result<Bytes, String>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn body(&self) -> &[u8] {
        self.body.as_ref().expect("body read failed")
    }
}

pub struct Client {
    inner: HyperClient<Connector, Empty<Bytes>>,
}

impl Client {
    /// A client trusting only the webpki roots plus `extra_root_der`.
    pub fn new(extra_root_der: Option<&[u8]>) -> Self {
        Self::with_http2(extra_root_der, false)
    }

    /// With `http2`, TLS connections negotiate h2 through ALPN.
    pub fn with_http2(extra_root_der: Option<&[u8]>, http2: bool) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots_certs());
        if let Some(der) = extra_root_der {
            roots
                .add(rustls::pki_types::CertificateDer::from(der.to_vec()))
                .unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http();
        let connector = if http2 {
            builder.enable_http1().enable_http2().build()
        } else {
            builder.enable_http1().build()
        };
        Self {
            inner: HyperClient::builder(TokioExecutor::new()).build(connector),
        }
    }

    pub async fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Resp, String> {
        let mut b = http::Request::builder().method(method).uri(url);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        let req = b.body(Empty::new()).unwrap();
        let resp = self
            .inner
            .request(req)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let status = resp.status().as_u16();
        let version = resp.version();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|e| format!("{e:?}"));
        Ok(Resp {
            status,
            version,
            headers,
            body,
        })
    }

    pub fn raw(&self) -> &HyperClient<Connector, Empty<Bytes>> {
        &self.inner
    }

    pub async fn get(&self, url: &str, headers: &[(&str, &str)]) -> Resp {
        self.request("GET", url, headers).await.unwrap()
    }

    pub async fn head(&self, url: &str) -> Resp {
        self.request("HEAD", url, &[]).await.unwrap()
    }
}

fn webpki_roots_certs() -> Vec<rustls::pki_types::TrustAnchor<'static>> {
    webpki_roots::TLS_SERVER_ROOTS.to_vec()
}
