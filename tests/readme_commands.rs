//! README's command summary against the CLI definition: every flag a
//! subcommand accepts (what its `--help` lists) is in README's `## Commands`
//! block, on that subcommand's lines, so the two cannot drift apart again
//! (`--rev`, `--no-ingress-address-wait`, `sync --detailed-exitcode` and
//! `--no-color` were once missing).

use clap::CommandFactory;
use std::collections::BTreeMap;

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md")
}

/// The first fenced block after `## Commands`.
fn commands_block(readme: &str) -> Vec<&str> {
    readme
        .lines()
        .skip_while(|l| l.trim() != "## Commands")
        .skip_while(|l| !l.starts_with("```"))
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .collect()
}

/// Each subcommand's summary: its `tenantsync NAME` line and the indented
/// lines after it, with `(same options as X)` and `[GUARDRAILS]` expanded.
fn summaries(block: &[&str]) -> BTreeMap<String, String> {
    let mut raw: BTreeMap<String, String> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in block {
        if let Some(rest) = line.strip_prefix("tenantsync ") {
            let name = rest.split_whitespace().next().unwrap_or_default();
            current = Some(name.to_string());
            raw.entry(name.to_string()).or_default().push_str(rest);
        } else if let Some(rest) = line.strip_prefix("GUARDRAILS") {
            current = Some("GUARDRAILS".to_string());
            raw.entry("GUARDRAILS".to_string())
                .or_default()
                .push_str(rest);
        } else if line.starts_with(' ') {
            if let Some(name) = &current {
                raw.entry(name.clone()).or_default().push_str(line);
            }
        } else {
            current = None;
        }
    }
    let guardrails = raw.get("GUARDRAILS").cloned().unwrap_or_default();
    let mut expanded = BTreeMap::new();
    for (name, text) in &raw {
        let mut text = text.clone();
        if let Some(start) = text.find("(same options as ") {
            let other = text[start + "(same options as ".len()..]
                .split(')')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string();
            text.push(' ');
            text.push_str(raw.get(&other).map(String::as_str).unwrap_or_default());
        }
        text = text.replace("[GUARDRAILS]", &guardrails);
        expanded.insert(name.clone(), text);
    }
    expanded
}

/// `--flag` as a whole word in `text` (not the start of `--flag-more`).
fn mentions(text: &str, flag: &str) -> bool {
    text.match_indices(flag).any(|(i, _)| {
        !text[i + flag.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
    })
}

#[test]
fn readme_lists_every_flag_of_every_subcommand() {
    let readme = readme();
    let block = commands_block(&readme);
    assert!(!block.is_empty(), "README.md has no ## Commands block");
    let summaries = summaries(&block);
    let cli = tenantsync::cli::Cli::command();
    let mut missing = Vec::new();
    for sub in cli.get_subcommands() {
        let name = sub.get_name();
        if name == "help" {
            continue;
        }
        let Some(summary) = summaries.get(name) else {
            missing.push(format!("{name}: no `tenantsync {name}` line"));
            continue;
        };
        let flags: Vec<String> = sub
            .get_arguments()
            .filter(|a| !a.is_hide_set())
            .filter_map(|a| a.get_long())
            .filter(|l| !matches!(*l, "help" | "version"))
            .map(|l| format!("--{l}"))
            .filter(|flag| !mentions(summary, flag))
            .collect();
        if !flags.is_empty() {
            missing.push(format!("{name}: {}", flags.join(", ")));
        }
    }
    assert!(
        missing.is_empty(),
        "README.md's ## Commands block lacks flags that --help lists (add them on the \
         subcommand's lines):\n  {}",
        missing.join("\n  ")
    );
}

/// The checker itself: a flag missing from README is reported with its
/// subcommand, and a longer flag does not count as a shorter one.
#[test]
fn the_readme_check_finds_a_missing_flag() {
    let block = [
        "tenantsync plan --env NAME [--no-color-please] [GUARDRAILS]",
        "                [--rev REV]",
        "tenantsync drift   (same options as plan)",
        "",
        "GUARDRAILS: [--allow-kind KIND]",
    ];
    let s = summaries(&block);
    assert!(mentions(&s["plan"], "--rev"));
    assert!(mentions(&s["drift"], "--rev"));
    assert!(mentions(&s["drift"], "--allow-kind"));
    assert!(!mentions(&s["plan"], "--no-color"));
}
