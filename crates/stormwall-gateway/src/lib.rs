//! Stormwall's gateway: an OpenAI- and Azure-OpenAI-compatible reverse proxy that issues its
//! own keys and admits each request only within its key's scope, network, rate, budget and
//! policy. Every request becomes exactly one `UsageEvent`.
//!
//! The request path is in [`pipeline`]; each stage has its own module, named after it:
//! [`route`] → authenticate (in `pipeline`, over [`keycache`]) → authorize → [`request`]
//! (body) → [`admit`] → [`forward`] (over [`upstream`] or [`mock`]) → [`body`] (relay) →
//! account (in `forward`) → [`recorder`] (the event).
//!
//! Start a gateway with [`server::start`].

pub mod admin;
pub mod admit;
pub mod alerts;
pub mod audit;
pub mod body;
pub mod classify;
pub mod client;
pub mod config;
pub mod detection;
pub mod digest;
pub mod error;
pub mod forward;
pub mod ipdb;
pub mod keycache;
pub mod keys;
pub mod leak_report;
pub mod metrics;
pub mod mock;
pub mod pipeline;
pub mod recorder;
pub mod request;
pub mod route;
pub mod safety;
pub mod server;
pub mod shared_admit;
pub mod state;
pub mod upstream;
pub mod webhook;

pub use config::GatewayConfig;
pub use server::{RunningGateway, StartError, check_config, start, start_with};
