//! `brokk-smol`: the MQTT broker server, on smol.

use std::process::ExitCode;

use adapter_common::server::RunningServer;

fn main() -> ExitCode {
    adapter_common::server::main(|config| {
        let server = adapter_smol::Server::start(config)?;
        // This process has one thread blocking on async-io: the server's.
        adapter_smol::yield_async_io_thread();
        Ok(Box::new(server) as Box<dyn RunningServer>)
    })
}
