//! A hand-written WebSocket client (RFC 6455) on a bare `TcpStream`: it frames
//! bytes however a test asks (an MQTT packet split across frames, several packets in
//! one, text frames) and shows the frames the broker sends.

use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use mqtt_proto::{decode_packet, FixedHeader, Packet, ProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{within, TIMEOUT};

/// Frame opcodes [RFC 6455 5.2].
pub mod opcode {
    /// A continuation frame.
    pub const CONTINUATION: u8 = 0x0;
    /// A text frame.
    pub const TEXT: u8 = 0x1;
    /// A binary frame.
    pub const BINARY: u8 = 0x2;
    /// A close frame.
    pub const CLOSE: u8 = 0x8;
}

/// The sample key of RFC 6455 1.3 and the accept value it must produce.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A frame the broker sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// FIN bit.
    pub fin: bool,
    /// The opcode.
    pub opcode: u8,
    /// The (unmasked) payload.
    pub payload: Vec<u8>,
}

/// An upgraded WebSocket connection.
pub struct WsClient {
    stream: TcpStream,
    input: BytesMut,
    /// MQTT bytes unwrapped from binary frames, not yet decoded.
    mqtt: BytesMut,
}

/// A masked client frame [RFC 6455 5.2, 5.3].
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut frame = vec![u8::from(fin) << 7 | opcode];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= usize::from(u16::MAX) => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

impl WsClient {
    /// Connects and upgrades with `Sec-WebSocket-Protocol: mqtt`; asserts the 101.
    pub async fn upgrade(addr: SocketAddr, path: &str) -> WsClient {
        let mut stream = within("TCP connect", TcpStream::connect(addr))
            .await
            .expect("TCP connect");
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut input = BytesMut::new();
        let head_end = within("the 101 response", async {
            loop {
                if let Some(i) = input.windows(4).position(|w| w == b"\r\n\r\n") {
                    return i + 4;
                }
                let n = stream.read_buf(&mut input).await.expect("read");
                assert!(n > 0, "closed during the upgrade: {input:?}");
            }
        })
        .await;
        let head = String::from_utf8_lossy(&input.split_to(head_end)).into_owned();
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        assert!(head.contains(ACCEPT), "wrong Sec-WebSocket-Accept: {head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("sec-websocket-protocol: mqtt"),
            "the mqtt subprotocol is not confirmed [MQTT-6.0.0-4]: {head}"
        );
        WsClient {
            stream,
            input,
            mqtt: BytesMut::new(),
        }
    }

    /// Sends raw bytes (frames built with [`client_frame`]).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        within("write", self.stream.write_all(bytes))
            .await
            .expect("write");
    }

    /// The next frame from the broker; `None` when the connection closes.
    pub async fn recv_frame(&mut self) -> Option<Frame> {
        within("a WebSocket frame", async {
            loop {
                if let Some(frame) = self.take_frame() {
                    return Some(frame);
                }
                match self.stream.read_buf(&mut self.input).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
    }

    fn take_frame(&mut self) -> Option<Frame> {
        let b = &self.input[..];
        if b.len() < 2 {
            return None;
        }
        assert_eq!(b[1] & 0x80, 0, "the server masked a frame [RFC 6455 5.1]");
        let (len, header) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() >= 10 => {
                let n = u64::from_be_bytes([b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9]]);
                // A length this client cannot even address is the server's error.
                let n = usize::try_from(n)
                    .unwrap_or_else(|_| panic!("the server announced a frame of {n} bytes"));
                (n, 10)
            }
            126 | 127 => return None,
            n => (usize::from(n), 2),
        };
        if b.len() < header + len {
            return None;
        }
        let frame = Frame {
            fin: b[0] & 0x80 != 0,
            opcode: b[0] & 0x0f,
            payload: b[header..header + len].to_vec(),
        };
        self.input.advance(header + len);
        Some(frame)
    }

    /// The MQTT bytes of the next binary message (joining continuation frames).
    pub async fn recv_binary(&mut self) -> Vec<u8> {
        let mut message = Vec::new();
        loop {
            let frame = self
                .recv_frame()
                .await
                .unwrap_or_else(|| panic!("closed; expected a binary frame within {TIMEOUT:?}"));
            match frame.opcode {
                opcode::BINARY | opcode::CONTINUATION => message.extend(frame.payload),
                other => panic!("expected a binary frame, got opcode {other:#x}: {frame:?}"),
            }
            if frame.fin {
                return message;
            }
        }
    }

    /// The next MQTT packet, however the broker spread packets over frames.
    pub async fn recv_packet(&mut self, version: ProtocolVersion) -> Packet {
        loop {
            if let Some(h) = FixedHeader::parse(&self.mqtt).expect("a valid fixed header") {
                if self.mqtt.len() >= h.packet_len() {
                    let bytes = self.mqtt.split_to(h.packet_len()).freeze();
                    return decode_packet(Some(version), bytes.clone())
                        .unwrap_or_else(|e| panic!("undecodable packet ({e}): {bytes:02x?}"));
                }
            }
            let message = self.recv_binary().await;
            self.mqtt.extend_from_slice(&message);
        }
    }
}
