//! Embedding brokk in your own smol program: the broker runs as tasks on your
//! executor, next to your own tasks. Here one of them is a tiny MQTT client that
//! connects, subscribes, publishes to itself and stops the broker when the message
//! comes back.
//!
//! Run with `cargo run -p adapter-smol --example embed`.

use std::rc::Rc;

use adapter_common::config::{Config, Listener, ListenerKind, Origin};
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::LocalExecutor;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ex = Rc::new(LocalExecutor::new());
    let config = Config {
        listeners: vec![Listener::new(
            ListenerKind::Mqtt,
            "127.0.0.1:0".parse()?,
            Origin::Default,
        )],
        ..Config::default()
    };
    let (stop_tx, stop_rx) = smol::channel::bounded(1);
    let (addrs, broker) = adapter_smol::serve_on(ex.clone(), &config, stop_rx)?;
    let addr = addrs[0].1;
    let broker = ex.spawn(broker);

    smol::block_on(ex.run(async move {
        let mut s = smol::net::TcpStream::connect(addr).await?;
        // CONNECT (3.1.1, client id "embed"), SUBSCRIBE "demo" QoS 0, PUBLISH "demo".
        s.write_all(b"\x10\x11\x00\x04MQTT\x04\x02\x00\x3c\x00\x05embed")
            .await?;
        s.write_all(b"\x82\x09\x00\x01\x00\x04demo\x00").await?;
        s.write_all(b"\x30\x0b\x00\x04demohello").await?;
        // CONNACK (4 bytes) + SUBACK (5 bytes) + PUBLISH (13 bytes).
        let mut got = [0u8; 22];
        s.read_exact(&mut got).await?;
        assert_eq!(&got[..4], b"\x20\x02\x00\x00");
        assert_eq!(&got[9..], b"\x30\x0b\x00\x04demohello");
        println!("the embedded broker routed our message back");
        stop_tx.send(()).await?;
        broker.await;
        Ok(())
    }))
}
