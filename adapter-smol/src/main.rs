//! `brokk-smol`: the MQTT broker server, on smol.

use std::process::ExitCode;

use adapter_common::server::RunningServer;

/// Small over-aligned blocks (the runtime's task cells and socket registrations)
/// from pools, the rest from the system allocator: see `adapter_common::alloc`.
#[global_allocator]
static GLOBAL: adapter_common::alloc::PooledAligned = adapter_common::alloc::PooledAligned::new();

fn main() -> ExitCode {
    adapter_common::server::main(|config| {
        let server = adapter_smol::Server::start(config)?;
        // This process has one thread blocking on async-io: the server's.
        adapter_smol::yield_async_io_thread();
        Ok(Box::new(server) as Box<dyn RunningServer>)
    })
}
