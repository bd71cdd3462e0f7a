//! The subcommands: argument definitions and dispatch.
//!
//! Exit codes: 0 success (and an accepted or duplicate verdict), 1 an envelope was
//! rejected, 2 the command itself failed (bad arguments, unreadable files).

mod bench;
mod demo;
mod emit;
mod fhir;
mod keygen;
mod loadgen;
mod migrate;
pub(crate) mod patient;
mod registry;
mod reproject;
mod serve;
mod sign;
mod soak;
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
    /// Measure hrx against the machine's own limits (table + JSON); --smoke for a seconds-long check.
    Bench(bench::BenchArgs),
    /// Soak the distributed deployment under a steady mix; RSS, errors, reconciliation.
    Soak(soak::SoakArgs),
    /// Run the whole story on a throwaway node: registration, referral, follow, break-glass, audit, monitor.
    Demo(demo::DemoArgs),
    /// Run the whole exchange in one process on a data directory (default ./hrx-data).
    Serve(serve::ServeArgs),
    /// Register facilities and manage their keys on a running node (national center).
    Registry(registry::RegistryArgs),
    /// Sign FHIR files as a registered facility and submit them to a running node.
    Emit(emit::EmitArgs),
    /// Rebuild every projection from the event log (node stopped).
    Reproject(reproject::ReprojectArgs),
    /// Apply the configured backends' schema migrations and exit.
    Migrate(migrate::MigrateArgs),
    /// Synthetic load: pre-sign a seeded population to files, or submit it to a running node.
    Loadgen(loadgen::LoadgenArgs),
    /// The patient's app: keygen, enroll (at a facility), requests, approve, decline,
    /// grant, revoke, accesses.
    Patient(patient::PatientArgs),
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Keygen(a) => keygen::run(a),
        Command::Sign(a) => sign::run(*a),
        Command::Verify(a) => verify::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Soak(a) => soak::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Registry(a) => registry::run(a),
        Command::Emit(a) => emit::run(a),
        Command::Reproject(a) => reproject::run(a),
        Command::Migrate(a) => migrate::run(a),
        Command::Loadgen(a) => loadgen::run(a),
        Command::Patient(a) => patient::run(a),
    }
}

/// The async runtime of the subcommands that talk to or run a node.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// `PATH` with `suffix` appended to its file name.
fn with_suffix(path: &std::path::Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}
