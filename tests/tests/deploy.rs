//! The deployment files carry configs and names that must agree with the code:
//! every config they ship loads with the real loader and passes the checks
//! both services run at start (on a `lan` bind, with the secrets the
//! deployment provides), and the Kubernetes gateway reaches agent-svc through
//! its headless Service. (The manifests' schemas are checked by
//! `scripts/validate-k8s.sh`; the compose file runs in the cluster test.)

use services::config::{parse_with_env, ConfigSource, LoadedConfig};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Loads `text` as both services do on a `lan` bind, with the token the
/// deployment passes in the environment.
fn load_as_deployed(text: &str, name: &str) -> LoadedConfig {
    let env = |k: &str| (k == "OPENCLAW_GATEWAY_TOKEN").then(|| "from-the-deployment".to_owned());
    let config = parse_with_env(text, ConfigSource::File(name.into()), &env)
        .unwrap_or_else(|e| panic!("{name} does not load: {e}"));
    config.validate_gateway_with_env("lan", &env).unwrap_or_else(|e| panic!("{name}: {e}"));
    config.resolve_agents().unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(config.unknown_keys.is_empty(), "{name} has unknown keys: {:?}", config.unknown_keys);
    config
}

/// The literal block `openclaw.json5: |` of a ConfigMap, dedented.
fn configmap_file(yaml: &str) -> String {
    let mut lines = yaml.lines().skip_while(|l| l.trim() != "openclaw.json5: |").skip(1);
    let first = lines.next().expect("the ConfigMap has a openclaw.json5 block");
    let indent = first.len() - first.trim_start().len();
    std::iter::once(first)
        .chain(lines.take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() >= indent))
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn shipped_configs_load_and_pass_the_start_checks() {
    for rel in ["examples/compose.json5", "deploy/compose/cluster-test.json5", "examples/openclaw.json5"] {
        load_as_deployed(&read(rel), rel);
    }
    let k8s = configmap_file(&read("deploy/kubernetes/config.yaml"));
    let config = load_as_deployed(&k8s, "deploy/kubernetes/config.yaml");
    // Replicas share sessions: the store must be PostgreSQL, without a password in it.
    let store = &config.config.session.store;
    assert!(store.starts_with("postgres://"), "{store}");
    let userinfo = store.trim_start_matches("postgres://").split_once('@').map_or("", |(u, _)| u);
    assert!(!userinfo.contains(':'), "the password comes from PGPASSWORD, not the config: {store}");
}

#[test]
fn the_kubernetes_gateway_reaches_agent_svc_through_a_headless_service() {
    let gateway = read("deploy/kubernetes/gateway-http.yaml");
    let agent = read("deploy/kubernetes/agent-svc.yaml");
    assert!(
        gateway.contains("\"--agent-svc\", \"agent-svc.openclaw.svc.cluster.local:50051\""),
        "the gateway targets the agent-svc Service by its DNS name"
    );
    let service = agent.split("---").find(|d| d.contains("kind: Service")).expect("an agent-svc Service");
    assert!(service.contains("name: agent-svc") && service.contains("namespace: openclaw"));
    assert!(service.contains("clusterIP: None"), "headless, so DNS returns every pod");
    assert!(
        agent.contains("service: openclaw.agent.v1.AgentService"),
        "readiness follows agent-svc's health"
    );
}
