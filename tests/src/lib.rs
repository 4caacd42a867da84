//! End-to-end test support for the OpenClaw gateway pair.
//!
//! - [`mock`]: a real mock OpenAI-compatible upstream (an HTTP server) with
//!   scripted behaviours, request recording and disconnect detection.
//! - [`fake`]: a scripted fake agent-svc (a real tonic server), for gateway
//!   tests that need agent-svc to do exactly one thing.
//! - [`gateway`]: gateway-http on a real socket and whole HTTP replies.
//! - [`sse`]: the one Server-Sent Events parser (tests and benchmark) and the
//!   tests' SSE reader.
//! - [`harness`]: starting agent-svc on a real socket, config builders, request
//!   helpers and `AgentRun` stream folding.
//! - [`ws`]: a real WebSocket client for the gateway protocol.
//! - [`tls`]: a throwaway CA, certificate files, and TLS clients (HTTPS, WSS, gRPC).
//! - [`procs`], [`procfs`]: the services as child processes and what `/proc`
//!   says about them (the benchmark and the soak test).
//! - [`prelude`]: what the gateway test files share (`use e2e::prelude::*;`).

pub mod fake;
pub mod gateway;
pub mod harness;
pub mod mock;
pub mod prelude;
pub mod procfs;
pub mod procs;
mod serve;
pub mod sse;
pub mod tls;
pub mod ws;

pub use harness::{AgentSvc, ConfigBuilder, TempDir};
pub use mock::{Behavior, Gate, MockToolCall, MockUpstream, RecordedRequest};
