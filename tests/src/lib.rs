//! End-to-end test support for the OpenClaw gateway pair.
//!
//! - [`mock`]: a real mock OpenAI-compatible upstream (an HTTP server) with
//!   scripted behaviours, request recording and disconnect detection.
//! - [`harness`]: starting agent-svc on a real socket, config builders, request
//!   helpers and `AgentRun` stream folding. Reusable by gateway-http tests.

pub mod harness;
pub mod mock;

pub use harness::{AgentSvc, ConfigBuilder, TempDir};
pub use mock::{Behavior, Gate, MockToolCall, MockUpstream, RecordedRequest};
