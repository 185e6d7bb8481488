use clap::Parser;

/// `kubewire-lab`: the lab as its own binary. `kubewire lab …` runs it with the same
/// arguments, so either name works.
#[derive(Debug, Parser)]
#[command(
    name = "kubewire lab",
    version,
    about = "A real multi-node cluster network on this machine"
)]
struct Cli {
    #[command(subcommand)]
    command: kubewire_lab::LabCommand,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| {
            let result = runtime.block_on(kubewire_lab::dispatch(cli.command));
            // A blocking task stuck in the kernel must not keep the process alive.
            runtime.shutdown_timeout(std::time::Duration::from_secs(5));
            result
        });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kubewire: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
