//! TLS for the tests: a throwaway CA issuing certificates (rcgen, ring), files
//! the services read them from, and clients that trust that CA: the config
//! of a gRPC client (plain or with a client certificate), the leaf a server
//! presents on a new connection, and a WebSocket client over TLS (WSS).
//!
//! ```no_run
//! # async fn demo() {
//! use e2e::tls::TestCa;
//! use e2e::TempDir;
//!
//! let dir = TempDir::new();
//! let ca = TestCa::new();
//! let files = ca.issue(&["localhost", "127.0.0.1"]).write(&dir, "server");
//! // point gateway.tls.certPath / keyPath at files.cert / files.key ...
//! # let _ = files;
//! # }
//! ```

use crate::harness::TempDir;
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A CA for one test.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, KeyPair>,
    pem: String,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// A certificate the CA issued, with its key.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM (PKCS#8).
    pub key_pem: String,
    /// The certificate, DER (what a peer is shown).
    pub der: Vec<u8>,
}

/// Where [`Issued::write`] put the files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The issuing CA's certificate.
    pub ca: PathBuf,
    /// The certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

fn must<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("test PKI: {what}: {e}"))
}

impl TestCa {
    /// A new self-signed CA.
    pub fn new() -> TestCa {
        let mut params = must(CertificateParams::new(Vec::<String>::new()), "CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "openclaw test CA");
        let key = must(KeyPair::generate(), "CA key");
        let pem = must(params.self_signed(&key), "CA certificate").pem();
        TestCa { issuer: rcgen::Issuer::new(params, key), pem }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A certificate for `names` (DNS names or IP literals), usable by a server
    /// and by a client.
    pub fn issue(&self, names: &[&str]) -> Issued {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = must(CertificateParams::new(names), "leaf params");
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = must(KeyPair::generate(), "leaf key");
        let cert = must(params.signed_by(&key, &self.issuer), "leaf certificate");
        Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().to_vec() }
    }

    /// Roots holding this CA.
    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        let der = must(rustls::pki_types::pem::PemObject::from_pem_slice(self.pem.as_bytes()), "CA PEM");
        must(roots.add(der), "CA root");
        roots
    }

    /// A client config trusting this CA, presenting `identity` when given.
    pub fn client_config(&self, identity: Option<&Issued>, alpn: &[&[u8]]) -> ClientConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = must(
            ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions(),
            "protocol versions",
        )
        .with_root_certificates(self.roots());
        let mut config = match identity {
            None => builder.with_no_client_auth(),
            Some(id) => {
                must(builder.with_client_auth_cert(vec![id.cert_der()], id.key_der()), "client identity")
            }
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }
}

impl Issued {
    /// The certificate as rustls takes it.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        CertificateDer::from(self.der.clone())
    }

    /// The key as rustls takes it.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        must(rustls::pki_types::pem::PemObject::from_pem_slice(self.key_pem.as_bytes()), "key PEM")
    }

    /// Writes `<prefix>.crt`, `<prefix>.key` and `<prefix>-ca.crt` (the CA of
    /// `ca`) into `dir`.
    pub fn write(&self, dir: &TempDir, prefix: &str, ca: &TestCa) -> TlsFiles {
        let files = TlsFiles {
            ca: dir.join(&format!("{prefix}-ca.crt")),
            cert: dir.join(&format!("{prefix}.crt")),
            key: dir.join(&format!("{prefix}.key")),
        };
        self.overwrite(&files);
        must(std::fs::write(&files.ca, ca.pem()), "write CA");
        files
    }

    /// Replaces the certificate and key at `files` with this one (key first, so
    /// a reader between the two writes sees a pair that does not match and
    /// keeps what it had).
    pub fn overwrite(&self, files: &TlsFiles) {
        must(std::fs::write(&files.key, &self.key_pem), "write key");
        must(std::fs::write(&files.cert, &self.cert_pem), "write certificate");
    }
}

/// Connects to `addr` over TLS as a client of `config`, checking `name`.
pub async fn tls_connect(
    addr: SocketAddr,
    config: ClientConfig,
    name: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned()).map_err(std::io::Error::other)?;
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await
}

/// The leaf certificate (DER) a TLS server at `addr` presents on a new connection.
pub async fn served_leaf(addr: SocketAddr, ca: &TestCa) -> std::io::Result<Vec<u8>> {
    let tls = tls_connect(addr, ca.client_config(None, &[b"http/1.1"]), "localhost").await?;
    let (_, session) = tls.get_ref();
    let leaf = session.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec());
    leaf.ok_or_else(|| std::io::Error::other("no peer certificate"))
}

/// A WebSocket over TLS to `wss://localhost:<port>/` (tokio-rustls under
/// tokio-tungstenite's plain client, which needs no TLS feature of its own).
pub async fn wss_connect(
    addr: SocketAddr,
    ca: &TestCa,
) -> Result<tokio_tungstenite::WebSocketStream<TlsStream<TcpStream>>, tokio_tungstenite::tungstenite::Error> {
    let tls = tls_connect(addr, ca.client_config(None, &[b"http/1.1"]), "localhost").await?;
    let url = format!("wss://localhost:{}/", addr.port());
    let (ws, _) = tokio_tungstenite::client_async(url, tls).await?;
    Ok(ws)
}
