//! The `murmur` command line: `serve`, `transcribe`, `models`, `admin`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use murmur::config::Settings;

mod cli;

#[derive(Parser)]
#[command(
    name = "murmur",
    version,
    about = "Multi-tenant speech-to-text service"
)]
struct Cli {
    /// A settings file laid over the defaults (see config/default.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP/WebSocket service.
    Serve {
        /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free one).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Where the store, keys and uploads live.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Transcribe (or translate) one audio file, without a server.
    Transcribe(cli::TranscribeArgs),
    /// Install or list model weights.
    Models {
        #[command(subcommand)]
        command: cli::ModelsCommand,
    },
    /// Operator commands on a stopped service's data dir.
    Admin {
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Move a tenant to another tier (basic, premium, enterprise).
    SetTier { tenant: String, tier: String },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    murmur::telemetry::init_logging();
    let mut settings = Settings::load(cli.config.as_deref()).context("reading settings")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Command::Serve { listen, data_dir } => {
            if let Some(listen) = listen {
                settings.server.listen = listen;
            }
            if let Some(dir) = data_dir {
                settings.store.data_dir = dir;
            }
            runtime.block_on(murmur::server::serve(settings))
        }
        Command::Transcribe(args) => runtime.block_on(cli::transcribe(&settings, args)),
        Command::Models { command } => cli::models(&settings, command),
        Command::Admin { data_dir, command } => {
            if let Some(dir) = data_dir {
                settings.store.data_dir = dir;
            }
            runtime.block_on(admin(settings, command))
        }
    }
}

async fn admin(settings: Settings, command: AdminCommand) -> anyhow::Result<()> {
    match command {
        AdminCommand::SetTier { tenant, tier } => {
            let tiers = murmur::billing::TierTable::load(&settings.billing.tiers_file)?;
            if tiers.get(&tier).is_none() {
                anyhow::bail!(
                    "unknown tier {tier}; tiers are {}",
                    tiers.names().collect::<Vec<_>>().join(", ")
                );
            }
            let store = murmur::store::Store::open(&settings.store.data_dir)?;
            let (id, before) = store
                .tenant_for_operator(&tenant)
                .with_context(|| format!("no tenant {tenant}"))?;
            let after = store.set_tier(&id, &tier).await?;
            let operator = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
            tracing::info!(
                target: "audit",
                operator = %operator,
                tenant = %after.id,
                from = %before.subscription_tier,
                to = %after.subscription_tier,
                tier_epoch = after.tier_epoch,
                "admin set-tier"
            );
            println!(
                "tenant {} moved from {} to {}",
                after.id, before.subscription_tier, after.subscription_tier
            );
            Ok(())
        }
    }
}
