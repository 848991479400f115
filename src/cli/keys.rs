//! `distillery keys create|list|revoke`: manages API keys in a data directory's database,
//! also while a server runs on it (SQLite lets both write; the server's lock is not taken).
//! A new key is printed once, alone on stdout, so a script can capture it.

use std::path::PathBuf;

use anyhow::Context;

use crate::store::{ApiKey, EventHub, SqliteStore, Store};

#[derive(clap::Args, Debug)]
pub struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
    /// Data directory of the service whose keys these are.
    #[arg(long, env = "DISTILLERY_DATA_DIR", default_value = "distillery-data", global = true)]
    data_dir: PathBuf,
    /// Database URL; default `sqlite://<data-dir>/distillery.db`.
    #[arg(long, env = "DISTILLERY_DATABASE_URL", global = true)]
    database_url: Option<String>,
}

#[derive(clap::Subcommand, Debug)]
enum KeysCommand {
    /// Create a key and print it (the only time it is shown).
    Create {
        /// Who holds it: jobs show it as their owner, `GET /v1/jobs?owner=` filters by it.
        #[arg(long)]
        name: String,
        /// An administrator sees every job and manages keys.
        #[arg(long)]
        admin: bool,
        /// This owner's weight when jobs of several owners wait (1 to 1000).
        #[arg(long, default_value_t = 1)]
        share: u32,
    },
    /// List the keys (never their secrets).
    List,
    /// Revoke a key: requests with it get 401 from now on; its jobs stay.
    Revoke {
        /// The key's id (the 16 hex digits after `dk_`).
        id: String,
    },
}

pub fn main(args: KeysArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run(args))
}

async fn run(args: KeysArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
    let url = args.database_url.unwrap_or_else(|| crate::config::default_database_url(&args.data_dir));
    let store = SqliteStore::connect(&url, EventHub::new()).await.context("opening the database")?;
    match args.command {
        KeysCommand::Create { name, admin, share } => {
            let (key, secret) = crate::keys::issue(&store, &name, admin, share).await?;
            let role = if key.admin { "administrator" } else { "user" };
            eprintln!("created {} for {} ({role}); this is the only time the key is shown:", key.prefix, key.name);
            println!("{secret}");
        }
        KeysCommand::List => {
            println!("{:<20} {:<24} {:<6} {:>5}  {:<24}  revoked", "key", "name", "admin", "share", "created");
            for key in store.list_keys().await? {
                println!("{}", row(&key));
            }
        }
        KeysCommand::Revoke { id } => {
            let id = id.strip_prefix(crate::keys::PREFIX).unwrap_or(&id);
            let key = store.revoke_key(id).await?.with_context(|| format!("no key has the id `{id}`"))?;
            println!("revoked {} ({}) at {}", key.prefix, key.name, key.revoked_at.unwrap_or_default());
        }
    }
    Ok(())
}

fn row(key: &ApiKey) -> String {
    format!(
        "{:<20} {:<24} {:<6} {:>5}  {:<24}  {}",
        key.prefix,
        key.name,
        if key.admin { "yes" } else { "no" },
        key.share,
        key.created_at,
        key.revoked_at.as_deref().unwrap_or("-")
    )
}
