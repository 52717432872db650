//! Stormwall's gateway: an OpenAI- and Azure-OpenAI-compatible reverse proxy that issues its
//! own keys and admits each request only within its key's scope, network, rate, budget and
//! policy. Every request becomes exactly one `UsageEvent`.
//!
//! Two planes, composed only by [`server`] (the entry point):
//! - [`data`], the request path: [`data::pipeline`] calls the stages in the order they run —
//!   [`data::route`] → authenticate and authorize (over [`data::keycache`]) →
//!   [`data::request`] (body) → [`data::admit`] → screen ([`data::safety`]) →
//!   [`data::forward`] (over [`upstream`] or the built-in mock, [`stormwall_mock`]) → relay ([`data::body`]) → account →
//!   [`data::recorder`] (the event).
//! - [`control`], everything that changes or watches the gateway: the admin API, the key
//!   lifecycle, the detection runtime, alert delivery, leaked-key reports and the audit log.
//!
//! The data plane never names the control plane; the control plane reaches the request path
//! only through the shared key cache and the store.
//!
//! Start a gateway with [`server::start`].

pub mod config;
pub mod control;
pub mod data;
pub mod error;
pub mod http;
pub mod ids;
pub mod metrics;
pub mod reload;
pub mod server;
pub mod tls;
pub mod upstream;

pub use config::GatewayConfig;
pub use server::{ConfigCheck, RunningGateway, StartError, check_config, start, start_with};
