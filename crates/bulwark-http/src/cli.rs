//! `bulwark auth new-key`: make an API key and add its hash to a keys file.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;

use crate::auth::{KeySet, new_key};
use crate::route::Role;

/// `bulwark auth …`.
#[derive(clap::Args, Debug)]
pub struct AuthArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: AuthCommand,
}

/// The subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum AuthCommand {
    /// Make a new API key: prints the key (shown once, never stored) and appends its
    /// SHA-256 to the keys file, which running services reload within a second.
    NewKey {
        /// The key's id, as it appears in the audit log.
        #[arg(long)]
        id: String,
        /// read, write or admin.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// The keys file (`API_KEYS_FILE`); created with mode 0600 if missing.
        #[arg(long)]
        keys_file: PathBuf,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

/// Runs the subcommand.
pub fn run(args: AuthArgs) -> anyhow::Result<()> {
    match args.command {
        AuthCommand::NewKey {
            id,
            role,
            keys_file,
        } => {
            let existing = std::fs::read_to_string(&keys_file).unwrap_or_default();
            let (key, hash) = new_key();
            let mut text = existing.clone();
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            let line = format!("{id} {} {hash}\n", role.as_str());
            text.push_str(&line);
            // The whole file must still parse (a duplicate id is refused here, not at
            // the services' next reload).
            KeySet::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", keys_file.display()))?;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&keys_file)
                .map_err(|e| anyhow::anyhow!("{}: {e}", keys_file.display()))?;
            let prefix = if !existing.is_empty() && !existing.ends_with('\n') {
                "\n"
            } else {
                ""
            };
            f.write_all(format!("{prefix}{line}").as_bytes())?;
            println!("{key}");
            eprintln!(
                "added {id} ({}) to {}; the key above is shown once and not stored",
                role.as_str(),
                keys_file.display()
            );
            Ok(())
        }
    }
}
