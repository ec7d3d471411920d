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
        start_git_without_ca_bundle();
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

/// Starts git2 and libgit2 with no trusted certificate authority, then
/// puts the environment back as it was. Loading the system's CA bundle
/// (which libgit2 does when it starts, whether or not any HTTPS remote is
/// ever contacted) was a quarter of the CPU of a one-workspace pull
/// request's plan (docs/benchmarks.md). This process never fetches from a
/// Git remote (it only checks that the remote's port answers): once the
/// fetch helper is set, every fetch runs in a child process (`tenantsync
/// __git-fetch`), which inherits the environment as it was and loads the
/// certificates then. Should a fetch run here after all, it fails to trust
/// any server: closed, not open. The Kubernetes client (rustls) reads the
/// variables when it connects, after they are put back.
#[allow(unsafe_code)]
fn start_git_without_ca_bundle() {
    const VARIABLES: [&str; 2] = ["SSL_CERT_FILE", "SSL_CERT_DIR"];
    let saved = VARIABLES.map(|name| (name, std::env::var_os(name)));
    for name in VARIABLES {
        // SAFETY: called from `main` before anything has started a thread
        // (clap, tokio and the fetch helpers all come later), so nothing
        // reads the environment while it is written.
        unsafe { std::env::set_var(name, "/dev/null") };
    }
    git::start();
    for (name, value) in saved {
        // SAFETY: as above; git2's and libgit2's start ran on this thread
        // and started none.
        match value {
            Some(value) => unsafe { std::env::set_var(name, value) },
            None => unsafe { std::env::remove_var(name) },
        }
    }
}
