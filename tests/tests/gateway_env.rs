//! gateway-http's secret env fallbacks (SPEC §2/§3): `OPENCLAW_GATEWAY_TOKEN`
//! and `OPENCLAW_GATEWAY_PASSWORD`.
//!
//! Environment variables are process-global, so this file holds exactly one
//! test: under `cargo test` no other test of this binary runs beside it, and
//! `cargo nextest` gives it a process of its own anyway. The values are unique
//! per run, and the variables are restored when the test ends (even on panic).

use e2e::gateway::{json_body, send, Gateway, Reply};
use e2e::harness::{self, AgentSvc, ConfigBuilder};
use e2e::mock::MockUpstream;
use serde_json::json;
use services::config::{PASSWORD_ENV, TOKEN_ENV};

/// Restores (or removes) an env var on drop.
struct EnvGuard {
    name: &'static str,
    old: Option<String>,
}

impl EnvGuard {
    fn set(name: &'static str, value: &str) -> EnvGuard {
        let old = std::env::var(name).ok();
        std::env::set_var(name, value);
        EnvGuard { name, old }
    }

    fn unset(name: &'static str) -> EnvGuard {
        let old = std::env::var(name).ok();
        std::env::remove_var(name);
        EnvGuard { name, old }
    }
}

impl Drop for EnvGuard {
    fn drop(&mut self) {
        match &self.old {
            Some(v) => std::env::set_var(self.name, v),
            None => std::env::remove_var(self.name),
        }
    }
}

async fn chat(gw: &Gateway, secret: &str) -> Reply {
    let body = json!({"messages": [{"role": "user", "content": "hi"}]});
    send(json_body(gw.post("/v1/chat/completions"), &body).bearer_auth(secret)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_and_password_env_fallbacks() {
    harness::init_tracing();
    let mock = MockUpstream::start().await;
    let base = ConfigBuilder::with_mock(&mock).enable_chat_completions();
    let svc = AgentSvc::start(&base.build()).await;
    let url = svc.url();
    let run = uuid::Uuid::new_v4();
    let env_token = format!("env-token-{run}");
    let env_password = format!("env-password-{run}");

    // Token mode, no token in the config: the env token is used.
    {
        let _t = EnvGuard::set(TOKEN_ENV, &env_token);
        let _p = EnvGuard::unset(PASSWORD_ENV);
        let cfg = base.clone().set("gateway.auth", json!({"mode": "token"})).build();
        let gw = Gateway::start(&cfg, Some(&url)).await;
        assert_eq!(chat(&gw, &env_token).await.status, 200, "env token accepted");
        chat(&gw, "wrong").await.expect_error(401, "unauthorized");

        // A token in the config wins over the env.
        let cfg = base.clone().auth_token("config-token").build();
        let gw = Gateway::start(&cfg, Some(&url)).await;
        assert_eq!(chat(&gw, "config-token").await.status, 200, "config token accepted");
        chat(&gw, &env_token).await.expect_error(401, "unauthorized");
    }

    // Password mode, no password in the config: the env password is used.
    {
        let _t = EnvGuard::unset(TOKEN_ENV);
        let _p = EnvGuard::set(PASSWORD_ENV, &env_password);
        let cfg = base.clone().set("gateway.auth", json!({"mode": "password"})).build();
        let gw = Gateway::start(&cfg, Some(&url)).await;
        assert_eq!(chat(&gw, &env_password).await.status, 200, "env password accepted");
        chat(&gw, "wrong").await.expect_error(401, "unauthorized");
        chat(&gw, &env_token).await.expect_error(401, "unauthorized");

        let cfg =
            base.clone().set("gateway.auth", json!({"mode": "password", "password": "config-pw"})).build();
        let gw = Gateway::start(&cfg, Some(&url)).await;
        assert_eq!(chat(&gw, "config-pw").await.status, 200, "config password accepted");
        chat(&gw, &env_password).await.expect_error(401, "unauthorized");
    }

    // Neither in config nor env: refuses to start, naming the key.
    {
        let _t = EnvGuard::unset(TOKEN_ENV);
        let _p = EnvGuard::unset(PASSWORD_ENV);
        let cfg = base.clone().set("gateway.auth", json!({"mode": "token"})).build();
        let err = Gateway::try_start(&cfg, Some(&url)).await.expect_err("token mode without a token");
        assert!(format!("{err:#}").contains("gateway.auth.token"), "{err:#}");
        let cfg = base.clone().set("gateway.auth", json!({"mode": "password"})).build();
        let err = Gateway::try_start(&cfg, Some(&url)).await.expect_err("password mode without a password");
        assert!(format!("{err:#}").contains("gateway.auth.password"), "{err:#}");
    }
}
