//! End-to-end test support for the OpenClaw gateway pair.
//!
//! - [`mock`]: a real mock OpenAI-compatible upstream (an HTTP server) with
//!   scripted behaviours, request recording and disconnect detection.
//! - [`gateway`]: gateway-http on a real socket, HTTP replies and SSE reading.
//! - [`harness`]: starting agent-svc on a real socket, config builders, request
//!   helpers and `AgentRun` stream folding. Reusable by gateway-http tests.
//! - [`ws`]: a real WebSocket client for the gateway protocol.

pub mod gateway;
pub mod harness;
pub mod mock;
pub mod ws;

pub use harness::{AgentSvc, ConfigBuilder, TempDir};
pub use mock::{Behavior, Gate, MockToolCall, MockUpstream, RecordedRequest};
