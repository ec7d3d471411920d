//! `tenantsync validate`: check declarations (schemas, overlays, platform
//! rules, the operator's guardrails) and print every problem.

use std::process::ExitCode;

use anyhow::Context;

use super::args::ValidateOutput;
use super::print_diagnostics;
use crate::declare::validate;
use crate::pipeline;
use crate::render;
use crate::source::folder;
use crate::sync::tenancy::Operator;

pub(super) fn load(repo: &std::path::Path) -> anyhow::Result<validate::Repository> {
    let tree = folder::read(repo)?;
    Ok(validate::load_on_all_cores(&tree))
}

pub(super) fn validate_cmd(
    repo: &std::path::Path,
    envs: &[String],
    output: ValidateOutput,
    operator: &Operator,
) -> anyhow::Result<ExitCode> {
    let repository = load(repo)?;
    let mut report = repository.validate(envs);
    // The operator's guardrails, on what each valid environment renders.
    let mut namespaces: Vec<(String, Vec<crate::object::Object>)> = Vec::new();
    for environment in &report.environments {
        let objects = render::render(environment)?;
        if let Err(diags) = pipeline::admit(operator, environment, &objects) {
            report.diagnostics.extend(diags);
        }
        let rendered = objects.into_iter().filter(|o| &*o.kind == "Namespace");
        namespaces.push((environment.name.clone(), rendered.collect()));
    }
    // Across the environments validated together (all of them without
    // --env): two rendering one namespace.
    let together: Vec<(&str, &[crate::object::Object])> = namespaces
        .iter()
        .map(|(name, objects)| (name.as_str(), objects.as_slice()))
        .collect();
    for (environment, violation) in operator.guardrails.shared_namespaces(&together) {
        report.diagnostics.push(violation.diagnostic(&environment));
    }
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
