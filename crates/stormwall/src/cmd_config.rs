//! `stormwall config check`: parse and validate a config file without starting anything.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{FileConfig, env_var};

/// Config commands.
#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Validate a config file: syntax, unknown keys, upstreams and their secrets, IP database.
    Check {
        /// Config file.
        #[arg(
            long,
            short = 'c',
            env = "STORMWALL_CONFIG",
            default_value = "stormwall.toml"
        )]
        config: PathBuf,
    },
}

/// Runs a config command.
pub fn run(cmd: ConfigCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ConfigCommand::Check { config } => {
            let file = FileConfig::load(&config)?;
            let checked = stormwall_gateway::check_config(&file.gateway(), &env_var)?;
            stormwall_gateway::control::retention::Retention::from_config(&file.events)
                .map_err(|e| anyhow::anyhow!("[events] {e}"))?;
            if env_var(&file.server.admin_token_env).is_none_or(|t| t.is_empty()) {
                eprintln!(
                    "warning: {} is not set; `stormwall serve` needs it",
                    file.server.admin_token_env
                );
            }
            // What the gateway would run: the encoder was loaded to check it, so its kernel
            // and precision are named as `/readyz` names them.
            println!("{}", checked.safety);
            // Missing IP data is not an error (detectors fall back on prefixes), but the
            // operator should know what each missing piece costs.
            if let Ok(intel) = stormwall_ipintel::IpIntel::load(&file.ipdb) {
                for m in intel.missing() {
                    eprintln!("note: {m}");
                }
            }
            if file.console.enabled {
                let ro_env = &file.console.read_only_token_env;
                let roles = if env_var(ro_env).is_some_and(|t| !t.trim().is_empty()) {
                    "admin and read-only sign-in".to_owned()
                } else {
                    format!("admin sign-in only; {ro_env} is not set, so no read-only role")
                };
                eprintln!(
                    "note: console at http://{}/console/ ({roles})",
                    file.server.admin_listen
                );
            }
            let n = file.upstreams.len();
            println!(
                "{}: ok ({n} upstream{}, proxy {}, admin {})",
                config.display(),
                if n == 1 { "" } else { "s" },
                file.server.listen,
                file.server.admin_listen
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
