//! TLS for both services, with rustls on the ring backend only: the public
//! port's server config (gateway-http), the internal hop's mutual TLS (agent-svc
//! as server, the gateway and `agent-call` as clients), and the pinned-leaf
//! client of the health checks.
//!
//! Certificates, keys and CAs come from PEM files and are read again when the
//! files change ([`Reloading`]): a task polls their modification time, length
//! and inode every [`RELOAD_INTERVAL`] (tests shorten it) and swaps in a new
//! `Arc` of the rustls config. A connection keeps the config it was made with,
//! so a rotation drops nothing; a file that does not load is logged and the
//! previous config stays. The swap covers the whole config, so a new CA is
//! picked up the same way as a new certificate.
//!
//! Not here: which config keys name the files (`config`), and serving (each
//! service does its own handshakes on its own connections).

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::net::TcpStream;

/// How often the files behind a [`Reloading`] config are checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(5);
/// ALPN id of HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN id of HTTP/1.1.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Which file of a TLS setting a problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    /// The certificate chain (leaf first).
    Cert,
    /// The private key of the leaf.
    Key,
    /// The CA that the peer's certificate must chain to.
    Ca,
}

/// A certificate, key or CA file that could not be used. Displays as one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct TlsError {
    /// Which file.
    pub file: TlsFile,
    /// Its path, as configured.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl TlsError {
    fn new(file: TlsFile, path: &Path, message: impl Into<String>) -> TlsError {
        TlsError { file, path: path.display().to_string(), message: message.into() }
    }
}

/// The PEM files of one side of a TLS connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// The leaf's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA the peer must chain to: on a server, clients must then present a
    /// certificate (mutual TLS); on a client, the server is verified against it.
    pub ca: Option<PathBuf>,
}

impl TlsPaths {
    fn files(&self) -> Vec<(TlsFile, PathBuf)> {
        let mut files = vec![(TlsFile::Cert, self.cert.clone()), (TlsFile::Key, self.key.clone())];
        if let Some(ca) = &self.ca {
            files.push((TlsFile::Ca, ca.clone()));
        }
        files
    }
}

/// The process's one crypto provider: ring.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What the files held, parsed.
struct Material {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    ca: Option<RootCertStore>,
}

impl Material {
    /// Parses the files' contents (in [`TlsPaths::files`] order).
    fn parse(paths: &TlsPaths, contents: &[Vec<u8>]) -> Result<Material, TlsError> {
        let (cert_pem, key_pem) = (&contents[0], &contents[1]);
        let certs = parse_certs(TlsFile::Cert, &paths.cert, cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| TlsError::new(TlsFile::Key, &paths.key, format!("no usable private key: {e}")))?;
        let ca = match (&paths.ca, contents.get(2)) {
            (Some(path), Some(pem)) => {
                let mut roots = RootCertStore::empty();
                for cert in parse_certs(TlsFile::Ca, path, pem)? {
                    roots.add(cert).map_err(|e| TlsError::new(TlsFile::Ca, path, e.to_string()))?;
                }
                Some(roots)
            }
            _ => None,
        };
        Ok(Material { certs, key, ca })
    }
}

fn parse_certs(file: TlsFile, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::new(file, path, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::new(file, path, "no certificate in the file"));
    }
    Ok(certs)
}

