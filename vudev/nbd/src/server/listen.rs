//! Accepting connections on Unix and TCP sockets, a thread per connection up to the
//! limit, and shutting down: waking the accept loops and closing every connection.

use super::transport::Transport;
use super::{io_message, Closer, Server};
use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

impl Server {
    /// Connections being served now.
    pub fn active_connections(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Stops accepting, and closes every connection (requests in progress finish, but
    /// their replies are not sent, so nothing unfinished is acknowledged). Call
    /// [`flush_all`](Self::flush_all) afterwards to make acknowledged writes durable.
    pub fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        for close in self
            .closers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            close();
        }
        for wake in self.wakers.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            wake();
        }
    }

    /// True once [`shutdown`](Self::shutdown) was called.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Accepts connections on a Unix socket until [`shutdown`](Self::shutdown).
    pub fn serve_unix(self: &Arc<Self>, listener: UnixListener) -> io::Result<()> {
        if let Some(path) = listener.local_addr()?.as_pathname().map(PathBuf::from) {
            self.wakers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Box::new(move || drop(UnixStream::connect(&path))));
        }
        for conn in listener.incoming() {
            if self.is_shutting_down() {
                break;
            }
            match conn {
                Ok(s) => {
                    let id = self.next_id.fetch_add(1, Ordering::SeqCst);
                    let closer = s.try_clone().ok();
                    self.spawn(
                        s,
                        id,
                        format!("unix#{id}"),
                        closer.map(|c| -> Closer {
                            Box::new(move || drop(c.shutdown(std::net::Shutdown::Both)))
                        }),
                    );
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        Ok(())
    }

    /// Accepts connections on a TCP socket until [`shutdown`](Self::shutdown).
    pub fn serve_tcp(self: &Arc<Self>, listener: TcpListener) -> io::Result<()> {
        let addr = listener.local_addr()?;
        self.wakers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(move || {
                drop(TcpStream::connect_timeout(&addr, Duration::from_secs(1)))
            }));
        for conn in listener.incoming() {
            if self.is_shutting_down() {
                break;
            }
            match conn {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    let id = self.next_id.fetch_add(1, Ordering::SeqCst);
                    let peer = s
                        .peer_addr()
                        .map(|a| a.to_string())
                        .unwrap_or_else(|_| format!("tcp#{id}"));
                    let closer = s.try_clone().ok();
                    self.spawn(
                        s,
                        id,
                        peer,
                        closer.map(|c| -> Closer {
                            Box::new(move || drop(c.shutdown(std::net::Shutdown::Both)))
                        }),
                    );
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        Ok(())
    }

    fn spawn<S: Transport + Send + 'static>(
        self: &Arc<Self>,
        stream: S,
        id: u64,
        peer: String,
        closer: Option<Closer>,
    ) {
        if self.active.load(Ordering::SeqCst) >= self.options.max_connections {
            self.log(format_args!(
                "client {peer} refused: {} connections already",
                self.options.max_connections
            ));
            return;
        }
        let _ = Transport::set_write_timeout(&stream, Some(self.options.write_timeout));
        self.active.fetch_add(1, Ordering::SeqCst);
        if let Some(c) = closer {
            self.closers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, c);
        }
        let server = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("nbd-{id}"))
            .spawn(move || {
                server.log(format_args!("client {peer} connected"));
                let result = server.handle(stream, &peer);
                match result {
                    Ok(()) => server.log(format_args!("client {peer} disconnected")),
                    Err(e) => server.log(format_args!(
                        "client {peer} disconnected: {}",
                        io_message(&e)
                    )),
                }
                server
                    .closers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                server.active.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            self.active.fetch_sub(1, Ordering::SeqCst);
            self.closers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        }
    }
}
