//! Command-line interface: argument parsing and output formats only.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::diag::Diagnostic;
use crate::render;
use crate::source::folder;
use crate::validate;

/// Declarative GitOps for healthcare-API tenant workspaces on Kubernetes.
///
/// tenantsync reads a repository of workspace declarations (environments/<layer>/),
/// checks them against its JSON Schemas and the platform's rules, merges each
/// environment over its base chain and renders the Kubernetes objects it should have.
#[derive(Debug, Parser)]
#[command(name = "tenantsync", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check declarations: schemas, overlays and platform rules.
    ///
    /// Every problem is printed as FILE:LINE:COL: error: MESSAGE (the file relative
    /// to the repository). Exit status: 0 when valid, 1 when not.
    Validate {
        /// Repository root (the folder holding environments/).
        #[arg(long, default_value = ".", value_name = "DIR")]
        repo: PathBuf,
        /// Environment to check (repeatable); all non-abstract ones by default.
        #[arg(long = "env", value_name = "NAME")]
        envs: Vec<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ValidateOutput::Text)]
        output: ValidateOutput,
    },
    /// Print the Kubernetes objects of one environment.
    ///
    /// The output is deterministic: the same declarations give byte-identical output.
    /// Invalid declarations print their errors and exit 1, rendering nothing.
    Render {
        /// Repository root (the folder holding environments/).
        #[arg(long, default_value = ".", value_name = "DIR")]
        repo: PathBuf,
        /// Environment to render.
        #[arg(long = "env", value_name = "NAME")]
        env: String,
        /// Output format: a multi-document YAML stream, or a JSON list.
        #[arg(long, value_enum, default_value_t = RenderOutput::Yaml)]
        output: RenderOutput,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ValidateOutput {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RenderOutput {
    Yaml,
    Json,
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { repo, envs, output } => validate_cmd(&repo, &envs, output),
        Command::Render { repo, env, output } => render_cmd(&repo, &env, output),
    }
}

fn load(repo: &std::path::Path) -> anyhow::Result<validate::Repository> {
    let tree = folder::read(repo)?;
    Ok(validate::load(&tree))
}

fn print_diagnostics(diags: &[Diagnostic]) {
    let stderr = std::io::stderr();
    let mut err = stderr.lock();
    for d in diags {
        let _ = writeln!(err, "{d}");
    }
}

fn validate_cmd(
    repo: &std::path::Path,
    envs: &[String],
    output: ValidateOutput,
) -> anyhow::Result<ExitCode> {
    let repository = load(repo)?;
    let report = repository.validate(envs);
    match output {
        ValidateOutput::Json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&report.diagnostics)
                    .context("encoding diagnostics")?
            );
        }
        ValidateOutput::Text => {
            print_diagnostics(&report.diagnostics);
            if report.diagnostics.is_empty() {
                let names: Vec<_> = report
                    .environments
                    .iter()
                    .map(|e| e.name.as_str())
                    .collect();
                let workspaces: usize =
                    report.environments.iter().map(|e| e.workspaces.len()).sum();
                println!(
                    "ok: {} environment(s) valid ({}), {workspaces} workspace(s)",
                    names.len(),
                    names.join(", ")
                );
            } else {
                eprintln!("{} error(s)", report.diagnostics.len());
            }
        }
    }
    Ok(if report.diagnostics.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn render_cmd(repo: &std::path::Path, env: &str, output: RenderOutput) -> anyhow::Result<ExitCode> {
    let repository = load(repo)?;
    let environment = match repository.resolve(env) {
        Ok(e) => e,
        Err(diags) => {
            print_diagnostics(&diags);
            eprintln!("{} error(s); nothing rendered", diags.len());
            return Ok(ExitCode::from(1));
        }
    };
    let objects = render::render(&environment)?;
    let text = match output {
        RenderOutput::Yaml => render::to_yaml(&objects).context("encoding YAML")?,
        RenderOutput::Json => {
            let bodies: Vec<_> = objects.iter().map(|o| &o.body).collect();
            serde_json::to_string_pretty(&bodies).context("encoding JSON")? + "\n"
        }
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    // A closed pipe (`| head`) is not an error worth a message.
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        return Err(e).context("writing output");
    }
    Ok(ExitCode::SUCCESS)
}
