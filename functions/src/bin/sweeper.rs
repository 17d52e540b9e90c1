//! The `sweeper` Lambda function, run on a schedule (see `splai_functions::lambda`).

use splai_functions::lambda::{self, Function};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    lambda::main("splai-sweeper", Function::Sweeper).await
}
