//! `bulwark audit verify FILE`: re-computes the chain and names the first bad line.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::verify::verify;

/// `bulwark audit …`.
#[derive(clap::Args, Debug)]
pub struct AuditArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: AuditCommand,
}

/// The subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum AuditCommand {
    /// Verify a hash-chained audit log (and the rotated files before it): exits 0 when
    /// intact, 1 naming the first line that was edited, removed, inserted or reordered.
    Verify {
        /// The log (`<data-dir>/logs/audit.jsonl`, or one of its rotated files).
        file: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs the subcommand; the exit code is the verdict.
pub fn run(args: AuditArgs) -> ExitCode {
    match args.command {
        AuditCommand::Verify { file, json } => match verify(&file) {
            Ok(s) => {
                if json {
                    let mut v = serde_json::to_value(&s).unwrap_or_default();
                    v["ok"] = true.into();
                    println!("{v}");
                } else {
                    let range = match (s.first_seq, s.last_seq) {
                        (Some(a), Some(b)) => format!("seq {a}–{b}"),
                        _ => "empty".to_owned(),
                    };
                    println!(
                        "audit log intact: {} file(s), {} line(s), {range}",
                        s.files.len(),
                        s.lines
                    );
                    if s.first_seq.is_some_and(|f| f > 1) {
                        println!("  the chain starts after seq 1: older files were removed");
                    }
                    if let Some(h) = &s.last_hash {
                        println!("  last hash {h} (keep it elsewhere to detect a truncation)");
                    }
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                if json {
                    let mut v = serde_json::to_value(&e).unwrap_or_default();
                    v["ok"] = false.into();
                    println!("{v}");
                } else {
                    eprintln!("audit log NOT intact: {e}");
                }
                ExitCode::FAILURE
            }
        },
    }
}
