//! `tdx-sim`: the simulator's command-line program.
//!
//! `tdx-sim replay TRACE.jsonl` replays a trace (the format is described in
//! `tdx_sim::trace`) on a simulated machine built from its machine line,
//! its vCPUs running the guest operations the trace recorded, prints one
//! JSON line per SEAMCALL on stdout (and one for each guest or
//! `map_shared` line that did not replay as recorded) and a summary on
//! stderr, and exits with
//!
//! - 0 when every expected output matched and no rule was broken,
//! - 1 when an expected output did not match, a guest did not replay as
//!   recorded, or the simulator recorded a rule break (its invariants
//!   failed),
//! - 2 when the trace is malformed or cannot be read, or stdout cannot be
//!   written (and for command-line errors, as clap reports them).

use std::{
    fs::File,
    io::{self, BufReader, BufWriter, Write},
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Parser, Subcommand};
use tdx_sim::trace;

#[derive(Debug, Parser)]
#[command(
    name = "tdx-sim",
    version,
    about = "A software model of the Intel TDX module"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Replays a trace on the simulator.
    ///
    /// Prints one JSON line per SEAMCALL on stdout (and one per guest or
    /// map_shared line that did not replay as recorded) and a summary on
    /// stderr.
    /// Exit status 0: every expected output matched and no rule was broken;
    /// 1: an expectation failed or a rule was broken; 2: malformed trace or
    /// I/O error.
    Replay {
        /// The trace (JSON lines; `-` reads stdin).
        trace: PathBuf,
        /// Do not print the summary line on stderr.
        #[arg(short, long)]
        quiet: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Replay { trace, quiet } => replay(&trace, quiet),
    }
}

fn replay(path: &Path, quiet: bool) -> ExitCode {
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let result = if path.as_os_str() == "-" {
        trace::replay(io::stdin().lock(), &mut out)
    } else {
        match File::open(path) {
            Ok(f) => trace::replay(BufReader::new(f), &mut out),
            Err(e) => {
                eprintln!("tdx-sim: {}: {e}", path.display());
                return ExitCode::from(2);
            }
        }
    };
    // `Trace::run` flushed what it wrote; a late error still counts.
    let flushed = out.flush();
    match result {
        Ok(summary) => {
            if let Err(e) = flushed {
                eprintln!("tdx-sim: cannot write the replay output: {e}");
                return ExitCode::from(2);
            }
            if !quiet {
                eprintln!("tdx-sim: {}: {summary}", path.display());
            }
            if summary.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("tdx-sim: {}: {e}", path.display());
            ExitCode::from(2)
        }
    }
}
