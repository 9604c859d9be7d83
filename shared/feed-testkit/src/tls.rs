//! Certificates for the TLS tests: a CA of their own, and one certificate
//! it signs for `localhost` and `127.0.0.1`, good for serving and for
//! calling (mutual TLS), written as PEM files.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// A CA and one certificate it signed, as PEM files in a directory of
/// their own (removed on drop).
pub struct TestPki {
    dir: tempfile::TempDir,
}

impl TestPki {
    /// A new CA (every call another one: certificates of two `TestPki`s do
    /// not trust each other) and its certificate for this host.
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "feed test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);
        let mut leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        leaf.distinguished_name.push(DnType::CommonName, "feed test service");
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let leaf_key = KeyPair::generate()?;
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem())?;
        std::fs::write(dir.path().join("cert.pem"), leaf_cert.pem())?;
        std::fs::write(dir.path().join("key.pem"), leaf_key.serialize_pem())?;
        Ok(Self { dir })
    }

    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// The CA's certificate.
    pub fn ca(&self) -> String {
        self.file("ca.pem")
    }

    /// The certificate for `localhost` and `127.0.0.1`, signed by the CA.
    pub fn cert(&self) -> String {
        self.file("cert.pem")
    }

    /// Its private key.
    pub fn key(&self) -> String {
        self.file("key.pem")
    }
}
