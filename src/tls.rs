//! TLS of the gRPC listener: the rustls configuration (verifying client certificates against
//! `tls.client_ca` when set) that `listener.rs` runs handshakes with; tonic exposes the verified
//! peer certificates to the handlers.
//!
//! Certificate, key and client CA files are re-read every `tls.reload_interval_ms`; when their
//! content changed and still forms a valid configuration, new handshakes use it. Connections
//! already established keep theirs (nothing is dropped). A bad new file is logged and ignored.

use crate::{config::TlsConfig, metrics::Metrics};
use sha2::{Digest, Sha256};
use std::sync::{Arc, RwLock};
use tokio_rustls::{
    rustls::{
        self,
        pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
        server::WebPkiClientVerifier,
        RootCertStore, ServerConfig,
    },
    TlsAcceptor,
};

/// The files' content, so a reload happens only when something changed.
fn fingerprint(files: &[Vec<u8>]) -> [u8; 32] {
    let mut h = Sha256::new();
    for f in files {
        h.update((f.len() as u64).to_le_bytes());
        h.update(f);
    }
    h.finalize().into()
}

fn read(config: &TlsConfig) -> Result<Vec<Vec<u8>>, String> {
    let mut files = vec![
        std::fs::read(&config.cert).map_err(|e| format!("tls.cert: cannot read {}: {e}", config.cert.display()))?,
        std::fs::read(&config.key).map_err(|e| format!("tls.key: cannot read {}: {e}", config.key.display()))?,
    ];
    if let Some(ca) = &config.client_ca {
        files.push(std::fs::read(ca).map_err(|e| format!("tls.client_ca: cannot read {}: {e}", ca.display()))?);
    }
    Ok(files)
}

/// Builds the rustls server configuration from the files' content (`[cert, key, client_ca?]`).
fn build(config: &TlsConfig, files: &[Vec<u8>]) -> Result<Arc<ServerConfig>, String> {
    let certs = CertificateDer::pem_slice_iter(&files[0])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls.cert: not a PEM certificate chain: {e}"))?;
    if certs.is_empty() {
        return Err("tls.cert: no certificate in the file".into());
    }
    let key = PrivateKeyDer::from_pem_slice(&files[1]).map_err(|e| format!("tls.key: not a PEM private key: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?;
    let builder = match files.get(2) {
        Some(ca_pem) => {
            let mut roots = RootCertStore::empty();
            for ca in CertificateDer::pem_slice_iter(ca_pem) {
                let ca = ca.map_err(|e| format!("tls.client_ca: not a PEM certificate bundle: {e}"))?;
                roots.add(ca).map_err(|e| format!("tls.client_ca: unusable CA certificate: {e}"))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if config.require_client_cert { verifier } else { verifier.allow_unauthenticated() };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| format!("tls.client_ca: {e}"))?)
        }
        None => builder.with_no_client_auth(),
    };
    let mut server = builder.with_single_cert(certs, key).map_err(|e| format!("tls.cert/tls.key: {e}"))?;
    // gRPC runs on HTTP/2; clients such as grpc-go insist on negotiating it with ALPN.
    server.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(server))
}

/// Exports the expiry of the leaf certificate of `cert_pem` (the served chain's first), for the
/// certificate-expiry alert; a certificate that does not parse here was refused by `build` already.
fn publish_expiry(cert_pem: &[u8], metrics: &Metrics) {
    let leaf = CertificateDer::pem_slice_iter(cert_pem).next().and_then(Result::ok);
    let parsed = leaf.as_ref().and_then(|der| x509_parser::parse_x509_certificate(der).ok());
    if let Some((_, cert)) = parsed {
        metrics.tls_expiry(cert.validity().not_after.timestamp());
    }
}

/// Checks the TLS files at start-up (a gateway must not start with a broken certificate).
pub fn check(config: &TlsConfig) -> Result<(), String> {
    build(config, &read(config)?).map(|_| ())
}

/// The TLS server configuration new handshakes use, replaced when the files change.
#[derive(Clone)]
pub struct Certificates {
    current: Arc<RwLock<([u8; 32], Arc<ServerConfig>)>>,
    metrics: Arc<Metrics>,
}

impl Certificates {
    /// Reads and checks the files; the served certificate's expiry goes to `metrics`.
    pub fn load(config: &TlsConfig, metrics: Arc<Metrics>) -> Result<Certificates, String> {
        let files = read(config)?;
        let current = Arc::new(RwLock::new((fingerprint(&files), build(config, &files)?)));
        publish_expiry(&files[0], &metrics);
        Ok(Certificates { current, metrics })
    }

    /// An acceptor with the current configuration.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.read().unwrap_or_else(|p| p.into_inner()).1.clone())
    }

    /// Re-reads the files every `tls.reload_interval_ms` until dropped; a changed, valid set is
    /// used by the handshakes that start after it.
    pub async fn reload(self, config: TlsConfig) {
        loop {
            tokio::time::sleep(config.reload_interval).await;
            let files = match read(&config) {
                Ok(files) => files,
                Err(e) => {
                    tracing::warn!(error = %e, "TLS files unreadable; keeping the current certificate");
                    continue;
                }
            };
            let print = fingerprint(&files);
            if self.current.read().unwrap_or_else(|p| p.into_inner()).0 == print {
                continue;
            }
            match build(&config, &files) {
                Ok(server) => {
                    *self.current.write().unwrap_or_else(|p| p.into_inner()) = (print, server);
                    publish_expiry(&files[0], &self.metrics);
                    tracing::info!("TLS certificate files changed: new connections use them");
                }
                Err(e) => tracing::warn!(error = %e, "new TLS files are not usable; keeping the current ones"),
            }
        }
    }
}
