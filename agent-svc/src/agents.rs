//! The agent registry: configured agents with their model chains, and the
//! providers those models live on.

use crate::error::AgentError;
use crate::providers::{echo::EchoProvider, openai::OpenAiProvider, Provider};
use crate::run::budget;
use services::config::{LoadedConfig, ModelRef, ResolvedAgent, ResolvedAgents, ECHO_PROVIDER};
use services::proto::{AgentInfo, ListAgentsResponse};
use std::collections::HashMap;
use std::sync::Arc;

/// Agents and providers, built once from the config and shared by every run.
pub struct AgentRegistry {
    agents: ResolvedAgents,
    providers: HashMap<String, Arc<dyn Provider>>,
    /// `provider/model` → the model's `maxTokens` cap, where configured.
    max_tokens: HashMap<ModelRef, u32>,
    /// Providers that list their models: only those models are accepted.
    listed_models: HashMap<String, Vec<String>>,
    /// `provider/model` → the model's `contextWindow`, where configured.
    context_windows: HashMap<ModelRef, u32>,
}

impl AgentRegistry {
    /// Resolves agents and builds one provider client per configured provider.
    pub fn from_config(loaded: &LoadedConfig) -> Result<Self, AgentError> {
        let agents = loaded.resolve_agents().map_err(|e| AgentError::Startup(e.to_string()))?;
        let mut providers: HashMap<String, Arc<dyn Provider>> = HashMap::new();
        let mut max_tokens = HashMap::new();
        let mut listed_models = HashMap::new();
        let mut context_windows = HashMap::new();
        for (name, cfg) in &loaded.config.models.providers {
            providers.insert(name.clone(), Arc::new(OpenAiProvider::new(name, cfg)?));
            for m in &cfg.models {
                let r = || ModelRef { provider: name.clone(), model: m.id.clone() };
                if let Some(cap) = m.max_tokens {
                    max_tokens.insert(r(), cap);
                }
                if let Some(window) = m.context_window {
                    context_windows.insert(r(), window);
                }
            }
            if !cfg.models.is_empty() {
                listed_models.insert(name.clone(), cfg.models.iter().map(|m| m.id.clone()).collect());
            }
        }
        // The built-in provider, unless the config deliberately shadows its name.
        providers.entry(ECHO_PROVIDER.to_string()).or_insert_with(|| Arc::new(EchoProvider));
        if !listed_models.contains_key(ECHO_PROVIDER)
            && !loaded.config.models.providers.contains_key(ECHO_PROVIDER)
        {
            listed_models.insert(ECHO_PROVIDER.to_string(), vec![ECHO_PROVIDER.to_string()]);
        }
        Ok(Self { agents, providers, max_tokens, listed_models, context_windows })
    }

    /// The agent with this id; an empty id means the default agent.
    pub fn agent(&self, id: &str) -> Option<&ResolvedAgent> {
        if id.is_empty() {
            Some(self.agents.default_agent())
        } else {
            self.agents.get(id)
        }
    }

    /// The default agent.
    pub fn default_agent(&self) -> &ResolvedAgent {
        self.agents.default_agent()
    }

    /// The provider client for a provider name.
    pub fn provider(&self, name: &str) -> Option<&Arc<dyn Provider>> {
        self.providers.get(name)
    }

    /// Whether a model ref can be run: a known provider and, where the provider
    /// lists its models, a listed one.
    pub fn model_known(&self, r: &ModelRef) -> bool {
        self.providers.contains_key(&r.provider)
            && self.listed_models.get(&r.provider).is_none_or(|list| list.iter().any(|m| m == &r.model))
    }

    /// The configured completion-token cap of a model.
    pub fn max_tokens(&self, r: &ModelRef) -> Option<u32> {
        self.max_tokens.get(r).copied()
    }

