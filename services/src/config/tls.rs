//! The TLS settings as the services use them: the public port's
//! (`gateway.tls`) and the internal hop's (`gateway.agentService.tls`), checked
//! for completeness, and a [`TlsError`] turned into a config error naming the
//! key of the file at fault.

use super::{ConfigError, LoadedConfig};
use crate::tls::{TlsError, TlsFile, TlsPaths};
use std::path::PathBuf;

/// Config prefix of the public port's TLS.
pub const PUBLIC_TLS_KEY: &str = "gateway.tls";
/// Config prefix of the internal hop's TLS.
pub const AGENT_SERVICE_TLS_KEY: &str = "gateway.agentService.tls";

/// Mutual TLS between the gateway and agent-svc, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HopTls {
    /// This process's certificate and key, and the CA the peer must chain to.
    pub paths: TlsPaths,
    /// The name agent-svc's certificate is checked for (default: the target's host).
    pub server_name: Option<String>,
}

impl LoadedConfig {
    /// `gateway.tls` when enabled: its certificate and key (both required).
    pub fn public_tls(&self) -> Result<Option<TlsPaths>, ConfigError> {
        let t = &self.config.gateway.tls;
        if !t.enabled {
            return Ok(None);
        }
        let cert = self.required_path(&t.cert_path, PUBLIC_TLS_KEY, "certPath")?;
        let key = self.required_path(&t.key_path, PUBLIC_TLS_KEY, "keyPath")?;
        Ok(Some(TlsPaths { cert, key, ca: None }))
    }

    /// `gateway.agentService.tls` when present: CA, certificate and key (all
    /// required) and the optional server name.
    pub fn agent_service_tls(&self) -> Result<Option<HopTls>, ConfigError> {
        let Some(t) = &self.config.gateway.agent_service.tls else { return Ok(None) };
        let prefix = AGENT_SERVICE_TLS_KEY;
        let ca = self.required_path(&t.ca_path, prefix, "caPath")?;
        let cert = self.required_path(&t.cert_path, prefix, "certPath")?;
        let key = self.required_path(&t.key_path, prefix, "keyPath")?;
        let server_name = t.server_name.clone().filter(|n| !n.trim().is_empty());
        if let Some(name) = &server_name {
            crate::tls::server_name(name).map_err(|m| self.error(format!("{prefix}.serverName"), m))?;
        }
        Ok(Some(HopTls { paths: TlsPaths { cert, key, ca: Some(ca) }, server_name }))
    }

    /// A TLS file problem as a config error on the key under `prefix` that names the file.
    pub fn tls_error(&self, prefix: &str, e: TlsError) -> ConfigError {
        let field = match e.file {
            TlsFile::Cert => "certPath",
            TlsFile::Key => "keyPath",
            TlsFile::Ca => "caPath",
        };
        self.error(format!("{prefix}.{field}"), e.to_string())
    }

    fn required_path(&self, p: &Option<PathBuf>, prefix: &str, field: &str) -> Result<PathBuf, ConfigError> {
        p.clone()
            .filter(|p| !p.as_os_str().is_empty())
            .ok_or_else(|| self.error(format!("{prefix}.{field}"), "is required when TLS is on"))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::load_str;

    #[test]
    fn tls_settings_need_their_files() {
        assert_eq!(load_str("{}").unwrap().public_tls().unwrap(), None);
        let e =
            load_str(r#"{gateway: {tls: {enabled: true, keyPath: "k"}}}"#).unwrap().public_tls().unwrap_err();
        assert_eq!(e.key, "gateway.tls.certPath");
        let t = load_str(r#"{gateway: {tls: {enabled: true, certPath: "c", keyPath: "k"}}}"#).unwrap();
        assert_eq!(t.public_tls().unwrap().unwrap().cert.to_str(), Some("c"));
        let e = load_str(r#"{gateway: {agentService: {tls: {caPath: "a", certPath: "c"}}}}"#)
            .unwrap()
            .agent_service_tls()
            .unwrap_err();
        assert_eq!(e.key, "gateway.agentService.tls.keyPath");
        let e = load_str(
            r#"{gateway: {agentService: {tls: {caPath: "a", certPath: "c", keyPath: "k", serverName: "a b"}}}}"#,
        )
        .unwrap()
        .agent_service_tls()
        .unwrap_err();
        assert_eq!(e.key, "gateway.agentService.tls.serverName");
        let hop = load_str(r#"{gateway: {agentService: {tls: {caPath: "a", certPath: "c", keyPath: "k"}}}}"#)
            .unwrap()
            .agent_service_tls()
            .unwrap()
            .unwrap();
        assert_eq!(hop.server_name, None);
        assert_eq!(hop.paths.ca.as_deref().and_then(|p| p.to_str()), Some("a"));
    }
}
