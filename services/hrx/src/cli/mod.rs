//! The subcommands: argument definitions and dispatch.
//!
//! Exit codes: 0 success (and an accepted or duplicate verdict), 1 an envelope was
//! rejected, 2 the command itself failed (bad arguments, unreadable files).

mod keygen;
mod sign;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

/// A rejected envelope.
pub const EXIT_REJECTED: u8 = 1;
/// The command could not do its job.
pub const EXIT_ERROR: u8 = 2;

#[derive(clap::Parser, Debug)]
#[command(
    name = "hrx",
    version,
    about = "hrx — the health record exchange between facilities"
)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Create an Ed25519 key pair for a facility (or the national root) and print its key id.
    Keygen(keygen::KeygenArgs),
    /// Sign a FHIR resource as a facility event: writes a DSSE envelope.
    Sign(Box<sign::SignArgs>),
    /// Verify an envelope against the signer's public key and the facility's head.
    Verify(verify::VerifyArgs),
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Keygen(a) => keygen::run(a),
        Command::Sign(a) => sign::run(*a),
        Command::Verify(a) => verify::run(a),
    }
}

/// `PATH` with `suffix` appended to its file name.
fn with_suffix(path: &std::path::Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}
