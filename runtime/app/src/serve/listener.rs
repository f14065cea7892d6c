//! The TCP listener: at most `max` connections at once (one more waits in the kernel's accept
//! backlog until one closes), so a flood of idle connections cannot exhaust memory or file
//! descriptors; and `TCP_NODELAY`, so each token leaves as soon as it is written. [`serve`]
//! runs HTTP/1 on each connection with a deadline for every request's headers (and for the
//! next request on a kept-alive connection), so that connections that send nothing, or send a
//! byte at a time, are closed and cannot hold every slot.

use axum::serve::Listener;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// Serves `app` on the connections of `listener` until `stop` turns true, then lets each
/// connection finish the response it is writing and returns once all are closed. A client has
/// `header_timeout` to send a request's headers (on a kept-alive connection, from the end of
/// the previous response), else its connection is closed.
pub async fn serve(
    mut listener: Limited,
    app: Router,
    header_timeout: Duration,
    stop: watch::Receiver<bool>,
) {
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        if rx.wait_for(|v| *v).await.is_err() {
            // The sender is gone without a stop: never.
            std::future::pending::<()>().await;
        }
    };
    // Every connection's task holds a receiver; the sender sees them all dropped at the end.
    let (open_tx, open_rx) = watch::channel(());
    loop {
        let (io, _) = tokio::select! {
            c = listener.accept() => c,
            _ = stopped(stop.clone()) => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let stop = stop.clone();
        let open = open_rx.clone();
        tokio::spawn(async move {
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let conn = builder.serve_connection(TokioIo::new(io), service);
            tokio::pin!(conn);
            // A connection that fails (a reset, a header timeout) just closes.
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stopped(stop) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(open);
        });
    }
    // Stop listening at once: a client connecting now is refused rather than left waiting.
    drop(listener);
    drop(open_rx);
    open_tx.closed().await;
}

pub struct Limited {
    inner: TcpListener,
    permits: Arc<Semaphore>,
}

impl Limited {
    pub fn new(inner: TcpListener, max: usize) -> Limited {
        Limited {
            inner,
            permits: Arc::new(Semaphore::new(max.max(1))),
        }
    }
}

/// A connection that gives its slot back when it closes.
pub struct Conn {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl Listener for Limited {
    type Io = Conn;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Conn, Self::Addr) {
        let permit = match self.permits.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => unreachable!("the semaphore is never closed"),
        };
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    return (
                        Conn {
                            stream,
                            _permit: permit,
                        },
                        addr,
                    );
                }
                // Out of descriptors or a connection reset before it was accepted: wait a
                // little and go on (what axum's own listener does).
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
