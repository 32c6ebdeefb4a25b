//! Certificates through the gateway against real OpenBao's PKI engine (dev provisioning: root CA
//! "vaultgate dev root CA", PKI roles `billing` and `reports`). Issued certificates are checked
//! with real X.509 code: x509-parser verifies the CA's signature, rcgen derives the public key of
//! the returned private key, and rustls completes a TLS handshake trusting only the CA. Every
//! private key seen here is registered so that the run's log check would find it.

use crate::support::{req, Env};
use rcgen::PublicKeyData;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::{
    self,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName},
};
use tonic::Code;
use tonic_types::StatusExt;
use vaultgate::pb::vaultgate::v1::{pki_service_client::PkiServiceClient as Client, *};
use x509_parser::{extensions::GeneralName, pem::parse_x509_pem, prelude::*};

/// Registers a private key with the log check: the whole PEM and each line of its body.
fn remember_key(env: &Env, pem: &str) {
    env.remember(pem);
    for line in pem.lines().filter(|l| !l.starts_with("-----") && l.len() >= 16) {
        env.remember(line);
    }
}

async fn issue(
    env: &Env,
    jwt: &str,
    common_name: &str,
    alt_names: &[&str],
) -> Result<IssueCertificateResponse, tonic::Status> {
    let r = IssueCertificateRequest {
        role: "billing".into(),
        common_name: common_name.into(),
        alt_names: alt_names.iter().map(|s| s.to_string()).collect(),
        ttl: Some(prost_types::Duration { seconds: 3600, nanos: 0 }),
        ..Default::default()
    };
    let issued = Client::new(env.channel()).issue_certificate(req(r, jwt)).await?.into_inner();
    remember_key(env, &issued.private_key);
    Ok(issued)
}

/// The DER of the first PEM block of `pem`.
fn der(pem: &str) -> Vec<u8> {
    parse_x509_pem(pem.as_bytes()).expect("a PEM block").1.contents
}

/// The DNS names of a certificate's subjectAltName.
fn dns_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(san)) = cert.subject_alternative_name() else { return Vec::new() };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect()
}

/// Checks that `leaf_pem` is signed by the CA in `ca_pem` (signature verified by x509-parser,
/// issuer name equal to the CA's subject, validity now).
fn assert_chains(leaf_pem: &str, ca_pem: &str) {
    let (leaf_der, ca_der) = (der(leaf_pem), der(ca_pem));
    let (_, leaf) = X509Certificate::from_der(&leaf_der).expect("leaf parses");
    let (_, ca) = X509Certificate::from_der(&ca_der).expect("CA parses");
    leaf.verify_signature(Some(ca.public_key())).expect("the CA's signature on the certificate verifies");
    assert_eq!(leaf.issuer(), ca.subject(), "issuer is the CA");
    assert!(leaf.validity().is_valid(), "valid now");
    assert!(ca.is_ca(), "the chain's certificate is a CA");
}

