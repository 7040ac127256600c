//! pier-controller: wiring only. Parsing lives in `args`, the work in the
//! library (`pier_controller`) and the crates below it.

use anyhow::{Context, Result};
use clap::Parser;
use pier_controller::args::{self, Args, Command, Output};
use pier_controller::{cluster, explain, serve};
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
        Command::Run(cluster) => cluster::run(*cluster),
        Command::Serve { source, stream } => {
            serve::serve_manifests(&source.manifests, source.options(), stream.options())
        }
    }
}

/// Standalone mode: translate on every change of the folder and log what moved.
fn watch(source: args::Source) -> Result<()> {
    let _watcher = pier_manifests::follow_dir(
        &source.manifests,
        source.options(),
        pier_manifests::SETTLE,
        move |u| {
            let d = u.diff;
            tracing::info!(
                routes_version = u.snapshot.routes.version,
                backends_version = u.snapshot.backends.version,
                services_version = u.snapshot.services.version,
                listeners_changed =
                    d.listeners.added.len() + d.listeners.removed.len() + d.listeners.changed.len(),
                backends_changed =
                    d.backends.added.len() + d.backends.removed.len() + d.backends.changed.len(),
                statuses = u.translation.statuses.len(),
                warnings = u.translation.warnings.len(),
                "translated"
            );
        },
    )?;
    // Runs until killed; the watcher thread does the work.
    loop {
        std::thread::park();
    }
}
