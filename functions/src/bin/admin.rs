//! The `admin` Lambda function (see `splai_functions::lambda`).

use splai_functions::lambda::{self, Function};
use splai_functions::server::Routes;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    lambda::main("splai-admin", Function::Http(Routes::Admin)).await
}