    /// The prompt budget of a run of `agent` on `chain`, in estimated tokens:
    /// the agent's `contextTokens`, else the smallest of the chain's models'
    /// windows less the answer's cap (the model's `maxTokens`, or the request's).
    pub fn budget(&self, agent: &ResolvedAgent, chain: &[ModelRef], request_cap: Option<u32>) -> u64 {
        if let Some(tokens) = agent.context_tokens {
            return u64::from(tokens);
        }
        let per_model = |m: &ModelRef| {
            let cap = match (self.max_tokens(m), request_cap) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            budget::model_budget(self.context_windows.get(m).copied(), cap)
        };
        u64::from(
            chain.iter().map(per_model).min().unwrap_or_else(|| budget::model_budget(None, request_cap)),
        )
    }

    /// The `ListAgents` answer.
    pub fn list(&self) -> ListAgentsResponse {
        let default_id = self.agents.default_agent().id.clone();
        ListAgentsResponse {
            agents: self
                .agents
                .agents
                .iter()
                .map(|a| AgentInfo {
                    id: a.id.clone(),
                    model: a.primary.to_string(),
                    is_default: a.id == default_id,
                    fallbacks: a.fallbacks.iter().map(ToString::to_string).collect(),
                })
                .collect(),
            default_agent_id: default_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use services::config::{parse, ConfigSource};

    fn registry(text: &str) -> AgentRegistry {
        AgentRegistry::from_config(&parse(text, ConfigSource::Defaults).unwrap()).unwrap()
    }

    #[test]
    fn echo_is_built_in_and_default() {
        let r = registry("{}");
        assert_eq!(r.default_agent().id, "main");
        assert!(r.model_known(&ModelRef::echo()));
        assert!(!r.model_known(&ModelRef { provider: "echo".into(), model: "other".into() }));
        assert!(!r.model_known(&ModelRef { provider: "nope".into(), model: "x".into() }));
        assert!(r.agent("").is_some());
        assert!(r.agent("ghost").is_none());
    }

    #[test]
    fn budgets_come_from_the_agent_or_the_smallest_model_window() {
        let r = registry(
            r#"{models: {providers: {up: {baseUrl: "http://127.0.0.1:9/v1",
                  models: [{id: "big", contextWindow: 100000, maxTokens: 4000}, {id: "small", contextWindow: 8000}]}}},
                agents: {list: [{id: "x", model: {primary: "up/big", fallbacks: ["up/small"]}},
                                {id: "y", model: "up/big", contextTokens: 3000}]}}"#,
        );
        let m = |id: &str| ModelRef { provider: "up".into(), model: id.into() };
        let x = r.agent("x").unwrap().clone();
        assert_eq!(r.budget(&x, &[m("big")], None), 96_000);
        assert_eq!(r.budget(&x, &[m("big"), m("small")], None), 4_000, "8000 less half of it at most");
        assert_eq!(r.budget(&x, &[m("big"), m("small")], Some(1000)), 7_000);
        let y = r.agent("y").unwrap().clone();
        assert_eq!(r.budget(&y, &[m("big")], None), 3_000);
    }

    #[test]
    fn listed_models_and_caps() {
        let r = registry(
            r#"{models: {providers: {up: {baseUrl: "http://127.0.0.1:9/v1", models: [{id: "a", maxTokens: 7}]},
                                     any: {baseUrl: "http://127.0.0.1:9/v1"}}},
                agents: {list: [{id: "x", model: "up/a", default: true}, {id: "y", model: "any/whatever"}]}}"#,
        );
        let a = ModelRef { provider: "up".into(), model: "a".into() };
        assert!(r.model_known(&a));
        assert!(!r.model_known(&ModelRef { provider: "up".into(), model: "b".into() }));
        assert!(r.model_known(&ModelRef { provider: "any".into(), model: "zzz".into() }));
        assert_eq!(r.max_tokens(&a), Some(7));
        let x = r.agent("x").unwrap().clone();
        // No window configured: the default window less the model's cap.
        assert_eq!(
            r.budget(&x, std::slice::from_ref(&a), None),
            u64::from(budget::DEFAULT_CONTEXT_WINDOW - 7)
        );
        let list = r.list();
        assert_eq!(list.default_agent_id, "x");
        assert_eq!(list.agents.len(), 2);
        assert_eq!(list.agents[1].model, "any/whatever");
    }
}
