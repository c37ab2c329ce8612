//! Certificates made at test time, TLS channels, bearer tokens and auth files.

use std::net::SocketAddr;

use tonic::transport::{Channel, Endpoint};

/// A certificate authority made for one test, issuing certificates into a temporary directory.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    /// The directory the files are written to (removed on drop).
    pub dir: tempfile::TempDir,
    /// The CA certificate's PEM file.
    pub ca_file: String,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let issuer = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().expect("a key"))
            .expect("a self-signed CA");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ca_file = dir.path().join("ca.pem").to_string_lossy().into_owned();
        std::fs::write(&ca_file, issuer.pem()).expect("write the CA");
        TestCa { issuer, dir, ca_file }
    }

    /// Issues a certificate for `names` (DNS subject alternative names) with
    /// common name `common_name`; writes `<file>.pem` and `<file>.key`, returns their paths.
    pub fn issue(&self, file: &str, common_name: &str, names: &[&str]) -> (String, String) {
        let sans = names
            .iter()
            .map(|name| rcgen::SanType::DnsName((*name).try_into().expect("a DNS name")))
            .collect();
        self.issue_identity(file, &[(rcgen::DnType::CommonName, common_name)], sans)
    }

    /// Issues a certificate whose subject is `subject` (each entry one RDN, in
    /// this order) with `sans` as its alternative names; returns its files.
    pub fn issue_identity(
        &self,
        file: &str,
        subject: &[(rcgen::DnType, &str)],
        sans: Vec<rcgen::SanType>,
    ) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("a key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("certificate parameters");
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (kind, value) in subject {
            params.distinguished_name.push(kind.clone(), *value);
        }
        params.subject_alt_names = sans;
        let certificate = params.signed_by(&key, &self.issuer).expect("a signed certificate");
        let path = |extension: &str| {
            self.dir
                .path()
                .join(format!("{file}.{extension}"))
                .to_string_lossy()
                .into_owned()
        };
        std::fs::write(path("pem"), certificate.pem()).expect("write the certificate");
        std::fs::write(path("key"), key.serialize_pem()).expect("write the key");
        (path("pem"), path("key"))
    }

    /// The CA certificate, for a client's trust store.
    pub fn certificate(&self) -> tonic::transport::Certificate {
        tonic::transport::Certificate::from_pem(std::fs::read(&self.ca_file).expect("read the CA"))
    }
}

/// A TLS channel to `addr` trusting `ca`, presenting `identity` if given.
pub async fn tls_channel(
    addr: SocketAddr,
    ca: tonic::transport::Certificate,
    identity: Option<(&str, &str)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(ca)
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(tonic::transport::Identity::from_pem(
            std::fs::read(cert).expect("read the client certificate"),
            std::fs::read(key).expect("read the client key"),
        ));
    }
    Endpoint::from_shared(format!("https://localhost:{}", addr.port()))
        .expect("a valid endpoint")
        .tls_config(tls)?
        .connect()
        .await
}

/// An interceptor that sends a bearer token, or none.
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Bearer {
    /// Sends `token`, or nothing when `None`.
    pub fn new(token: Option<&str>) -> Bearer {
        Bearer(token.map(|token| format!("Bearer {token}").parse().expect("an ASCII token")))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// An auth file in a temporary directory, rewritable while the service runs.
pub struct TestAuthFile {
    dir: tempfile::TempDir,
}

impl TestAuthFile {
    /// A file holding `text`.
    pub fn new(text: &str) -> TestAuthFile {
        let file = TestAuthFile {
            dir: tempfile::tempdir().unwrap(),
        };
        file.write(text);
        file
    }

    /// Where it is.
    pub fn path(&self) -> String {
        self.dir.path().join("auth.toml").to_string_lossy().into_owned()
    }

    /// Replaces the file in one step, as a deployment tool would.
    pub fn write(&self, text: &str) {
        let staging = self.dir.path().join("auth.toml.new");
        std::fs::write(&staging, text).unwrap();
        std::fs::rename(staging, self.path()).unwrap();
    }
}

/// One `[[client]]` of an auth file, known by the SHA-256 of `token`, with `extra` lines.
pub fn auth_client(name: &str, token: &str, tenant: &str, allow: &[&str], extra: &str) -> String {
    let allow: Vec<String> = allow.iter().map(|entry| format!("{entry:?}")).collect();
    format!(
        "[[client]]\nname = {name:?}\ntoken_sha256 = {:?}\ntenant = {tenant:?}\nallow = [{}]\n{extra}\n",
        sha256_hex(token),
        allow.join(", ")
    )
}

/// The SHA-256 of `token` in hexadecimal, as the auth file holds it.
pub fn sha256_hex(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}
