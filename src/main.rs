use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = tenantsync::cli::Cli::parse();
    match tenantsync::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
