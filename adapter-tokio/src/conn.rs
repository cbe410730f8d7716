//! tokio's socket types as a [`Transport`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use adapter_common::connection::Transport;
use adapter_common::park::Parkable;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};

/// Any tokio stream (TCP, TLS over TCP) as a [`Transport`].
pub(crate) struct TokioIo<S>(pub(crate) S);

impl<S: AsyncRead + AsyncWrite + Unpin> Transport for TokioIo<S> {
    fn poll_read_buf(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        tokio_util::io::poll_read_buf(Pin::new(&mut self.0), cx, buf)
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, data)
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl Parkable for TokioIo<tokio::net::TcpStream> {
    fn into_fd(self) -> io::Result<std::os::fd::OwnedFd> {
        Ok(self.0.into_std()?.into())
    }

    fn from_fd(fd: std::os::fd::OwnedFd) -> io::Result<Self> {
        tokio::net::TcpStream::from_std(std::net::TcpStream::from(fd)).map(TokioIo)
    }
}