/// Serves TLS with `chain` + `key` on 127.0.0.1:0 for one connection, and connects to it as
/// `name` trusting only `trusted_ca_pem`. `Ok` with what the server sent when the handshake
/// succeeded.
async fn tls_round(chain: &[String], key: &str, trusted_ca_pem: &str, name: &str) -> Result<Vec<u8>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = chain
        .iter()
        .flat_map(|pem| CertificateDer::pem_slice_iter(pem.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| format!("private key: {e}"))?;
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("the server refuses the certificate and key: {e}"))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let served = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.ok()?;
        let mut tls = acceptor.accept(tcp).await.ok()?;
        tls.write_all(b"hello over TLS").await.ok()?;
        tls.shutdown().await.ok()
    });
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(trusted_ca_pem.as_bytes()) {
        roots.add(ca.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let server_name = ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
    let result = async {
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect(server_name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let mut got = Vec::new();
        tls.read_to_end(&mut got).await.map_err(|e| e.to_string())?;
        Ok(got)
    }
    .await;
    served.abort();
    result
}

pub async fn issued_certificate_chains_to_the_ca_and_serves_tls(env: &'static Env) {
    let name = "api.billing.svc.cluster.local";
    let issued = issue(env, &env.billing, name, &["api-internal.billing.svc.cluster.local"]).await.expect("issue");
    let chain = Client::new(env.channel())
        .get_ca_chain(req(GetCaChainRequest::default(), &env.billing))
        .await
        .expect("GetCaChain")
        .into_inner()
        .ca_chain;
    assert!(!chain.is_empty(), "a CA chain");
    let root = chain.last().expect("root");
    let root_der = der(root);
    let (_, root_cert) = X509Certificate::from_der(&root_der).expect("root parses");
    assert_eq!(
        root_cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()),
        Some(vaultgate::dev::provision::ROOT_CA)
    );
    assert_eq!(issued.ca_chain, chain, "the issue answer carries the same chain");
    // The certificate is signed by the chain's first CA, and each CA by the next.
    assert_chains(&issued.certificate, &chain[0]);
    for pair in chain.windows(2) {
        assert_chains(&pair[0], &pair[1]);
    }
    let leaf_der = der(&issued.certificate);
    let (_, leaf) = X509Certificate::from_der(&leaf_der).expect("leaf parses");
    let sans = dns_sans(&leaf);
    assert!(
        sans.iter().any(|s| s == name) && sans.iter().any(|s| s == "api-internal.billing.svc.cluster.local"),
        "{sans:?}"
    );
    assert_eq!(leaf.raw_serial_as_string(), issued.serial_number, "serial as Vault reports it");
    let expires = issued.expiration.as_ref().expect("expiration").seconds;
    assert_eq!(expires, leaf.validity().not_after.timestamp(), "expiration is the certificate's notAfter");
    // The private key is PKCS#8 and belongs to the certificate.
    assert!(issued.private_key.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8 PEM");
    let key = rcgen::KeyPair::from_pem(&issued.private_key).expect("the private key parses");
    assert_eq!(key.subject_public_key_info(), leaf.public_key().raw, "the private key matches the certificate");
    // A TLS server with it is accepted by a client trusting only the CA, under its name only.
    let server_chain: Vec<String> =
        std::iter::once(issued.certificate.clone()).chain(chain[..chain.len() - 1].iter().cloned()).collect();
    let got = tls_round(&server_chain, &issued.private_key, root, name).await.expect("TLS trusting only the CA");
    assert_eq!(got, b"hello over TLS");
    let other_ca = vaultgate::dev::certs::Ca::new("some other CA").expect("ca").cert_pem();
    let refused = tls_round(&server_chain, &issued.private_key, &other_ca, name).await;
    assert!(refused.is_err(), "a client trusting another CA must refuse it");
    let wrong_name = tls_round(&server_chain, &issued.private_key, root, "api.reports.svc.cluster.local").await;
    assert!(wrong_name.is_err(), "a client expecting another name must refuse it");
}

pub async fn signed_csr_carries_the_csr_public_key(env: &'static Env) {
    let key = rcgen::KeyPair::generate().expect("key pair");
    let name = "csr.billing.svc.cluster.local";
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).expect("params");
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    let csr = params.serialize_request(&key).expect("csr").pem().expect("csr pem");
    let signed = Client::new(env.channel())
        .sign_certificate(req(
            SignCertificateRequest { role: "billing".into(), csr, ..Default::default() },
            &env.billing,
        ))
        .await
        .expect("SignCertificate")
        .into_inner();
    let leaf_der = der(&signed.certificate);
    let (_, leaf) = X509Certificate::from_der(&leaf_der).expect("certificate parses");
    assert_eq!(leaf.public_key().raw, key.subject_public_key_info(), "the certificate carries the CSR's public key");
    assert!(dns_sans(&leaf).iter().any(|s| s == name));
    let root = signed.ca_chain.last().expect("chain");
    assert_chains(&signed.certificate, &signed.ca_chain[0]);
    let tls = tls_round(std::slice::from_ref(&signed.certificate), &key.serialize_pem(), root, name).await;
    assert_eq!(tls.expect("TLS with the caller's own key"), b"hello over TLS");
    // A CSR for a name billing's role does not allow is refused, naming the field.
    let mut theirs = rcgen::CertificateParams::new(vec!["api.reports.svc.cluster.local".to_string()]).expect("params");
    theirs.distinguished_name.push(rcgen::DnType::CommonName, "api.reports.svc.cluster.local");
    let csr = theirs.serialize_request(&key).expect("csr").pem().expect("pem");
    let status = Client::new(env.channel())
        .sign_certificate(req(
            SignCertificateRequest { role: "billing".into(), csr, ..Default::default() },
            &env.billing,
        ))
        .await
        .expect_err("a CSR for reports' name");
    assert_eq!((status.code(), field(&status).as_str()), (Code::InvalidArgument, "common_name"), "{status:?}");
}

/// Serial numbers on the mount's CRL (fetched from Vault, parsed by x509-parser).
async fn crl_serials(env: &Env) -> Vec<String> {
    let body = reqwest::get(format!("{}/v1/pki/crl", env.vault_addr)).await.expect("CRL").bytes().await.expect("body");
    let (_, crl) = x509_parser::parse_x509_crl(&body).expect("the CRL parses");
    crl.iter_revoked_certificates().map(|r| r.raw_serial_as_string()).collect()
}

pub async fn revocation_needs_the_private_key(env: &'static Env) {
    let a = issue(env, &env.billing, "revoke-a.billing.svc.cluster.local", &[]).await.expect("issue a");
    let b = issue(env, &env.billing, "revoke-b.billing.svc.cluster.local", &[]).await.expect("issue b");
    let mut c = Client::new(env.channel());
    // Another certificate's key proves nothing: refused, and nothing is revoked.
    let with_b = RevokeCertificateRequest {
        certificate: a.certificate.clone(),
        private_key: b.private_key.clone(),
        ..Default::default()
    };
    let status = c.revoke_certificate(req(with_b, &env.billing)).await.expect_err("revoke with another key");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(!status.message().contains("PRIVATE KEY"), "{status:?}");
    assert!(!crl_serials(env).await.contains(&a.serial_number), "a refused revocation revoked nothing");
    // Garbage instead of a key is the caller's error, never echoed.
    let junk = RevokeCertificateRequest {
        serial_number: a.serial_number.clone(),
        private_key: "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEH".into(),
        ..Default::default()
    };
    let status = c.revoke_certificate(req(junk, &env.billing)).await.expect_err("junk key");
    assert_eq!((status.code(), field(&status).as_str()), (Code::InvalidArgument, "private_key"));
    assert!(!status.message().contains("MIGHAgEA"));
    // With its own key (by serial number): revoked, and on Vault's CRL.
    let own = RevokeCertificateRequest {
        serial_number: a.serial_number.clone(),
        private_key: a.private_key.clone(),
        ..Default::default()
    };
    let revoked = c.revoke_certificate(req(own, &env.billing)).await.expect("revoke with its key").into_inner();
    let at = revoked.revocation_time.expect("revocation time").seconds;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    assert!((now - 300..=now + 5).contains(&at), "revoked at {at}, now {now}");
    let serials = crl_serials(env).await;
    assert!(serials.contains(&a.serial_number), "{} not on the CRL {serials:?}", a.serial_number);
    assert!(!serials.contains(&b.serial_number), "b was not revoked");
    // By certificate, with its own key, works too.
    let b_own =
        RevokeCertificateRequest { certificate: b.certificate, private_key: b.private_key, ..Default::default() };
    c.revoke_certificate(req(b_own, &env.billing)).await.expect("revoke b by certificate");
    assert!(crl_serials(env).await.contains(&b.serial_number));
}

fn field(status: &tonic::Status) -> String {
    status
        .get_details_bad_request()
        .and_then(|b| b.field_violations.first().map(|v| v.field.clone()))
        .unwrap_or_default()
}

pub async fn pki_error_table(env: &'static Env) {
    let base = IssueCertificateRequest {
        role: "billing".into(),
        common_name: "api.billing.svc.cluster.local".into(),
        ..Default::default()
    };
    let cases: Vec<(&str, IssueCertificateRequest, &str, Code, &str)> = vec![
        ("reports on billing's PKI role", base.clone(), "reports", Code::PermissionDenied, ""),
        (
            "billing on reports' PKI role",
            IssueCertificateRequest { role: "reports".into(), ..base.clone() },
            "billing",
            Code::PermissionDenied,
            "",
        ),
        (
            "a name of reports",
            IssueCertificateRequest { common_name: "api.reports.svc.cluster.local".into(), ..base.clone() },
            "billing",
            Code::InvalidArgument,
            "common_name",
        ),
        (
            "an alt name of reports",
            IssueCertificateRequest { alt_names: vec!["x.reports.svc.cluster.local".into()], ..base.clone() },
            "billing",
            Code::InvalidArgument,
            "alt_names",
        ),
        (
            "an IP the role does not allow",
            IssueCertificateRequest { ip_sans: vec!["10.0.0.1".into()], ..base.clone() },
            "billing",
            Code::InvalidArgument,
            "ip_sans",
        ),
        (
            "the bare domain",
            IssueCertificateRequest { common_name: "billing.svc.cluster.local".into(), ..base.clone() },
            "billing",
            Code::InvalidArgument,
            "common_name",
        ),
        (
            "a comma smuggling a second name",
            IssueCertificateRequest {
                alt_names: vec!["a.billing.svc.cluster.local,x.reports.svc.cluster.local".into()],
                ..base.clone()
            },
            "billing",
            Code::InvalidArgument,
            "alt_names[0]",
        ),
        (
            "an empty role",
            IssueCertificateRequest { role: String::new(), ..base.clone() },
            "billing",
            Code::InvalidArgument,
            "role",
        ),
        (
            "an empty name",
            IssueCertificateRequest { common_name: String::new(), ..base.clone() },
            "billing",
            Code::InvalidArgument,
            "common_name",
        ),
        (
            "a zero ttl",
            IssueCertificateRequest { ttl: Some(prost_types::Duration { seconds: 0, nanos: 0 }), ..base.clone() },
            "billing",
            Code::InvalidArgument,
            "ttl",
        ),
        (
            "a mount not in the policy",
            IssueCertificateRequest { mount: "pki-other".into(), ..base.clone() },
            "billing",
            Code::PermissionDenied,
            "",
        ),
        (
            "a bad mount",
            IssueCertificateRequest { mount: "../sys".into(), ..base.clone() },
            "billing",
            Code::InvalidArgument,
            "mount",
        ),
        ("no credentials", base.clone(), "", Code::Unauthenticated, ""),
    ];
    let mut c = Client::new(env.channel());
    for (what, request, caller, code, want_field) in cases {
        let request = match caller {
            "billing" => req(request, &env.billing),
            "reports" => req(request, &env.reports),
            _ => tonic::Request::new(request),
        };
        let status = c.issue_certificate(request).await.expect_err(what);
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert_eq!(field(&status), want_field, "{what}: {status:?}");
        println!("  pki errors: {what:<34} -> {:?} {}", status.code(), want_field);
    }
    // The same roles for signing; a CSR that is not one.
    let bad_csr = SignCertificateRequest { role: "billing".into(), csr: "not a csr".into(), ..Default::default() };
    let status = c.sign_certificate(req(bad_csr, &env.billing)).await.expect_err("bad csr");
    assert_eq!((status.code(), field(&status).as_str()), (Code::InvalidArgument, "csr"));
    let broken = SignCertificateRequest {
        role: "billing".into(),
        csr: "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n".into(),
        ..Default::default()
    };
    let status = c.sign_certificate(req(broken, &env.billing)).await.expect_err("broken csr");
    assert_eq!(status.code(), Code::InvalidArgument, "Vault refuses a CSR that does not parse: {status:?}");
    // The CA chain is public: any authenticated caller may read it.
    let chain = c.get_ca_chain(req(GetCaChainRequest::default(), &env.reports)).await.expect("reports reads the chain");
    assert!(!chain.into_inner().ca_chain.is_empty());
}

/// Every new RPC is audited (one line each: rpc, role, target, code; never the private key) and
/// counted in the metrics under its own fixed name.
pub async fn audit_and_metrics_cover_certificates_and_signatures(env: &'static Env) {
    use vaultgate::pb::vaultgate::v1::encryption_service_client::EncryptionServiceClient as Transit;
    let path = env.dir.join("pki-gateway-audit.log");
    let metrics_port = vaultgate::dev::process::free_port().expect("port");
    let own = crate::support::serve_gateway(&format!(
        "metrics_listen = \"127.0.0.1:{metrics_port}\"\n[vault]\naddress = \"{}\"\n[[callers]]\nrole = \"billing\"\nequals = \"billing\"\n[[callers]]\nrole = \"reports\"\nequals = \"reports\"\n[audit]\npath = {:?}\n",
        env.vault_addr,
        path.to_string_lossy()
    ))
    .await;
    let mut pki = Client::new(own.channel.clone());
    let issue = IssueCertificateRequest {
        role: "billing".into(),
        common_name: "audit.billing.svc.cluster.local".into(),
        ..Default::default()
    };
    let issued = pki.issue_certificate(req(issue.clone(), &env.billing)).await.expect("issue").into_inner();
    remember_key(env, &issued.private_key);
    pki.issue_certificate(req(issue, &env.reports)).await.expect_err("reports on billing's role");
    pki.get_ca_chain(req(GetCaChainRequest::default(), &env.billing)).await.expect("chain");
    let revoke = RevokeCertificateRequest {
        serial_number: issued.serial_number.clone(),
        private_key: issued.private_key.clone(),
        ..Default::default()
    };
    pki.revoke_certificate(req(revoke, &env.billing)).await.expect("revoke");
    let mut transit = Transit::new(own.channel.clone());
    let sign = SignRequest { key: "billing-signing".into(), input: b"x".to_vec(), ..Default::default() };
    let signature = transit.sign(req(sign, &env.billing)).await.expect("sign").into_inner().signature;
    let verify = VerifyRequest { key: "billing-signing".into(), input: b"x".to_vec(), signature, ..Default::default() };
    transit.verify(req(verify, &env.billing)).await.expect("verify");
    let hmac = HmacRequest { key: "billing".into(), input: b"x".to_vec(), ..Default::default() };
    let mac = transit.hmac(req(hmac, &env.billing)).await.expect("hmac").into_inner().hmac;
    let check = VerifyHmacRequest { key: "billing".into(), input: b"x".to_vec(), hmac: mac, ..Default::default() };
    transit.verify_hmac(req(check, &env.billing)).await.expect("verify hmac");

    let text = std::fs::read_to_string(&path).expect("audit log");
    let summary: Vec<(String, String, String, String)> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line"))
        .map(|l| {
            let s = |k: &str| l[k].as_str().unwrap_or("?").to_string();
            (s("rpc"), s("role"), s("target"), s("code"))
        })
        .collect();
    let want = |rpc: &str, role: &str, target: &str, code: &str| (rpc.into(), role.into(), target.into(), code.into());
    assert_eq!(
        summary,
        vec![
            want("IssueCertificate", "billing", "billing", "Ok"),
            want("IssueCertificate", "reports", "billing", "PermissionDenied"),
            want("GetCaChain", "billing", "", "Ok"),
            want("RevokeCertificate", "billing", &issued.serial_number, "Ok"),
            want("Sign", "billing", "billing-signing", "Ok"),
            want("Verify", "billing", "billing-signing", "Ok"),
            want("Hmac", "billing", "billing", "Ok"),
            want("VerifyHmac", "billing", "billing", "Ok"),
        ]
    );
    assert!(!text.contains("PRIVATE KEY"), "the audit log holds no private key");
    let metrics = env.http_get(&format!("http://127.0.0.1:{metrics_port}/metrics")).await;
    for rpc in ["IssueCertificate", "GetCaChain", "RevokeCertificate", "Sign", "Verify", "Hmac", "VerifyHmac"] {
        let line = format!("rpc=\"{rpc}\"");
        assert!(metrics.lines().any(|l| l.starts_with("vaultgate_grpc_calls_total") && l.contains(&line)), "{rpc}");
    }
    assert!(metrics.contains("code=\"PermissionDenied\""), "the refused call is counted by its code");
}
