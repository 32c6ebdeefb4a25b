//! `vaultgate.v1.PkiService` over Vault's PKI engine: issue (Vault makes the key pair), sign a
//! caller's CSR, revoke with proof of possession, and the CA chain.
//!
//! Which names a caller may get is the PKI role's decision (Vault: `INVALID_ARGUMENT` naming the
//! field), and which PKI roles a caller may use is its policy's (`PERMISSION_DENIED`).
//! Invariant: a private key passes through once, in the answer of IssueCertificate or the request
//! of RevokeCertificate; it is never logged (redacting `Debug` on every type that holds one:
//! `redact.rs`, `vault::pki::PrivateKey`),
//! cached or kept.

use super::{rpc, Described, Gateway};
use crate::{
    call::Rpc,
    error::{Error, Subject},
    pb::vaultgate::v1::{pki_service_server::PkiService, *},
    vault::pki::{with_newline, CertRequest, Certificate, Certify, PrivateKey, RevokeRequest},
};
use prost_types::Timestamp;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The PKI-backed certificate service.
pub struct Pki(pub Arc<Gateway>);

impl Gateway {
    /// The PKI mount a checked request names, or the configured default.
    fn pki_mount<'a>(&'a self, requested: &'a str) -> &'a str {
        if requested.is_empty() {
            return &self.config.mounts.pki;
        }
        requested
    }
}

fn timestamp(unix_seconds: i64) -> Option<Timestamp> {
    (unix_seconds > 0).then_some(Timestamp { seconds: unix_seconds, nanos: 0 })
}

/// The parts of an issued or signed certificate every answer carries.
fn parts(mut cert: Certificate) -> (String, Vec<String>, String, Option<Timestamp>, Option<PrivateKey>) {
    let chain = cert.chain();
    (with_newline(cert.certificate), chain, cert.serial_number, timestamp(cert.expiration), cert.private_key)
}

impl Described for IssueCertificateRequest {
    const RPC: &'static Rpc = rpc!("PkiService", "IssueCertificate", PkiRole);
    fn target(&self) -> (&str, usize) {
        (&self.role, 1)
    }
}

impl Described for SignCertificateRequest {
    const RPC: &'static Rpc = rpc!("PkiService", "SignCertificate", PkiRole);
    fn target(&self) -> (&str, usize) {
        (&self.role, 1)
    }
}

impl Described for RevokeCertificateRequest {
    const RPC: &'static Rpc = rpc!("PkiService", "RevokeCertificate", Serial);
    fn target(&self) -> (&str, usize) {
        (&self.serial_number, 1)
    }
}

impl Described for GetCaChainRequest {
    const RPC: &'static Rpc = rpc!("PkiService", "GetCaChain", Mount);
    fn target(&self) -> (&str, usize) {
        (&self.mount, 1)
    }
}

#[tonic::async_trait]
impl PkiService for Pki {
    async fn issue_certificate(
        &self,
        req: Request<IssueCertificateRequest>,
    ) -> Result<Response<IssueCertificateResponse>, Status> {
        let gw = &self.0;
        gw.serve(req, |actor, deadline, r| async move {
            let body = CertRequest {
                common_name: &r.common_name,
                alt_names: r.alt_names.join(","),
                ip_sans: r.ip_sans.join(","),
                ttl: super::validate::cert_ttl(r.ttl.as_ref())?,
                csr: None,
                private_key_format: Some("pkcs8"),
            };
            let cert = gw
                .vault
                .pki_certify(Certify::Issue, &actor.token, gw.pki_mount(&r.mount), &r.role, &body, deadline)
                .await
                .map_err(|e| Error::from_pki(e, Subject::PkiRole(&r.role)))?;
            let (certificate, ca_chain, serial_number, expiration, key) = parts(cert);
            let private_key = key.map(PrivateKey::into_pem).unwrap_or_default();
            tracing::info!(caller = %actor.caller, role = %r.role, serial = %serial_number, "certificate issued");
            Ok(IssueCertificateResponse { certificate, private_key, ca_chain, serial_number, expiration })
        })
        .await
    }

    async fn sign_certificate(
        &self,
        req: Request<SignCertificateRequest>,
    ) -> Result<Response<SignCertificateResponse>, Status> {
        let gw = &self.0;
        gw.serve(req, |actor, deadline, r| async move {
            let body = CertRequest {
                common_name: &r.common_name,
                alt_names: r.alt_names.join(","),
                ip_sans: String::new(),
                ttl: super::validate::cert_ttl(r.ttl.as_ref())?,
                csr: Some(&r.csr),
                private_key_format: None,
            };
            let cert = gw
                .vault
                .pki_certify(Certify::Sign, &actor.token, gw.pki_mount(&r.mount), &r.role, &body, deadline)
                .await
                .map_err(|e| Error::from_pki(e, Subject::PkiRole(&r.role)))?;
            let (certificate, ca_chain, serial_number, expiration, _) = parts(cert);
            tracing::info!(caller = %actor.caller, role = %r.role, serial = %serial_number, "certificate signed");
            Ok(SignCertificateResponse { certificate, ca_chain, serial_number, expiration })
        })
        .await
    }

    async fn revoke_certificate(
        &self,
        req: Request<RevokeCertificateRequest>,
    ) -> Result<Response<RevokeCertificateResponse>, Status> {
        let gw = &self.0;
        gw.serve(req, |actor, deadline, r| async move {
            let mount = gw.pki_mount(&r.mount);
            let body = RevokeRequest {
                certificate: (!r.certificate.is_empty()).then_some(r.certificate.as_str()),
                serial_number: (!r.serial_number.is_empty()).then_some(r.serial_number.as_str()),
                private_key: &r.private_key,
            };
            let at = gw
                .vault
                .pki_revoke_with_key(&actor.token, mount, &body, deadline)
                .await
                .map_err(|e| Error::from_pki(e, Subject::PkiMount(mount)))?;
            tracing::info!(caller = %actor.caller, mount, "certificate revoked");
            Ok(RevokeCertificateResponse { revocation_time: timestamp(at) })
        })
        .await
    }

    async fn get_ca_chain(&self, req: Request<GetCaChainRequest>) -> Result<Response<GetCaChainResponse>, Status> {
        let gw = &self.0;
        gw.serve(req, |actor, deadline, r| async move {
            let mount = gw.pki_mount(&r.mount);
            let ca_chain = gw
                .vault
                .pki_ca_chain(&actor.token, mount, deadline)
                .await
                .map_err(|e| Error::from_pki(e, Subject::PkiMount(mount)))?;
            Ok(GetCaChainResponse { ca_chain })
        })
        .await
    }
}
