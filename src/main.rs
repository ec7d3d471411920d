use std::process::ExitCode;

use clap::Parser;
use tenantsync::source::git;

/// mimalloc, not glibc's malloc: with glibc the daemon's memory at 5,000
/// workspaces grew to twice its heap (freed memory kept in fragments), and
/// every command ran slower (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // `tenantsync __git-fetch`: one fetch, in a child process of tenantsync
    // itself (hidden; see source::git::use_fetch_helper).
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new(git::FETCH_HELPER_ARG)) {
        return git::fetch_helper_main();
    }
    if let Ok(exe) = std::env::current_exe() {
        git::use_fetch_helper(exe);
    }
    // The key of the digests shown for Secret values (plan::conceal):
    // random per process unless the operator sets one, so that digests
    // compare across runs without being reversible by anyone without it.
    if let Some(key) = std::env::var_os(tenantsync::plan::conceal::KEY_VARIABLE)
        && !key.is_empty()
    {
        tenantsync::plan::conceal::install_key(key.as_encoded_bytes());
    }
    let cli = tenantsync::cli::Cli::parse();
    match tenantsync::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", git::redact_in_text(&format!("{e:#}")));
            ExitCode::from(1)
        }
    }
}
