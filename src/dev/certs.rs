//! Certificates for dev mode's mTLS listener and for tests: a throwaway CA, a server certificate
//! for `localhost`/`127.0.0.1`, and client certificates carrying a SPIFFE ID, DNS name or CN.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A certificate and its private key, both PEM (`Debug` redacts the key).
#[derive(Clone)]
pub struct Pair {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pair").field("cert_pem", &self.cert_pem).field("key_pem", &"<redacted>").finish()
    }
}

/// A throwaway certificate authority.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// Names a client certificate carries.
#[derive(Debug, Default, Clone)]
pub struct ClientNames<'a> {
    /// URI SAN, e.g. a SPIFFE ID.
    pub uri: Option<&'a str>,
    /// DNS SAN.
    pub dns: Option<&'a str>,
    /// Subject common name.
    pub cn: Option<&'a str>,
}

fn err(e: rcgen::Error) -> String {
    format!("certificate generation: {e}")
}

impl Ca {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Result<Ca, String> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().map_err(err)?;
        Ok(Ca { issuer: CertifiedIssuer::self_signed(params, key).map_err(err)? })
    }

    /// The CA certificate (PEM), to trust.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `localhost` and `127.0.0.1`.
    pub fn server(&self) -> Result<Pair, String> {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).map_err(err)?;
        params.subject_alt_names.push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        params.distinguished_name.push(DnType::CommonName, "vaultgate");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate with these names.
    pub fn client(&self, names: &ClientNames<'_>) -> Result<Pair, String> {
        let mut params =
            CertificateParams::new(names.dns.map(str::to_string).into_iter().collect::<Vec<_>>()).map_err(err)?;
        if let Some(uri) = names.uri {
            params.subject_alt_names.push(SanType::URI(uri.try_into().map_err(err)?));
        }
        if let Some(cn) = names.cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Result<Pair, String> {
        let key = KeyPair::generate().map_err(err)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(err)?;
        Ok(Pair { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}
