//! `GET /v1/models` shapes: `openclaw`, `openclaw/default` and `openclaw/<agentId>`
//! per agent, as OpenAI `model` objects.

use crate::openai::DEFAULT_MODEL;
use serde::Serialize;
use services::proto::ListAgentsResponse;

#[derive(Serialize)]
struct ModelObject<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
}

impl<'a> ModelObject<'a> {
    fn new(id: &'a str) -> Self {
        ModelObject { id, object: "model", created: 0, owned_by: "openclaw" }
    }
}

#[derive(Serialize)]
struct ModelList<'a> {
    object: &'static str,
    data: Vec<ModelObject<'a>>,
}

/// Every model id the gateway answers to, in listing order.
pub fn model_ids(agents: &ListAgentsResponse) -> Vec<String> {
    let mut ids = vec![DEFAULT_MODEL.to_owned(), format!("{DEFAULT_MODEL}/default")];
    ids.extend(agents.agents.iter().map(|a| format!("{DEFAULT_MODEL}/{}", a.id)));
    ids
}

/// The `{"object":"list","data":[…]}` body.
pub fn list_json(ids: &[String]) -> Vec<u8> {
    let list = ModelList { object: "list", data: ids.iter().map(|id| ModelObject::new(id)).collect() };
    // Serializing plain structs into a Vec cannot fail.
    serde_json::to_vec(&list).unwrap_or_default()
}

/// One model object.
pub fn model_json(id: &str) -> Vec<u8> {
    serde_json::to_vec(&ModelObject::new(id)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use services::proto::AgentInfo;

    #[test]
    fn list_shape() {
        let agents = ListAgentsResponse {
            agents: vec![
                AgentInfo { id: "main".into(), is_default: true, ..Default::default() },
                AgentInfo { id: "beta".into(), ..Default::default() },
            ],
            default_agent_id: "main".into(),
        };
        let ids = model_ids(&agents);
        assert_eq!(ids, ["openclaw", "openclaw/default", "openclaw/main", "openclaw/beta"]);
        let v: Value = serde_json::from_slice(&list_json(&ids)).unwrap();
        assert_eq!(v["object"], "list");
        assert_eq!(
            v["data"][0],
            json!({"id": "openclaw", "object": "model", "created": 0, "owned_by": "openclaw"})
        );
        assert_eq!(v["data"].as_array().unwrap().len(), 4);
        let v: Value = serde_json::from_slice(&model_json("openclaw/beta")).unwrap();
        assert_eq!(v["id"], "openclaw/beta");
    }
}
