//! The `splai` command line: `serve`, `dev`, `migrate`, `openapi` and `bench`, and client commands for a
//! running server.

mod bench;
mod bulk;
mod client;

use clap::{Parser, Subcommand};

use crate::config::Config;

/// SPLAI: an execution fabric for AI jobs.
#[derive(Debug, Parser)]
#[command(name = "splai", version, about)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Where client commands send their requests.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// Gateway URL.
    #[arg(
        long,
        env = "SPLAI_SERVER_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub server: String,
}

/// Every `splai` command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway with the embedded default backends (or those the SPLAI_* variables pick).
    Serve {
        /// Address to listen on; overrides SPLAI_GATEWAY_PORT.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Run the server and one in-process worker on the embedded default: the quickest way to
    /// run jobs end to end. Uses Ollama or an OpenAI-compatible server when one is configured,
    /// the echo backend otherwise.
    Dev {
        /// Address to listen on; default 127.0.0.1 on SPLAI_GATEWAY_PORT (8080).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Apply pending database migrations and exit.
    Migrate,
    /// Print the OpenAPI document of every route as YAML (what `openapi/splai.yaml` holds).
    Openapi,
    /// Benchmark the embedded default end to end: a `splai serve` process, `splai-worker`
    /// processes on the echo backend, no-op jobs through the bulk API, then single jobs to
    /// idle workers.
    Bench(bench::BenchArgs),
    /// Submit a job and print its id, or a JSON-lines file of jobs through the bulk API.
    Submit(client::SubmitArgs),
    /// Show a job.
    Status {
        /// Job id.
        job_id: String,
        /// Where to send the request.
        #[command(flatten)]
        target: Target,
    },
    /// List a job's tasks.
    Tasks(client::TasksArgs),
    /// Follow a job's event stream until it finishes.
    Watch {
        /// Job id.
        job_id: String,
        /// Where to send the request.
        #[command(flatten)]
        target: Target,
    },
    /// List jobs, newest first.
    Jobs(client::JobsArgs),
    /// Cancel a job.
    Cancel {
        /// Job id.
        job_id: String,
        /// Where to send the request.
        #[command(flatten)]
        target: Target,
    },
    /// Retry a failed or canceled job.
    Retry {
        /// Job id.
        job_id: String,
        /// Where to send the request.
        #[command(flatten)]
        target: Target,
    },
}

/// Runs a parsed command.
///
/// # Errors
/// Anything that stops the command; the message says what.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { listen } => {
            let mut config = Config::from_env()?;
            if let Some(addr) = listen {
                config.listen = addr;
            }
            crate::server::serve(config).await
        }
        Command::Dev { listen } => crate::dev::run(Config::from_env()?, listen).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Openapi => {
            print!("{}", crate::openapi::yaml());
            Ok(())
        }
        Command::Migrate => {
            let config = Config::from_env()?;
            crate::server::build_engine(
                &config,
                std::sync::Arc::new(splai_shared::clock::SystemClock),
                &splai_shared::aws::SharedSdk::default(),
            )
            .await?;
            println!("migrations applied ({} store)", config.backends.store);
            Ok(())
        }
        Command::Submit(args) => client::submit(args).await,
        Command::Status { job_id, target } => {
            client::get(&target, &format!("/v1/jobs/{job_id}")).await
        }
        Command::Tasks(args) => client::tasks(args).await,
        Command::Watch { job_id, target } => client::watch(&target, &job_id).await,
        Command::Jobs(args) => client::jobs(args).await,
        Command::Cancel { job_id, target } => {
            client::send(
                &target,
                reqwest::Method::DELETE,
                &format!("/v1/jobs/{job_id}"),
            )
            .await
        }
        Command::Retry { job_id, target } => {
            client::send(
                &target,
                reqwest::Method::POST,
                &format!("/v1/jobs/{job_id}/retry"),
            )
            .await
        }
    }
}
