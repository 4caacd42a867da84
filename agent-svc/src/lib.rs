//! agent-svc: owns agents, providers, sessions and runs, and serves them over
//! the `openclaw.agent.v1.AgentService` gRPC API.
//!
//! `main.rs` is a thin CLI over [`start`]; gateway-http calls the same function
//! for its embedded mode, and the end-to-end tests start real servers with it.
//!
//! Callers are checked in [`security`] (the internal token, mutual TLS).
//! A run reads in one direction: [`service`] (gRPC in, statuses out) →
//! [`run`] (prepare, queue, drive) → [`providers`] and [`sessions`]. Rules
//! shared with the gateway live in the `services` crate. [`alloc`] is both
//! binaries' global allocator.

pub mod agents;
pub mod alloc;
pub mod error;
pub mod message;
pub mod metrics;
pub mod providers;
pub mod run;
pub mod security;
pub mod server;
pub mod service;
pub mod sessions;

pub use error::AgentError;
pub use server::{start, start_with, Hop, ServerHandle};
