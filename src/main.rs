use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = kubewire::cli::Cli::parse();
    match kubewire::cli::dispatch(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kubewire: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
