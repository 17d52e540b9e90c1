//! The `splai` binary: wires logging and hands off to the CLI.

use clap::Parser;
use splai_telemetry::TelemetryConfig;

// The gateway and worker allocate many small, short-lived objects (JSON values, records);
// mimalloc serves them markedly faster than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    splai_shared::process::disable_transparent_huge_pages();
    // Dropped at the end of main: spans still buffered are exported then.
    let _telemetry =
        match TelemetryConfig::from_env().and_then(|c| splai_telemetry::init("splai", &c)) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e:#}");
                return std::process::ExitCode::FAILURE;
            }
        };
    match splai_functions::cli::run(splai_functions::cli::Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
