//! `brokk`: the MQTT broker server, on tokio.

use std::process::ExitCode;

use adapter_common::server::RunningServer;

/// Small over-aligned blocks (the runtime's task cells and socket registrations)
/// from pools, the rest from the system allocator: see `adapter_common::alloc`.
#[global_allocator]
static GLOBAL: adapter_common::alloc::PooledAligned = adapter_common::alloc::PooledAligned::new();

fn main() -> ExitCode {
    adapter_common::server::main(|config| {
        adapter_tokio::Server::start(config).map(|s| Box::new(s) as Box<dyn RunningServer>)
    })
}
