//! Test certificates made with rcgen: a CA, a server certificate for 127.0.0.1/localhost and
//! a client certificate, written as PEM files into a temp dir.

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// PEM files of one test PKI.
pub struct Certs {
    _dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A certificate for both sides (server and client), as etcd members use on peer URLs.
    pub member_cert: PathBuf,
    pub member_key: PathBuf,
    /// A CA that signed none of the above.
    pub other_ca: PathBuf,
}

fn ca(name: &str) -> anyhow::Result<(String, Issuer<'static, KeyPair>)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), Issuer::new(params, key)))
}

fn leaf(
    issuer: &Issuer<'static, KeyPair>,
    name: &str,
    usages: &[ExtendedKeyUsagePurpose],
) -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate()?;
    let mut params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = usages.to_vec();
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

impl Certs {
    /// Generates a fresh PKI.
    pub fn generate() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let path = |name: &str| dir.path().join(name);
        let (ca_pem, issuer) = ca("ferry test CA")?;
        let (other_pem, _) = ca("some other CA")?;
        let (server_pem, server_key) = leaf(
            &issuer,
            "ferry test server",
            &[ExtendedKeyUsagePurpose::ServerAuth],
        )?;
        let (client_pem, client_key) = leaf(
            &issuer,
            "ferry test client",
            &[ExtendedKeyUsagePurpose::ClientAuth],
        )?;
        let (member_pem, member_key) = leaf(
            &issuer,
            "ferry test member",
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )?;
        for (name, content) in [
            ("ca.pem", &ca_pem),
            ("other-ca.pem", &other_pem),
            ("server.pem", &server_pem),
            ("server-key.pem", &server_key),
            ("client.pem", &client_pem),
            ("client-key.pem", &client_key),
            ("member.pem", &member_pem),
            ("member-key.pem", &member_key),
        ] {
            std::fs::write(path(name), content)?;
        }
        Ok(Self {
            ca: path("ca.pem"),
            server_cert: path("server.pem"),
            server_key: path("server-key.pem"),
            client_cert: path("client.pem"),
            client_key: path("client-key.pem"),
            member_cert: path("member.pem"),
            member_key: path("member-key.pem"),
            other_ca: path("other-ca.pem"),
            _dir: dir,
        })
    }

    /// Client settings with the CA and the client certificate.
    pub fn client(&self) -> ferry_testkit::TlsFiles {
        ferry_testkit::TlsFiles {
            ca: Some(self.ca.clone()),
            cert: Some(self.client_cert.clone()),
            key: Some(self.client_key.clone()),
            insecure_skip_verify: false,
        }
    }
}
