//! pier-controller: wiring only. Parsing lives in `args`, the work in the
//! library crates.

mod args;
mod explain;
mod serve;

use anyhow::{Context, Result};
use args::{Args, Command, Output};
use clap::Parser;
use pier_translate::translate;

fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(args) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    match args.command {
        Command::Translate { source, output } => {
            let state = pier_manifests::load_dir(&source.manifests)
                .map_err(anyhow::Error::new)
                .context("cannot load manifests")?;
            let out = translate(&state, &source.options());
            let doc = out.to_document();
            match output {
                Output::Yaml => print!("{}", serde_yaml_ng::to_string(&doc)?),
                Output::Json => println!("{}", serde_json::to_string_pretty(&doc)?),
            }
            Ok(())
        }
        Command::Explain { source, request } => {
            let state = pier_manifests::load_dir(&source.manifests)
                .map_err(anyhow::Error::new)
                .context("cannot load manifests")?;
            let out = translate(&state, &source.options());
            let text = explain::explain(&out, &request)?;
            print!("{text}");
            Ok(())
        }
        Command::Watch { source } => watch(source),
        Command::Serve { source, listen } => {
            serve::serve(&source.manifests, listen, source.options())
        }
    }
}

/// Standalone mode: translate on every change of the folder and log what moved.
fn watch(source: args::Source) -> Result<()> {
    let options = source.options();
    let mut current = pier_snapshot::Snapshot::empty();
    let mut apply = move |loaded: Result<
        pier_translate::ClusterState,
        pier_manifests::ManifestErrors,
    >| match loaded {
        Ok(state) => {
            let out = translate(&state, &options);
            let statuses = out.statuses.len();
            let warnings = out.warnings.len();
            let diff = current.advance(out.snapshot);
            tracing::info!(
                routes_version = current.routes.version,
                backends_version = current.backends.version,
                services_version = current.services.version,
                listeners_changed = diff.listeners.added.len()
                    + diff.listeners.removed.len()
                    + diff.listeners.changed.len(),
                backends_changed = diff.backends.added.len()
                    + diff.backends.removed.len()
                    + diff.backends.changed.len(),
                statuses,
                warnings,
                "translated"
            );
        }
        Err(errors) => {
            for e in &errors.0 {
                tracing::error!(file = %e.file.display(), line = e.line, message = %e.message, "manifest rejected; keeping the last good snapshot");
            }
        }
    };
    apply(pier_manifests::load_dir(&source.manifests));
    let (tx, rx) = std::sync::mpsc::channel();
    let _watcher = pier_manifests::watch(&source.manifests, move |r| {
        let _ = tx.send(r);
    })
    .context("cannot watch the manifest folder")?;
    for loaded in rx {
        apply(loaded);
    }
    Ok(())
}
