//! `tenantsync render`: print an environment's objects, a workspace at a
//! time.

use std::io::Write;
use std::process::ExitCode;

use super::args::RenderOutput;
use super::print_diagnostics;
use super::validate::load;
use crate::render;

pub(super) fn render_cmd(
    repo: &std::path::Path,
    env: &str,
    output: RenderOutput,
) -> anyhow::Result<ExitCode> {
    let resolved = load(repo)?.resolve(env);
    let environment = match resolved {
        Ok(e) => e,
        Err(diags) => {
            print_diagnostics(&diags);
            eprintln!("{} error(s); nothing rendered", diags.len());
            return Ok(ExitCode::from(1));
        }
    };
    // Written a workspace at a time: at thousands of workspaces the whole
    // output would be tens of megabytes held at once.
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let written = match output {
        RenderOutput::Yaml => render::render_map_each(
            &environment,
            |batch| {
                let mut text = String::new();
                for o in batch {
                    render::push_yaml(&mut text, o);
                }
                text
            },
            |text| {
                out.write_all(text.as_bytes())?;
                Ok::<_, anyhow::Error>(())
            },
        ),
        RenderOutput::Json => (|| {
            use serde::ser::{SerializeSeq, Serializer};
            let mut json = serde_json::Serializer::pretty(&mut out);
            let mut list = json.serialize_seq(None)?;
            render::render_each(&environment, |batch| {
                for o in &batch {
                    list.serialize_element(&o.value())?;
                }
                Ok::<_, anyhow::Error>(())
            })?;
            list.end()?;
            out.write_all(b"\n")?;
            Ok(())
        })(),
    };
    match written.and_then(|()| out.flush().map_err(Into::into)) {
        Err(e) if !is_broken_pipe(&e) => Err(e.context("writing output")),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// A closed pipe (`| head`): the reader has what it wanted.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .map(std::io::Error::kind)
            .or_else(|| {
                cause
                    .downcast_ref::<serde_json::Error>()
                    .and_then(serde_json::Error::io_error_kind)
            })
            == Some(std::io::ErrorKind::BrokenPipe)
    })
}
