//! `brokk-smol`: the MQTT broker server, on smol.

use std::process::ExitCode;

use adapter_common::server::RunningServer;

fn main() -> ExitCode {
    adapter_common::server::main(|config| {
        adapter_smol::Server::start(config).map(|s| Box::new(s) as Box<dyn RunningServer>)
    })
}
