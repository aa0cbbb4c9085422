//! Certificates for TLS tests, generated with rcgen: a throw-away CA and server certificates it
//! signs for `localhost` and `127.0.0.1`, written as the PEM files wharf's `[tls]` reads.
//!
//! Used as `support::tlsgen` by the test binaries that need it.
//! Must not: touch the machine's trust store; clients are given the CA explicitly.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A certificate authority that exists only for one test.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
}

/// A server certificate and its private key.
pub struct ServerCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
}

impl Ca {
    pub fn new(common_name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        let key = KeyPair::generate().expect("generate CA key");
        let cert = params.self_signed(&key).expect("self-sign CA");
        Ca {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses), signed by this CA.
    pub fn server_cert(&self, names: &[&str]) -> ServerCert {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("server cert params");
        params
            .distinguished_name
            .push(DnType::CommonName, names[0].as_str());
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("generate server key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign server cert");
        ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
        }
    }

    /// Writes the CA certificate as `<dir>/ca.crt`, the name container tools look for in a
    /// `--cert-dir`; returns its path.
    pub fn write_cert_dir(&self, dir: &Path) -> PathBuf {
        fs::create_dir_all(dir).expect("create cert dir");
        let path = dir.join("ca.crt");
        fs::write(&path, &self.cert_pem).expect("write ca.crt");
        path
    }
}

/// The paths `[tls] cert` and `key` point at.
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    pub fn in_dir(dir: &Path) -> TlsFiles {
        TlsFiles {
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
        }
    }

    /// Writes (or overwrites) both files with `cert`.
    pub fn write(&self, cert: &ServerCert) {
        fs::write(&self.cert, &cert.cert_pem).expect("write server.crt");
        fs::write(&self.key, &cert.key_pem).expect("write server.key");
    }
}