/// Builds a server config: `certs`/`key` presented, clients verified against
/// `ca` when there is one.
fn build_server(paths: &TlsPaths, m: Material, alpn: &[&[u8]]) -> Result<ServerConfig, TlsError> {
    let key_err = |e: rustls::Error| TlsError::new(TlsFile::Key, &paths.key, e.to_string());
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(key_err)?;
    let builder = match (m.ca, &paths.ca) {
        (Some(roots), Some(ca_path)) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError::new(TlsFile::Ca, ca_path, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(m.certs, m.key).map_err(key_err)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Builds a client config: the server verified against `ca`, `certs`/`key`
/// presented.
fn build_client(paths: &TlsPaths, m: Material, alpn: &[&[u8]]) -> Result<ClientConfig, TlsError> {
    let key_err = |e: rustls::Error| TlsError::new(TlsFile::Key, &paths.key, e.to_string());
    let Some(roots) = m.ca else {
        return Err(TlsError::new(TlsFile::Ca, Path::new(""), "a CA is required"));
    };
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(key_err)?
        .with_root_certificates(roots)
        .with_client_auth_cert(m.certs, m.key)
        .map_err(key_err)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// What identifies a file's version without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

async fn stamp(path: &Path) -> Option<Stamp> {
    let meta = tokio::fs::metadata(path).await.ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Stamp { modified: meta.modified().ok(), len: meta.len(), inode })
}

async fn read_all(files: &[(TlsFile, PathBuf)]) -> Result<Vec<Vec<u8>>, TlsError> {
    let mut out = Vec::with_capacity(files.len());
    for (file, path) in files {
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|e| TlsError::new(*file, path, format!("cannot read: {e}")))?;
        out.push(bytes);
    }
    Ok(out)
}

type Build<C> = Box<dyn Fn(&[Vec<u8>]) -> Result<C, TlsError> + Send + Sync>;

struct Shared<C> {
    current: RwLock<Arc<C>>,
}

/// A rustls config built from files and rebuilt when they change; cloning
/// shares it. [`Reloading::current`] is what a new connection uses. The watch
/// task ends once every clone is dropped.
pub struct Reloading<C> {
    shared: Arc<Shared<C>>,
}

impl<C> Clone for Reloading<C> {
    fn clone(&self) -> Self {
        Reloading { shared: self.shared.clone() }
    }
}

impl<C> fmt::Debug for Reloading<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloading").finish_non_exhaustive()
    }
}

/// The public port's config, or agent-svc's (with client certificates required).
pub type ServerTls = Reloading<ServerConfig>;
/// A client config of the internal hop (server verified, client certificate presented).
pub type ClientTls = Reloading<ClientConfig>;

impl<C: Send + Sync + 'static> Reloading<C> {
    /// The config for the next connection.
    pub fn current(&self) -> Arc<C> {
        self.shared.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// A config that never changes (no files behind it).
    pub fn fixed(config: C) -> Reloading<C> {
        Reloading { shared: Arc::new(Shared { current: RwLock::new(Arc::new(config)) }) }
    }

    /// Loads the files once (an error is returned: startup fails), then checks
    /// them every `every` and rebuilds the config when one changed.
    async fn watch(paths: TlsPaths, every: Duration, build: Build<C>) -> Result<Reloading<C>, TlsError> {
        let files = paths.files();
        let mut stamps = Vec::with_capacity(files.len());
        for (_, path) in &files {
            stamps.push(stamp(path).await);
        }
        let config = build(&read_all(&files).await?)?;
        let reloading = Reloading::fixed(config);
        let weak = Arc::downgrade(&reloading.shared);
        tokio::spawn(watch_files(weak, files, stamps, every, build));
        Ok(reloading)
    }
}

/// Polls the files' stamps; on a change, rebuilds and swaps. Ends when the
/// config is dropped.
async fn watch_files<C>(
    weak: Weak<Shared<C>>,
    files: Vec<(TlsFile, PathBuf)>,
    mut stamps: Vec<Option<Stamp>>,
    every: Duration,
    build: Build<C>,
) {
    loop {
        tokio::time::sleep(every).await;
        if weak.strong_count() == 0 {
            return;
        }
        let mut now = Vec::with_capacity(files.len());
        for (_, path) in &files {
            now.push(stamp(path).await);
        }
        if now == stamps {
            continue;
        }
        // Remembered even when the new files do not load: they are tried again
        // on their next change, not logged on every poll.
        stamps = now;
        let built = match read_all(&files).await {
            Ok(contents) => build(&contents),
            Err(e) => Err(e),
        };
        let Some(shared) = weak.upgrade() else { return };
        match built {
            Ok(config) => {
                *shared.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
                tracing::info!(cert = %files[0].1.display(), "TLS certificate files changed; reloaded");
            }
            Err(e) => {
                tracing::warn!(error = %e, "TLS files changed but do not load; keeping the previous certificate");
            }
        }
    }
}

impl Reloading<ServerConfig> {
    /// A server config from `paths` offering `alpn`, reloaded on change (see
    /// [`Reloading`]). With `paths.ca`, clients must present a certificate that
    /// chains to it.
    pub async fn server(
        paths: TlsPaths,
        alpn: &[&'static [u8]],
        every: Duration,
    ) -> Result<ServerTls, TlsError> {
        let alpn = alpn.to_vec();
        let p = paths.clone();
        let build: Build<ServerConfig> =
            Box::new(move |contents| build_server(&p, Material::parse(&p, contents)?, &alpn));
        Reloading::watch(paths, every, build).await
    }

    /// A `tokio-rustls` acceptor on the current config.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current())
    }
}

impl Reloading<ClientConfig> {
    /// A client config from `paths` (`ca` required) offering `alpn`, reloaded on change.
    pub async fn client(
        paths: TlsPaths,
        alpn: &[&'static [u8]],
        every: Duration,
    ) -> Result<ClientTls, TlsError> {
        if paths.ca.is_none() {
            return Err(TlsError::new(TlsFile::Ca, Path::new(""), "a CA is required"));
        }
        let alpn = alpn.to_vec();
        let p = paths.clone();
        let build: Build<ClientConfig> =
            Box::new(move |contents| build_client(&p, Material::parse(&p, contents)?, &alpn));
        Reloading::watch(paths, every, build).await
    }
}

/// A client config that accepts exactly one server certificate, the leaf in
/// `pinned_pem` (no CA, no host name: for a health check of the process's own
/// port), presenting `identity` (cert chain PEM, key PEM) when given.
pub fn pinned_client(
    pinned: &Path,
    identity: Option<&TlsPaths>,
    alpn: &[&[u8]],
) -> Result<ClientConfig, TlsError> {
    let read = |file, path: &Path| {
        std::fs::read(path).map_err(|e| TlsError::new(file, path, format!("cannot read: {e}")))
    };
    let leaf = parse_certs(TlsFile::Cert, pinned, &read(TlsFile::Cert, pinned)?)?.swap_remove(0);
    let verifier = Arc::new(PinnedLeaf { leaf, provider: provider() });
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::new(TlsFile::Cert, pinned, e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(id) => {
            let contents = [read(TlsFile::Cert, &id.cert)?, read(TlsFile::Key, &id.key)?];
            let own = TlsPaths { ca: None, ..id.clone() };
            let m = Material::parse(&own, &contents)?;
            builder
                .with_client_auth_cert(m.certs, m.key)
                .map_err(|e| TlsError::new(TlsFile::Key, &id.key, e.to_string()))?
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Accepts one exact leaf certificate (its signatures still checked).
#[derive(Debug)]
struct PinnedLeaf {
    leaf: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedLeaf {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.leaf.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A server name for `host` (a DNS name or an IP literal, brackets allowed).
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).map_err(|_| format!("{host:?} is not a valid TLS server name"))
}

/// A tonic connector (`Endpoint::connect_with_connector*`) that dials the
/// endpoint URI's host and port over TCP (no Nagle) and speaks TLS on it,
/// verifying the server as `server_name` (default: the URI's host).
#[derive(Clone, Debug)]
pub struct GrpcTlsConnector {
    tls: ClientTls,
    server_name: Option<ServerName<'static>>,
}

impl GrpcTlsConnector {
    /// A connector using `tls` (read for every new connection).
    pub fn new(tls: ClientTls, server_name: Option<ServerName<'static>>) -> GrpcTlsConnector {
        GrpcTlsConnector { tls, server_name }
    }
}

/// A TLS connection as hyper (and so tonic) wants it.
pub type TlsIo = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;

impl tower::Service<http::Uri> for GrpcTlsConnector {
    type Response = TlsIo;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<TlsIo>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.tls.current());
        let fixed_name = self.server_name.clone();
        Box::pin(async move {
            let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
            let host = uri.host().ok_or_else(|| invalid(format!("no host in {uri}")))?;
            let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
            let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
                Some("https") => 443,
                _ => 80,
            });
            let name = match fixed_name {
                Some(n) => n,
                None => server_name(&host).map_err(invalid)?,
            };
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

    type Ca = rcgen::Issuer<'static, KeyPair>;

    fn ca() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        rcgen::Issuer::new(params, KeyPair::generate().unwrap())
    }

    fn leaf(ca: &Ca, name: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_owned()]).unwrap().signed_by(&key, ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("services-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[tokio::test]
    async fn loads_reloads_on_change_and_keeps_the_old_config_on_a_bad_file() {
        let d = dir();
        let ca = ca();
        let (cert, key) = leaf(&ca, "localhost");
        let paths = TlsPaths { cert: d.join("c.pem"), key: d.join("k.pem"), ca: None };
        std::fs::write(&paths.cert, &cert).unwrap();
        std::fs::write(&paths.key, &key).unwrap();
        let tls = ServerTls::server(paths.clone(), &[ALPN_H2], Duration::from_millis(20)).await.unwrap();
        let first = tls.current();
        assert_eq!(first.alpn_protocols, vec![b"h2".to_vec()]);

        // A bad file: logged, the config stays.
        std::fs::write(&paths.cert, "not a certificate").unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(Arc::ptr_eq(&first, &tls.current()));

        // A good one: swapped.
        let (cert2, key2) = leaf(&ca, "localhost");
        std::fs::write(&paths.key, &key2).unwrap();
        std::fs::write(&paths.cert, &cert2).unwrap();
        let mut swapped = false;
        for _ in 0..200 {
            if !Arc::ptr_eq(&first, &tls.current()) {
                swapped = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(swapped, "the new certificate was never loaded");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test]
    async fn startup_errors_name_the_file() {
        let d = dir();
        let ca = ca();
        let (cert, _) = leaf(&ca, "localhost");
        let (_, other_key) = leaf(&ca, "localhost");
        let paths = TlsPaths { cert: d.join("c.pem"), key: d.join("k.pem"), ca: None };
        let e = ServerTls::server(paths.clone(), &[], RELOAD_INTERVAL).await.unwrap_err();
        assert_eq!(e.file, TlsFile::Cert);
        assert!(e.message.contains("cannot read"), "{e}");
        std::fs::write(&paths.cert, &cert).unwrap();
        std::fs::write(&paths.key, &other_key).unwrap();
        let e = ServerTls::server(paths.clone(), &[], RELOAD_INTERVAL).await.unwrap_err();
        assert_eq!(e.file, TlsFile::Key, "{e}");
        std::fs::write(&paths.key, "garbage").unwrap();
        let e = ServerTls::server(paths.clone(), &[], RELOAD_INTERVAL).await.unwrap_err();
        assert_eq!(e.file, TlsFile::Key, "{e}");
        let e = ClientTls::client(paths, &[], RELOAD_INTERVAL).await.unwrap_err();
        assert_eq!(e.file, TlsFile::Ca, "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn server_names() {
        assert!(matches!(server_name("agent-svc").unwrap(), ServerName::DnsName(_)));
        assert!(matches!(server_name("[::1]").unwrap(), ServerName::IpAddress(_)));
        assert!(matches!(server_name("10.0.0.1").unwrap(), ServerName::IpAddress(_)));
        assert!(server_name("bad name").is_err());
    }
}
